"""The gateway's Prometheus metrics, prefixed ``embedding_`` and labelled by ``model``.

Created at service start (``gateway_metrics()``), not at import: BentoML sets
``PROMETHEUS_MULTIPROC_DIR`` in each worker before start-up and ``prometheus_client`` must see
it. Runner metrics are in ``runners/metrics.py``; in one ``bentoml serve`` the gateway's
``/metrics`` shows both.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from runners.metrics import LATENCY_BUCKETS


@dataclass(frozen=True)
class GatewayMetrics:
    requests: Any  # Counter embedding_requests_total{model,status}
    inputs: Any  # Counter embedding_inputs_total{model}
    input_tokens: Any  # Counter embedding_input_tokens_total{model}, after truncation
    request_seconds: Any  # Histogram embedding_request_duration_seconds{model}
    inflight_inputs: Any  # Gauge embedding_inflight_inputs (summed over live workers)
    runner_ready: Any  # Gauge embedding_runner_ready{runner}: 1 when the runner's /readyz answers 200
    image_worker_exits: Any  # Counter embedding_image_worker_exits_total{reason}: crash, timeout, memory
    image_worker_start_seconds: Any  # Histogram embedding_image_worker_start_seconds: start or replacement


@functools.cache
def gateway_metrics() -> GatewayMetrics:
    import prometheus_client as prom

    return GatewayMetrics(
        requests=prom.Counter("embedding_requests", "Requests to /v1 by model and HTTP status", ["model", "status"]),
        inputs=prom.Counter("embedding_inputs", "Inputs embedded", ["model"]),
        input_tokens=prom.Counter("embedding_input_tokens", "Input tokens embedded, after truncation", ["model"]),
        request_seconds=prom.Histogram(
            "embedding_request_duration_seconds", "Gateway request latency", ["model"], buckets=LATENCY_BUCKETS
        ),
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
    )
