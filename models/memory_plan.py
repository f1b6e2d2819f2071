"""The GPU memory plan of a profile: per process, what each part holds on the card.

    python -m models.memory_plan [--profile rtx4090]      # the table in docs/models.md

Every process that uses the card has its own CUDA context, and holds:

- each ``engine: vllm`` model, one vLLM engine core process: its weights (``vllm.dtype``; with
  ``quantization: fp8_per_tensor`` the linear layers at 8 bits, the embedding table at 16), the
  activations of one step of ``max_num_batched_tokens`` tokens, its KV cache (decoders: exactly
  ``kv_cache_memory_bytes``, so that vLLM sizes nothing from the free memory it sees while other
  processes start) and its CUDA graphs (``memory.cuda_graphs_bytes``);
- the ONNX Runtime runner (each of its ``workers``): per model and network, the TensorRT engine's
  weights (16 bits with ``trt_bf16_enable``/``trt_fp16_enable``, else 32) and the activation memory
  of its largest call (TensorRT sizes it for the optimisation profile's maximum); while it builds an
  engine (the first start; later ones load the engine cache) one ``trt_max_workspace_size`` more
  (the builder's device memory is freed before the built engine is loaded).

Activations are estimated per token as a transformer layer's widest transient (the MLP's gate and up
outputs and its activation, ``3 x intermediate``, plus ``4 x hidden``), and, for ONNX graphs, whose
attention is exported unfused, the score matrices (rows x heads x sequence^2). The sizes come from
the registry (``memory``: parameter counts and layer shapes from each checkpoint's config.json),
because the checkpoints cannot be read here. These are estimates from shapes, not measurements.

``problems()`` lists what breaks the plan: a profile over its card minus the stated headroom, at
steady state or while TensorRT builds, or whose processes' shares add up to more; a vLLM engine
whose ``gpu_memory_utilization`` (which vLLM checks against the free memory at its start) is below
what the plan gives it; an ORT runner whose ``gpu_memory_share`` is; a decoder without an explicit
KV cache, or one too small for ``max_model_len``; a GPU model without ``memory`` sizes.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from models.registry import Engine, GpuSpec, ModelSpec, NetworkShape, Registry, Served, load_registry

GIB = 1 << 30
# A process's CUDA context and the libraries' handles and workspaces it creates at start (cuBLAS,
# cuDNN; torch's caching allocator's first blocks): about 0.3-0.5 GiB on Ada-generation cards with
# CUDA 12/13's lazy module loading (NVIDIA's CUDA docs; not measured here: no GPU).
CUDA_CONTEXT_BYTES = {Engine.VLLM: GIB // 2, Engine.ORT: int(0.4 * GIB)}
KV_BYTES = 2  # vLLM's KV cache in the model's 16-bit dtype
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass
class Part:
    what: str  # weights, activations, KV cache, CUDA graphs, CUDA context
    bytes: int
    how: str  # how the figure is made


@dataclass
class Process:
    name: str  # "vllm: Qwen3-Embedding-8B", "ort runner"
    parts: list[Part] = field(default_factory=list)
    build_extra: int = 0  # more while TensorRT builds an engine (first start)
    share: float = 0.0  # the registry's budget for it: gpu_memory_utilization / gpu_memory_share

    @property
    def steady(self) -> int:
        return sum(p.bytes for p in self.parts)

    @property
    def peak(self) -> int:
        return self.steady + self.build_extra


@dataclass
class Plan:
    profile: str
    gpu: GpuSpec
    processes: list[Process]
    missing: list[str]  # what the registry lacks to plan

    @property
    def limit(self) -> int:
        return self.gpu.memory_bytes - self.gpu.headroom_bytes

    @property
    def steady(self) -> int:
        return sum(p.steady for p in self.processes)

    @property
    def peak(self) -> int:
        return self.steady + max((p.build_extra for p in self.processes), default=0)

    def problems(self) -> list[str]:
        found = list(self.missing)
        for label, total in (("steady state", self.steady), ("while TensorRT builds an engine", self.peak)):
            if total > self.limit:
                found.append(f"profile {self.profile}: {gib(total)} GiB {label}, over the {gib(self.limit)} GiB of "
                             f"{self.gpu.name} ({gib(self.gpu.memory_bytes)} GiB) less {gib(self.gpu.headroom_bytes)} "
                             "GiB headroom")
        shares = sum(p.share for p in self.processes)
        if shares * self.gpu.memory_bytes > self.limit:
            found.append(f"profile {self.profile}: the shares add up to {shares:.3f} of the card, over the "
                         f"{self.limit / self.gpu.memory_bytes:.3f} left by the headroom")
        for process in self.processes:
            if process.share * self.gpu.memory_bytes < process.peak:
                found.append(f"profile {self.profile}: {process.name} needs {gib(process.peak)} GiB, its share "
                             f"{process.share:g} x {gib(self.gpu.memory_bytes)} GiB is "
                             f"{gib(process.share * self.gpu.memory_bytes)} GiB")
        return found


def gib(n: float) -> str:
    return f"{n / GIB:.2f}"


def weight_bytes(spec: ModelSpec, net: NetworkShape, bits16: bool) -> tuple[int, str]:
    if spec.engine is Engine.VLLM and spec.vllm.quantization == "fp8_per_tensor":
        linear = net.params - net.embedding_params
        return linear + 2 * net.embedding_params, "8-bit linear layers, 16-bit embedding table"
    size = 2 if bits16 else 4
    return size * net.params, f"{8 * size}-bit"


def activation_bytes(net: NetworkShape, calls: tuple[tuple[int, int], ...], size: int, scores: bool) -> int:
    per_call = []
    for rows, sequence in calls:
        tokens = rows * sequence
        total = tokens * (3 * net.intermediate_size + 4 * net.hidden_size) * size
        if scores:
            total += rows * net.heads * sequence * sequence * size
        per_call.append(total)
    return max(per_call)


def vllm_process(spec: ModelSpec, missing: list[str]) -> Process:
    options = spec.vllm
    process = Process(f"vllm: {spec.name}", share=options.gpu_memory_utilization)
    process.parts.append(Part("CUDA context", CUDA_CONTEXT_BYTES[Engine.VLLM], "one engine core process"))
    if options.dtype not in DTYPE_BYTES:
        missing.append(f"model {spec.name}: vllm.dtype {options.dtype!r}; the plan needs it explicit")
        return process
    (net,) = spec.memory.networks
    weights, how = weight_bytes(spec, net, DTYPE_BYTES[options.dtype] == 2)
    process.parts.append(Part("weights", weights, f"{net.params / 1e9:.2f} B params, {how}"))
    tokens = options.max_num_batched_tokens
    if tokens is None:
        missing.append(f"model {spec.name}: vllm.max_num_batched_tokens unset; the plan needs the step size")
    else:
        size = DTYPE_BYTES[options.dtype]
        process.parts.append(Part("activations", activation_bytes(net, ((1, tokens),), size, scores=False),
                                  f"one step of {tokens} tokens"))
    if net.kv_heads is not None:
        per_token = 2 * net.layers * net.kv_heads * (net.head_dim or net.hidden_size // net.heads) * KV_BYTES
        kv = options.kv_cache_memory_bytes
        if kv is None:
            missing.append(f"model {spec.name}: a decoder without vllm.kv_cache_memory_bytes: vLLM would size its KV "
                           "cache from the free memory at start, which depends on what else starts then")
        else:
            if kv // per_token < spec.max_model_len:
                missing.append(f"model {spec.name}: its KV cache holds {kv // per_token} tokens, less than "
                               f"max_model_len {spec.max_model_len}")
            process.parts.append(Part("KV cache", kv, f"{kv // per_token} tokens at {per_token // 1024} KiB"))
    if spec.memory.cuda_graphs_bytes and not options.enforce_eager:
        process.parts.append(Part("CUDA graphs", spec.memory.cuda_graphs_bytes, "estimate"))
    return process


def ort_process(served: Served, missing: list[str]) -> Process:
    runner = served.runner(Engine.ORT)
    workers = runner.workers
    process = Process("ort runner" + (f" (x{workers} workers)" if workers > 1 else ""), share=runner.gpu_memory_share)
    process.parts.append(Part("CUDA context", workers * CUDA_CONTEXT_BYTES[Engine.ORT], "the runner process"))
    for spec in served.for_engine(Engine.ORT):
        if spec.memory is None:
            missing.append(f"model {spec.name}: no memory sizes (registry `memory`) for the plan")
            continue
        first = spec.ort.providers[0]
        bits16 = first.name == "tensorrt" and any(
            first.options.get(key) in (True, 1, "1") for key in ("trt_bf16_enable", "trt_fp16_enable"))
        size = 2 if bits16 else 4
        for net in spec.memory.networks:
            label = spec.name if len(spec.memory.networks) == 1 else f"{spec.name} {net.name}"
            weights, how = weight_bytes(spec, net, bits16)
            process.parts.append(Part(f"{label} weights", workers * weights,
                                      f"{net.params / 1e9:.2f} B params, {how} ({first.name})"))
            calls = net.calls or ((max(1, spec.max_batch_tokens // spec.max_tokens), spec.max_tokens),)
            shown = ", ".join(f"{r}x{s}" for r, s in calls)
            process.parts.append(Part(f"{label} activations", workers * activation_bytes(net, calls, size, scores=True),
                                      f"largest call (rows x sequence) {shown}, attention scores included"))
        if first.name == "tensorrt":
            workspace = int(first.options.get("trt_max_workspace_size", 0)) or 0
            if not workspace:
                missing.append(f"model {spec.name}: TensorRT without trt_max_workspace_size: its build is unbounded")
            process.build_extra = max(process.build_extra, workspace)
    return process


def plan(profile: str, registry: Registry | None = None) -> Plan:
    """The plan of ``profile`` in ``registry`` (default: the configured one); raises ``ValueError``
    for a profile without a ``gpu`` card."""
    registry = registry or load_registry()
    current = registry.served(profile)
    spec = registry.profiles[profile]
    if spec.gpu is None:
        raise ValueError(f"profile {current.profile!r} has no `gpu` card to plan for")
    missing: list[str] = []
    processes = []
    for model in current.for_engine(Engine.VLLM):
        if current.runner(Engine.VLLM).wants_gpu:
            if model.memory is None:
                missing.append(f"model {model.name}: no memory sizes (registry `memory`) for the plan")
            else:
                processes.append(vllm_process(model, missing))
    if current.for_engine(Engine.ORT) and current.runner(Engine.ORT).wants_gpu:
        processes.append(ort_process(current, missing))
    return Plan(current.profile, spec.gpu, processes, missing)


def table(result: Plan) -> str:
    """Markdown: one row per part, a subtotal per process, the total against the card."""
    lines = ["| process | part | GiB | how |", "|---|---|---|---|"]
    for process in result.processes:
        for part in process.parts:
            lines.append(f"| {process.name} | {part.what} | {gib(part.bytes)} | {part.how} |")
        budget = f"share {process.share:g} = {gib(process.share * result.gpu.memory_bytes)} GiB"
        lines.append(f"| **{process.name}** | **total** | **{gib(process.steady)}** | {budget} |")
        if process.build_extra:
            lines.append(f"| {process.name} | while TensorRT builds an engine | +{gib(process.build_extra)} | "
                         "trt_max_workspace_size; first start only (later ones load the engine cache) |")
    lines.append(f"| **all** | **steady state** | **{gib(result.steady)}** | of {gib(result.limit)} GiB: "
                 f"{result.gpu.name} {gib(result.gpu.memory_bytes)} GiB less {gib(result.gpu.headroom_bytes)} GiB "
                 "headroom |")
    lines.append(f"| **all** | **while TensorRT builds** | **{gib(result.peak)}** | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.memory_plan", description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="rtx4090")
    result = plan(parser.parse_args(argv).profile)
    print(table(result))
    for problem in result.problems():
        print(f"PROBLEM: {problem}")
    return 1 if result.problems() else 0


if __name__ == "__main__":
    raise SystemExit(main())
