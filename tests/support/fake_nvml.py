"""A stand-in for ``pynvml`` reporting two GPUs, to exercise ``runners/gpu_metrics.py`` where no
GPU is. ``python -m tests.support.fake_nvml PORT`` serves the runner's real GPU gauges, filled from it,
on http://127.0.0.1:PORT/metrics until killed (the Prometheus scrape test scrapes it)."""

from __future__ import annotations

import sys
import time
from types import SimpleNamespace

GIB = 1 << 30


class NVMLError(Exception):
    pass


def fake_nvml(count: int = 2, free: int = 0, total: int = 80 * GIB) -> SimpleNamespace:
    """``count`` GPUs of ``total`` bytes with ``free`` bytes free each (the start check reads them)."""
    uuids = [f"GPU-fake-{i}" for i in range(count)]

    def by_index(index: int) -> int:
        if not 0 <= index < count:
            raise NVMLError("Invalid Argument")
        return index

    return SimpleNamespace(
        NVMLError=NVMLError,
        nvmlInit=lambda: None,
        nvmlDeviceGetCount=lambda: count,
        nvmlDeviceGetHandleByIndex=by_index,
        nvmlDeviceGetHandleByUUID=lambda uuid: uuids.index(uuid),
        nvmlDeviceGetIndex=lambda handle: handle,
        nvmlDeviceGetMemoryInfo=lambda handle: SimpleNamespace(used=(handle + 1) * GIB, total=total, free=free),
        nvmlDeviceGetUtilizationRates=lambda handle: SimpleNamespace(gpu=40 + handle, memory=0),
    )


if __name__ == "__main__":
    import prometheus_client

    from runners.gpu_metrics import sample, visible_devices

    nvml = fake_nvml()
    prometheus_client.start_http_server(int(sys.argv[1]), addr="127.0.0.1")
    sample(nvml, "ort", visible_devices(nvml))
    while True:
        time.sleep(60)
