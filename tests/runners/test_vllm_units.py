"""The vLLM runner's pieces that need no engine: registry options and their validation, the
engine arguments derived from them, the rtx4090 GPU plan under BentoML's real allocator, and the
start-up refusal when the vllm extra is missing."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from core.settings import ConfigError
from models.registry import load_registry, parse_registry
from models.schema import Engine, RegistryError
from models.store import StoreEntry
from runners.extras import require_engines
from runners.vllm.engine import engine_args

VLLM_MINIMAL = """
models:
  q:
    engine: vllm
    store_tag: q
    pooling: last
    max_tokens: 64
    dimensions: 32
    vllm: {gpu_memory_utilization: 0.5, hf_overrides: {is_matryoshka: true}}
  o:
    engine: ort
    store_tag: o
    pooling: mean
    max_tokens: 16
    dimensions: 8
profiles:
  p:
    models: [q, o]
    gpu: {name: a test card, memory_bytes: 25382879232, headroom_bytes: 1073741824}
    runners:
      ort: {resources: {gpu: 1}, providers: [cuda], gpu_memory_share: 0.3}
      vllm: {resources: {gpu: 1}}
"""


def entry(path: str = "/store/q") -> StoreEntry:
    return StoreEntry(tag="q:v1", path=Path(path), metadata={}, settings={})


def test_engine_args_follow_the_registry():
    spec = parse_registry(VLLM_MINIMAL).models["q"]
    args = engine_args(spec, entry())
    assert args["model"] == "/store/q" and args["runner"] == "pooling" and args["skip_tokenizer_init"]
    assert args["pooler_config"] == {"pooling_type": "LAST", "use_activation": True}
    assert args["max_model_len"] == 64  # defaults to max_tokens
    assert args["gpu_memory_utilization"] == 0.5 and args["hf_overrides"] == {"is_matryoshka": True}
    assert "max_num_batched_tokens" not in args and "quantization" not in args
    assert "kv_cache_memory_bytes" not in args  # vLLM sizes it from free memory unless the registry sets it
    fixed = parse_registry(VLLM_MINIMAL.replace("vllm: {gpu", "vllm: {kv_cache_memory_bytes: 1048576, gpu")).models["q"]
    assert engine_args(fixed, entry())["kv_cache_memory_bytes"] == 1048576


def test_shipped_vllm_models_use_the_documented_settings():
    registry = load_registry()
    qwen, pubmed, biomed = (registry.models[n] for n in ("Qwen3-Embedding-8B", "pubmedbert", "biomedbert"))
    assert engine_args(qwen, entry())["pooler_config"]["pooling_type"] == "LAST"
    assert qwen.max_model_len == 8192 and qwen.vllm.hf_overrides == {"is_matryoshka": True}
    assert engine_args(qwen, entry())["quantization"] == "fp8_per_tensor"  # the 24 GB plan needs 8-bit weights
    assert (qwen.matryoshka.min, qwen.matryoshka.max) == (32, 4096)
    assert engine_args(pubmed, entry())["pooler_config"] == {"pooling_type": "MEAN", "use_activation": True}
    assert biomed.vllm.hf_overrides == {"architectures": ["BertModel"]} and biomed.max_tokens == 512
    minilm = registry.served("cpu-all").find("all-MiniLM-L6-v2-vllm")
    assert minilm.engine is Engine.VLLM and minilm.dimensions == 384


@pytest.mark.parametrize(
    "change, message",
    [
        (("pooling: last", "pooling: multi"), "pooled vectors"),
        (("vllm: {gpu_memory_utilization", "vllm: {max_model_len: 32, gpu_memory_utilization"), "below max_tokens"),
        (("gpu_memory_utilization: 0.5", "gpu_memory_utilization: 1.5"), "models.q.vllm.gpu_memory_utilization"),
        (("gpu_memory_utilization: 0.5", "gpu_memory_utilization: 0.5, dtype: fp8"), "models.q.vllm.dtype"),
        (("gpu_memory_utilization: 0.5", "gpu_memory_utilization: 0.5, quantization: awq"),
         "models.q.vllm.quantization"),
        (("vllm: {resources: {gpu: 1}}", "vllm: {resources: {gpu: 1}, batching: {mode: adaptive}}"),
         "only 'continuous'"),
    ],
)
def test_bad_vllm_settings_name_the_problem(change, message):
    text = VLLM_MINIMAL.replace(*change, 1)
    with pytest.raises(RegistryError, match=message):
        parse_registry(text, "bad.yaml").served("p")


def test_gpu_memory_shares_over_one_are_refused():
    with pytest.raises(RegistryError, match="add up to 1.100"):
        parse_registry(VLLM_MINIMAL.replace("gpu_memory_share: 0.3", "gpu_memory_share: 0.6")).served("p")


def test_rtx4090_lands_every_model_on_gpu_0(monkeypatch):
    """BentoML 1.4.40's own allocator on a one-GPU box, fed the services' resources in the order
    `bentoml serve` creates the workers: every runner gets CUDA_VISIBLE_DEVICES=0, and the
    memory shares of everything on that GPU add up to at most 1."""
    import _bentoml_impl.server.allocator as allocator

    monkeypatch.setattr(allocator, "system_resources", lambda: {"cpu": 16, allocator.NVIDIA_GPU: [0]})
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv(allocator.DISABLE_GPU_ALLOCATION_ENV, raising=False)
    rtx = load_registry().served("rtx4090")
    gpus = allocator.ResourceAllocator()
    assigned = {engine: gpus.assign_gpus(rtx.service_resources(engine)["gpu"]) for engine in (Engine.ORT, Engine.VLLM)}
    assert assigned == {Engine.ORT: [0], Engine.VLLM: [0]}
    shares = rtx.gpu_memory_shares()
    assert shares == {  # each covers its process in the memory plan (tests/models/test_memory_plan.py)
        "ort": 0.375,
        "vllm:Qwen3-Embedding-8B": 0.471,
        "vllm:pubmedbert": 0.042,
        "vllm:biomedbert": 0.042,
    }
    assert sum(shares.values()) <= 1
    # what the naive `gpu: 1` per service would have done: a second, non-existent GPU
    naive = allocator.ResourceAllocator()
    assert [naive.assign_gpus(1), naive.assign_gpus(1)] == [[0], [1]]


def test_cpu_profiles_ask_for_no_gpu():
    for profile in ("cpu", "cpu-all"):
        served = load_registry().served(profile)
        assert all("gpu" not in served.service_resources(e) for e in served.runners)
        assert served.gpu_memory_shares() == {}


def test_missing_vllm_extra_fails_start_up_naming_it(monkeypatch):
    served = load_registry().served("cpu-all")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    with pytest.raises(ConfigError, match=r"vllm engine, which is not installed.*requirements-vllm\.txt"):
        require_engines(served)
    require_engines(load_registry().served("cpu"))  # the ORT-only profile does not need it
