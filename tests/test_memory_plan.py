"""The GPU memory plan (models/memory_plan.py) computed from the registry: the shipped rtx4090
profile fits its card minus the stated headroom, at steady state and while TensorRT builds, each
process within the share the registry gives it; a profile that does not fit, or leaves vLLM to size
a KV cache from the free memory at start, fails; docs/models.md shows the table the code computes."""

from pathlib import Path

import pytest

from models.memory_plan import GIB, plan, table
from models.registry import parse_registry

ROOT = Path(__file__).resolve().parent.parent
REGISTRY = (ROOT / "models/registry.yaml").read_text()


def changed(old: str, new: str):
    assert old in REGISTRY, old
    return parse_registry(REGISTRY.replace(old, new, 1))


def test_rtx4090_fits_its_card_with_every_process_in_its_share():
    result = plan("rtx4090")
    assert result.problems() == []
    names = [p.name for p in result.processes]
    assert names == ["vllm: Qwen3-Embedding-8B", "vllm: pubmedbert", "vllm: biomedbert", "ort runner"]
    assert result.peak <= result.limit == result.gpu.memory_bytes - result.gpu.headroom_bytes
    assert result.peak > result.steady  # TensorRT's build workspace is counted
    for process in result.processes:
        parts = {part.what for part in process.parts}
        assert "CUDA context" in parts and process.peak <= process.share * result.gpu.memory_bytes
    qwen = {part.what: part for part in result.processes[0].parts}
    assert {"weights", "activations", "KV cache", "CUDA graphs"} <= set(qwen)
    assert qwen["KV cache"].how.startswith("12288 tokens at 144 KiB")  # >= max_model_len 8192
    assert 7.5 < qwen["weights"].bytes / GIB < 7.8  # fp8 linear layers + a 16-bit embedding table
    ort = {part.what for part in result.processes[-1].parts}
    assert {"colqwen2 vision weights", "colqwen2 language weights"} <= ort  # the language model held once


WORKSPACE = "            trt_max_workspace_size: 1073741824\n    memory:"


@pytest.mark.parametrize("old, new, problem", [
    ("      quantization: fp8_per_tensor", "      # quantization: fp8_per_tensor", "steady state, over"),
    ("      kv_cache_memory_bytes: 1811939328", "      # kv_cache", "a decoder without vllm.kv_cache_memory_bytes"),
    ("kv_cache_memory_bytes: 1811939328", "kv_cache_memory_bytes: 805306368", "holds 5461 tokens, less than"),
    ("      gpu_memory_utilization: 0.465", "      gpu_memory_utilization: 0.4", "Qwen3-Embedding-8B needs 11.13 GiB"),
    (WORKSPACE, WORKSPACE.replace("1073741824", "4294967296"), "while TensorRT builds an engine, over"),
    ("gpu_memory_share: 0.415", "gpu_memory_share: 0.45", "the shares add up to 0.999"),
])
def test_a_plan_that_does_not_hold_fails(old, new, problem):
    problems = plan("rtx4090", changed(old, new)).problems()
    assert any(problem in p for p in problems), problems


def test_docs_show_the_computed_table():
    assert table(plan("rtx4090")) in (ROOT / "docs/models.md").read_text(), \
        "paste `python -m models.memory_plan` into docs/models.md"
