"""Runner-side Prometheus metrics, prefixed ``embedding_`` and labelled by ``model`` (the served
name) and ``variant`` (one of its configured variants: label values stay bounded).

Created at service start (``runner_metrics()``), after BentoML has set
``PROMETHEUS_MULTIPROC_DIR``. Per engine call: inputs, padded tokens (rows x longest row) and
engine time; per input: queue wait, from the gateway's send to the start of its batch (so it
includes the gateway->runner hop; across machines it assumes synchronised clocks).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

LABELS = ("model", "variant")
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
TOKEN_BUCKETS = (16, 64, 256, 1024, 4096, 16384, 65536, 262144)


@dataclass(frozen=True)
class KeptLabels:
    """A labelled Prometheus metric whose children are kept: ``labels(*values)`` is one dict lookup
    after the first call (prometheus_client's builds a key, checks it and takes a lock on every call:
    half of what a request's metrics cost, ``bench/front_layers.py``). For label values bounded by
    the configuration (models, variants, status codes), as every label here is."""

    metric: Any
    children: dict = field(default_factory=dict)

    def labels(self, *values: str) -> Any:
        child = self.children.get(values)
        if child is None:  # two threads may both make it: prometheus_client hands both the same child
            child = self.children[values] = self.metric.labels(*values)
        return child


@dataclass(frozen=True)
class RunnerMetrics:
    batch_size: Any  # Histogram embedding_batch_size{model,variant}
    batch_tokens: Any  # Histogram embedding_batch_tokens{model,variant}
    queue_wait_seconds: Any  # Histogram embedding_queue_wait_seconds{model,variant}
    engine_seconds: Any  # Histogram embedding_engine_duration_seconds{model,variant}
    # Gauge embedding_model_info{runner,model,variant,store_tag,content,provider} = 1 per served variant loaded
    model_info: Any


@dataclass(frozen=True)
class GpuMetrics:
    """Per runner and visible GPU (``runners/gpu_metrics.py``); no GPU, no series at all."""

    memory_used_bytes: Any  # Gauge embedding_gpu_memory_used_bytes{runner,gpu}: the device's, all processes
    memory_total_bytes: Any  # Gauge embedding_gpu_memory_total_bytes{runner,gpu}
    utilization_ratio: Any  # Gauge embedding_gpu_utilization_ratio{runner,gpu}: busy fraction of the last sample period


@functools.cache
def gpu_metrics() -> GpuMetrics:
    import prometheus_client as prom

    labels = ["runner", "gpu"]
    return GpuMetrics(
        memory_used_bytes=prom.Gauge(
            "embedding_gpu_memory_used_bytes", "GPU memory in use (NVML)", labels, multiprocess_mode="livemax"
        ),
        memory_total_bytes=prom.Gauge(
            "embedding_gpu_memory_total_bytes", "GPU memory size (NVML)", labels, multiprocess_mode="livemax"
        ),
        utilization_ratio=prom.Gauge(
            "embedding_gpu_utilization_ratio", "Fraction of time a kernel ran (NVML)", labels,
            multiprocess_mode="livemax",
        ),
    )


@functools.cache
def runner_metrics() -> RunnerMetrics:
    import prometheus_client as prom

    return RunnerMetrics(
        batch_size=KeptLabels(prom.Histogram("embedding_batch_size", "Inputs per engine call", LABELS,
                                             buckets=SIZE_BUCKETS)),
        batch_tokens=KeptLabels(prom.Histogram(
            "embedding_batch_tokens", "Padded tokens per engine call", LABELS, buckets=TOKEN_BUCKETS
        )),
        queue_wait_seconds=KeptLabels(prom.Histogram(
            "embedding_queue_wait_seconds", "Gateway send to batch start, per input", LABELS, buckets=LATENCY_BUCKETS
        )),
        engine_seconds=KeptLabels(prom.Histogram(
            "embedding_engine_duration_seconds", "Engine time per engine call", LABELS, buckets=LATENCY_BUCKETS
        )),
        model_info=prom.Gauge(
            "embedding_model_info", "1 per served model and variant a runner has loaded: its store version, "
            "content digest (first 12 hex digits) and execution provider",
            ["runner", "model", "variant", "store_tag", "content", "provider"], multiprocess_mode="livemax",
        ),
    )
