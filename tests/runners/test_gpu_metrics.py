"""GPU gauges from NVML: which GPUs a runner reports, the values it sets, and nothing at all
without a GPU (this machine has none: the real pynvml fails to initialise)."""

import prometheus_client
import pytest

from runners import gpu_metrics
from tests.support.fake_nvml import GIB, fake_nvml


@pytest.mark.parametrize(
    "visible, expected",
    [(None, [0, 1]), ("1", [1]), ("GPU-fake-1,0", [1, 0]), ("-1", [])],
)
def test_visible_devices_follow_cuda_visible_devices(monkeypatch, visible, expected):
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert gpu_metrics.visible_devices(fake_nvml()) == expected


def test_sample_sets_memory_and_utilisation_per_runner_and_gpu(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    nvml = fake_nvml()
    gpu_metrics.sample(nvml, "test-runner", gpu_metrics.visible_devices(nvml))
    value = prometheus_client.REGISTRY.get_sample_value
    labels = {"runner": "test-runner", "gpu": "1"}
    assert value("embedding_gpu_memory_used_bytes", labels) == 2 * GIB
    assert value("embedding_gpu_memory_total_bytes", labels) == 80 * GIB
    assert value("embedding_gpu_utilization_ratio", labels) == pytest.approx(0.41)
    assert value("embedding_gpu_memory_used_bytes", {"runner": "test-runner", "gpu": "0"}) is None


def test_real_nvml_exports_only_when_a_gpu_is_there():
    """Here (no GPU) the real pynvml fails and no series appears; on a GPU machine the gauges
    appear for every visible GPU."""
    import pynvml

    try:
        pynvml.nvmlInit()
        gpus = pynvml.nvmlDeviceGetCount()
    except pynvml.NVMLError:
        gpus = 0
    started = gpu_metrics.start_gpu_sampler("probe-runner")
    exported = prometheus_client.generate_latest().decode()
    if gpus == 0:
        assert started is None and 'runner="probe-runner"' not in exported
    else:
        assert started is not None
        assert 'embedding_gpu_memory_total_bytes{gpu="0",runner="probe-runner"}' in exported
