"""The gateway's Prometheus metrics, prefixed ``embedding_`` and labelled by ``model`` (the served
name) and ``variant`` (the variant that answered; label values are configured names only, or
``none`` when a request failed before a variant was chosen).

Created at service start (``gateway_metrics()``), not at import: BentoML sets
``PROMETHEUS_MULTIPROC_DIR`` in each worker before start-up and ``prometheus_client`` must see
it. Runner metrics are in ``runners/metrics.py``; in one ``bentoml serve`` the gateway's
``/metrics`` shows both.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from runners.metrics import LATENCY_BUCKETS, KeptLabels


@dataclass(frozen=True)
class GatewayMetrics:
    requests: Any  # Counter embedding_requests_total{model,variant,status}
    inputs: Any  # Counter embedding_inputs_total{model,variant}
    input_tokens: Any  # Counter embedding_input_tokens_total{model,variant}, after truncation
    request_seconds: Any  # Histogram embedding_request_duration_seconds{model,variant}
    inflight_inputs: Any  # Gauge embedding_inflight_inputs (summed over live workers)
    runner_ready: Any  # Gauge embedding_runner_ready{runner}: 1 when the runner's /readyz answers 200
    image_worker_exits: Any  # Counter embedding_image_worker_exits_total{reason}: crash, timeout, memory
    image_worker_start_seconds: Any  # Histogram embedding_image_worker_start_seconds: start or replacement
    shadow_requests: Any  # Counter embedding_shadow_requests_total{model,variant,shadow,outcome}
    shadow_cosine: Any  # Histogram embedding_shadow_cosine{model,variant,shadow}: per input
    shadow_topk_overlap: Any  # Histogram embedding_shadow_topk_overlap{model,variant,shadow}: per input
    routing_reload_errors: Any  # Counter embedding_routing_reload_errors_total{reason} (gateway/routing.py)
    routing_not_applied: Any  # Gauge embedding_routing_override_not_applied{model}: 1 while not applied here


NO_VARIANT = "none"  # the variant label of a request that failed before a variant was chosen
COSINE_BUCKETS = (0.0, 0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 0.9999, 1.0)
OVERLAP_BUCKETS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


@functools.cache
def gateway_metrics() -> GatewayMetrics:
    import prometheus_client as prom

    return GatewayMetrics(  # the per-request ones keep their labelled children (KeptLabels)
        requests=KeptLabels(prom.Counter("embedding_requests", "Requests to /v1 by model, variant and HTTP status",
                                         ["model", "variant", "status"])),
        inputs=KeptLabels(prom.Counter("embedding_inputs", "Inputs embedded", ["model", "variant"])),
        input_tokens=KeptLabels(prom.Counter("embedding_input_tokens", "Input tokens embedded, after truncation",
                                             ["model", "variant"])),
        request_seconds=KeptLabels(prom.Histogram(
            "embedding_request_duration_seconds", "Gateway request latency", ["model", "variant"],
            buckets=LATENCY_BUCKETS,
        )),
        inflight_inputs=prom.Gauge(
            "embedding_inflight_inputs", "Inputs admitted and not yet answered", multiprocess_mode="livesum"
        ),
        runner_ready=prom.Gauge(
            "embedding_runner_ready", "1 if the runner answered its /readyz probe, else 0", ["runner"],
            multiprocess_mode="livemin",
        ),
        image_worker_exits=prom.Counter(
            "embedding_image_worker_exits", "Image worker processes lost on a part, by reason", ["reason"]
        ),
        image_worker_start_seconds=prom.Histogram(
            "embedding_image_worker_start_seconds", "Time to start an image worker process (and so to replace one)",
            buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
        ),
        shadow_requests=prom.Counter(
            "embedding_shadow_requests", "Shadow requests by outcome: compared, dropped (busy), skipped, failed",
            ["model", "variant", "shadow", "outcome"],
        ),
        shadow_cosine=prom.Histogram(
            "embedding_shadow_cosine", "Cosine of the primary's and the shadow's vector, per input",
            ["model", "variant", "shadow"], buckets=COSINE_BUCKETS,
        ),
        shadow_topk_overlap=prom.Histogram(
            "embedding_shadow_topk_overlap", "Share of an input's top-5 neighbours within its request (16+ inputs) "
            "that primary and shadow agree on", ["model", "variant", "shadow"], buckets=OVERLAP_BUCKETS,
        ),
        routing_reload_errors=prom.Counter(
            "embedding_routing_reload_errors", "Routing file reads that changed nothing here, by reason: unreadable, "
            "invalid (not a routing file), not_applied (a model's override this replica cannot apply), internal",
            ["reason"],
        ),
        routing_not_applied=prom.Gauge(
            "embedding_routing_override_not_applied", "1 while the routing file's override of the model is not "
            "applied by this replica (it keeps its last good routing), else 0", ["model"], multiprocess_mode="livemax",
        ),
    )
