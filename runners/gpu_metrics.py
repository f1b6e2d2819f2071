"""GPU memory and utilisation of the GPUs a runner sees, from NVML (``nvidia-ml-py``).

``start_gpu_sampler(runner)`` starts a daemon thread that sets the ``embedding_gpu_*`` gauges
(``runners/metrics.py``) every ``interval_s`` seconds, labelled ``runner`` and ``gpu`` (the NVML
index). The GPUs are those in ``CUDA_VISIBLE_DEVICES`` (indices or UUIDs, as BentoML's GPU
allocation sets it), else every GPU. Without an NVIDIA driver or GPU the sampler does not start
and nothing is exported: no series, not zeros. Memory is the device's (all processes on it).
"""

from __future__ import annotations

import logging
import os
import threading
import time

from runners.metrics import gpu_metrics

logger = logging.getLogger(__name__)


def visible_devices(nvml) -> list:
    """NVML handles of the GPUs this process may use."""
    wanted = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    if not wanted:
        return [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]
    if wanted == ["-1"] or wanted == ["none"]:
        return []
    return [
        nvml.nvmlDeviceGetHandleByUUID(d) if d.startswith(("GPU-", "MIG-")) else nvml.nvmlDeviceGetHandleByIndex(int(d))
        for d in wanted
    ]


def sample(nvml, runner: str, devices: list) -> None:
    metrics = gpu_metrics()
    for handle in devices:
        gpu = str(nvml.nvmlDeviceGetIndex(handle))
        memory = nvml.nvmlDeviceGetMemoryInfo(handle)
        metrics.memory_used_bytes.labels(runner, gpu).set(memory.used)
        metrics.memory_total_bytes.labels(runner, gpu).set(memory.total)
        metrics.utilization_ratio.labels(runner, gpu).set(nvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100)


def start_gpu_sampler(runner: str, interval_s: float = 5.0) -> threading.Thread | None:
    """Sample now and then every ``interval_s`` s in a daemon thread; None (and nothing
    exported) when NVML or a visible GPU is missing."""
    import pynvml as nvml

    try:
        nvml.nvmlInit()
        devices = visible_devices(nvml)
    except nvml.NVMLError as exc:
        logger.info("%s runner: no GPU metrics (NVML: %s)", runner, exc)
        return None
    if not devices:
        logger.info("%s runner: no visible GPU, no GPU metrics", runner)
        return None
    sample(nvml, runner, devices)

    def loop() -> None:
        while True:
            time.sleep(interval_s)
            try:
                sample(nvml, runner, devices)
            except nvml.NVMLError as exc:  # a lost GPU shows as stale series plus this log line
                logger.warning("%s runner: GPU sample failed: %s", runner, exc)

    thread = threading.Thread(target=loop, name=f"{runner}-gpu-metrics", daemon=True)
    thread.start()
    logger.info("%s runner: GPU metrics for %d GPU(s)", runner, len(devices))
    return thread
