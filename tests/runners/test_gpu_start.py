"""What a GPU process checks before it loads anything, where no GPU is:

- ``runners/gpu_probe.py`` through its real ctypes calls, against stand-ins of the driver's
  ``libcuda.so.1`` and TensorRT's ``libnvinfer.so.10`` built here with gcc (tests/support/fake_gpu/fake_gpu.c):
  the card as CUDA reports it, the compute capability, the driver's CUDA version, TensorRT's version,
  the TensorRT engine key made of them; and, on this machine for real, the message without a driver;
- ``runners/gpu_check.py`` with a stand-in NVML: a process starts when its share of the planned card
  is free, and otherwise stops with the plan's numbers; the ORT runner refuses every model while the
  card is short, and a vLLM engine stops before vLLM starts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from models.registry import load_registry
from tests.support.fake_nvml import GIB, NVMLError, fake_nvml

ROOT = Path(__file__).resolve().parents[2]
CARD = 25382879232  # an RTX 4090 as CUDA reports it


def probe(code: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, **env}, capture_output=True,
                          text=True, timeout=120)


PRINT_DEVICES = """
import json
from runners.gpu_probe import GpuUnavailable, cuda_driver, cuda_version_text, tensorrt_version
try:
    version, devices = cuda_driver()
    print(json.dumps({"cuda": cuda_version_text(version), "trt": tensorrt_version(),
                      "devices": [[d.name, d.total_bytes, d.sm] for d in devices]}))
except GpuUnavailable as exc:
    print(json.dumps({"error": str(exc)}))
"""


def test_the_probe_reads_the_card_as_cuda_reports_it(fake_libs):
    done = probe(PRINT_DEVICES, {"LD_LIBRARY_PATH": str(fake_libs), "FAKE_CUDA_DEVICES": "2"})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"cuda": "13.0", "trt": "10.16.1", "devices": [
        ["NVIDIA GeForce RTX 4090", CARD, "sm89"], ["NVIDIA GeForce RTX 4090", CARD, "sm89"]]}


@pytest.mark.parametrize("env, message", [
    ({"FAKE_CUDA_INIT": "100"}, "cuInit returned 100 (no CUDA-capable device is detected)"),
    ({"FAKE_CUDA_DEVICES": "0"}, "the NVIDIA driver sees no GPU"),
])
def test_the_probe_names_what_is_missing(fake_libs, env, message):
    done = probe(PRINT_DEVICES, {"LD_LIBRARY_PATH": str(fake_libs), **env})
    error = json.loads(done.stdout)["error"]
    assert message in error and "driver that supports CUDA 13 (>= 580" in error


NO_DRIVER = """
import ctypes
loaded = ctypes.CDLL
def without_driver(name, *args, **kwargs):  # as on this machine, and on any without the NVIDIA driver
    if name == "libcuda.so.1":
        raise OSError("libcuda.so.1: cannot open shared object file: No such file or directory")
    return loaded(name, *args, **kwargs)
ctypes.CDLL = without_driver
"""


def test_without_a_driver_the_probe_says_so():
    done = probe(NO_DRIVER + PRINT_DEVICES, {})
    error = json.loads(done.stdout)["error"]
    assert error.startswith("no NVIDIA driver (install an NVIDIA driver that supports CUDA 13 (>= 580")
    assert "libcuda.so.1 cannot be loaded" in error


def test_the_engine_key_is_made_of_tensorrt_the_gpu_onnx_runtime_content_and_settings(fake_libs):
    code = """
from runners.ort.providers import engine_key
a = engine_key({"trt_bf16_enable": "1", "trt_engine_cache_path": "/x"}, "sha256:c:language/model.onnx")
b = engine_key({"trt_bf16_enable": "1", "trt_engine_cache_path": "/elsewhere"}, "sha256:c:language/model.onnx")
print(a.folder_name(), b.folder_name())
"""
    names = {}
    for label, env in (("4090", {}), ("5090", {"FAKE_CUDA_CC": "12.0"}), ("trt10.17", {"FAKE_TRT_VERSION": "101700"})):
        done = probe(code, {"LD_LIBRARY_PATH": str(fake_libs), **env})
        assert done.returncode == 0, done.stderr
        first, second = done.stdout.split()
        assert first == second  # the cache folder's place is not part of the key
        names[label] = first
    import onnxruntime

    assert names["4090"].startswith(f"trt10.16.1-sm89-ort{onnxruntime.__version__}-")
    assert names["5090"].startswith("trt10.16.1-sm120-") and names["trt10.17"].startswith("trt10.17.0-sm89-")
    assert len(set(names.values())) == 3


# ---- the free-memory check ----

def rtx4090():
    return load_registry().served("rtx4090")


def test_a_process_starts_when_its_share_is_free():
    from runners.gpu_check import memory_problem

    served = rtx4090()
    nvml = fake_nvml(count=1, free=CARD - GIB, total=24564 * 2**20)
    for key in served.gpu_memory_shares():
        assert memory_problem(served, key, nvml) is None
    assert memory_problem(load_registry().served("cpu"), "ort", nvml) is None  # no card planned: nothing to check


def test_a_short_card_stops_the_process_with_the_plans_numbers():
    from runners.gpu_check import memory_problem

    served = rtx4090()
    nvml = fake_nvml(count=1, free=6 * GIB, total=24564 * 2**20)
    problem = memory_problem(served, "ort", nvml)
    assert problem.startswith("the ort runner: GPU 0 has 6.00 GiB free of 23.99 (NVML)")
    assert "gives it 0.375 of the planned RTX 4090's 23.64 GiB = 8.86 GiB" in problem
    assert "(its plan: 7.86 GiB, 8.86 GiB while TensorRT builds)" in problem
    assert "Other processes hold 17.99 GiB" in problem and "nvidia-smi lists them" in problem
    problem = memory_problem(served, "vllm:Qwen3-Embedding-8B", nvml)
    assert problem.startswith("the vllm engine of Qwen3-Embedding-8B: GPU 0 has 6.00 GiB free")
    assert "= 11.13 GiB (its plan: 11.13 GiB)" in problem
    def no_driver_loaded():
        raise NVMLError("Driver Not Loaded")

    no_driver = SimpleNamespace(NVMLError=NVMLError, nvmlInit=no_driver_loaded)
    assert "needs an NVIDIA GPU (RTX 4090) but NVML cannot see one (Driver Not Loaded)" in memory_problem(
        served, "ort", no_driver)


def test_the_ort_runner_refuses_every_model_while_the_card_is_short(monkeypatch):
    from runners.gpu_check import GpuMemoryShort
    from runners.ort import preflight

    served = rtx4090()
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml(count=1, free=2 * GIB))
    preflight._card_problem.cache_clear()
    try:
        for spec in served.for_engine("ort"):
            with pytest.raises(GpuMemoryShort, match="the ort runner: GPU 0 has 2.00 GiB free"):
                preflight.load_engine(spec, served)  # before the store entry is even looked up
        assert GpuMemoryShort in preflight.LOAD_ERRORS  # the runner logs it and stays not ready
    finally:
        preflight._card_problem.cache_clear()


@pytest.mark.server
def test_a_vllm_engine_stops_before_vllm_starts_when_its_share_is_not_free(monkeypatch, tmp_path):
    import models.registry
    from models.store import StoreEntry
    from runners.gpu_check import GpuMemoryShort
    from runners.vllm.engine import VllmEngine

    served = rtx4090()
    monkeypatch.setattr(models.registry, "served", lambda profile=None: served)
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml(count=1, free=4 * GIB))
    engine = VllmEngine(served.unit("Qwen3-Embedding-8B"), StoreEntry("t", tmp_path, {}, {}))
    with pytest.raises(GpuMemoryShort, match="the vllm engine of Qwen3-Embedding-8B: GPU 0 has 4.00 GiB free"):
        engine.start()
    assert engine.processes == [] and not engine.ready  # no engine core was started
