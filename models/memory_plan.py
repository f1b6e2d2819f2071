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

The card's size is what CUDA reports (``GpuSpec``): an RTX 4090 is 23.64 GiB to CUDA and 24,564 MiB
(23.99 GiB) to nvidia-smi, which counts what the driver reserves.

``problems()`` lists what breaks the plan: a profile over its card minus the stated headroom, at
steady state or while TensorRT builds, or whose processes' shares add up to more; a vLLM engine
whose ``gpu_memory_utilization`` (which vLLM checks against the free memory at its start) is below
what the plan gives it; an ORT runner whose ``gpu_memory_share`` is; a decoder without an explicit
KV cache, or one too small for ``max_model_len``; a GPU model without ``memory`` sizes.

The plan also gives what the processes need besides the card, for the Kubernetes manifests
(``kubernetes()``; ``tests/deploy/test_k8s_gpu.py`` compares them): host memory (a process's own, the
checkpoint or graphs it reads, TensorRT's engines and, while it builds, the builder's copy) and the
time a runner takes to start from built engines (reading at ``STORE_READ_BYTES_PER_S`` plus a fixed
start per engine). ``ort_caps()`` turns the ORT runner's share into the hard limits its sessions get.
Estimates from shapes and stated assumptions, not measurements.

    python -m models.memory_plan --k8s      # the manifests' memory and startup probe figures
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field

from models.registry import load_registry
from models.schema import Engine, GpuSpec, ModelSpec, NetworkShape, Registry, Served

GIB = 1 << 30
# A process's CUDA context and the libraries' handles and workspaces it creates at start (cuBLAS,
# cuDNN; torch's caching allocator's first blocks): about 0.3-0.5 GiB on Ada-generation cards with
# CUDA 12/13's lazy module loading (NVIDIA's CUDA docs; not measured here: no GPU).
CUDA_CONTEXT_BYTES = {Engine.VLLM: GIB // 2, Engine.ORT: int(0.4 * GIB)}
KV_BYTES = 2  # vLLM's KV cache in the model's 16-bit dtype
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# Host memory and start time (Kubernetes sizes; estimates, not measured: no GPU here). A process's own
# memory: Python, BentoML, torch or ONNX Runtime with the CUDA (and TensorRT) libraries mapped.
HOST_BASE_BYTES = {Engine.VLLM: 2 * GIB, Engine.ORT: 2 * GIB}
RUNNER_WORKER_BYTES = 2 * GIB  # the vLLM runner's BentoML worker beside its engine core processes
VLLM_SHM_BYTES = 2 * GIB  # the vLLM pod's /dev/shm (tensors between vLLM's processes), counted in its memory
STORE_READ_BYTES_PER_S = 200_000_000  # the Bento store volume (a network file system): an assumption
ENGINE_START_S = {Engine.VLLM: 90, Engine.ORT: 30}  # vLLM: engine core, CUDA init, torch.compile, CUDA graphs
K8S_MEMORY_MARGIN = 1.25  # requests and limits over the estimate
K8S_STARTUP_MARGIN = 3  # the startup probe allows this many times the estimated start
K8S_PROBE_PERIOD_S = 10


@dataclass
class Part:
    what: str  # weights, activations, KV cache, CUDA graphs, CUDA context
    bytes: int
    how: str  # how the figure is made


@dataclass
class Process:
    name: str  # "vllm: Qwen3-Embedding-8B", "ort runner"
    key: str  # its key in Served.gpu_memory_shares(): "vllm:<model>", "ort"
    parts: list[Part] = field(default_factory=list)
    build_extra: int = 0  # more while TensorRT builds an engine (first start)
    share: float = 0.0  # the registry's budget for it: gpu_memory_utilization / gpu_memory_share
    host: int = 0  # host memory at steady state
    host_build_extra: int = 0  # more host memory while TensorRT builds (the builder's copy of the largest engine)
    read_bytes: int = 0  # what it reads from the store when it starts (checkpoint, graphs, engines)
    engines: int = 0  # engines it starts (vLLM) or models it loads (ORT)

    @property
    def steady(self) -> int:
        return sum(p.bytes for p in self.parts)

    @property
    def peak(self) -> int:
        return self.steady + self.build_extra

    def model_bytes(self, model: str) -> int:
        """The parts of ``model`` (its weights and activations; in the ORT runner's table)."""
        return sum(p.bytes for p in self.parts if p.what.split(" ", 1)[0] == model)


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

    def process(self, key: str) -> Process | None:
        return next((p for p in self.processes if p.key == key), None)

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
    process = Process(f"vllm: {spec.name}", f"vllm:{spec.name}", share=options.gpu_memory_utilization, engines=1)
    process.parts.append(Part("CUDA context", CUDA_CONTEXT_BYTES[Engine.VLLM], "one engine core process"))
    if options.dtype not in DTYPE_BYTES:
        missing.append(f"model {spec.name}: vllm.dtype {options.dtype!r}; the plan needs it explicit")
        return process
    (net,) = spec.memory.networks
    # the checkpoint is read (and memory-mapped: page cache the pod is charged for) in its 16-bit dtype
    process.read_bytes = DTYPE_BYTES[options.dtype] * net.params
    process.host = HOST_BASE_BYTES[Engine.VLLM] + process.read_bytes
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
    process = Process("ort runner" + (f" (x{workers} workers)" if workers > 1 else ""), "ort",
                      share=runner.gpu_memory_share, host=workers * HOST_BASE_BYTES[Engine.ORT])
    process.parts.append(Part("CUDA context", workers * CUDA_CONTEXT_BYTES[Engine.ORT], "the runner process"))
    for spec in served.for_engine(Engine.ORT):
        if spec.memory is None:
            missing.append(f"model {spec.name}: no memory sizes (registry `memory`) for the plan")
            continue
        process.engines += 1
        first = spec.ort.providers[0]
        bits16 = first.name == "tensorrt" and any(
            first.options.get(key) in (True, 1, "1") for key in ("trt_bf16_enable", "trt_fp16_enable"))
        size = 2 if bits16 else 4
        for net in spec.memory.networks:
            label = spec.name if len(spec.memory.networks) == 1 else f"{spec.name} {net.name}"
            # host: ONNX Runtime holds the graph's fp32 initializers, TensorRT its engine; a build holds a copy more
            engine = weight_bytes(spec, net, bits16)[0] if first.name == "tensorrt" else 0
            process.host += workers * (4 * net.params + engine)
            process.read_bytes += 4 * net.params + engine
            process.host_build_extra = max(process.host_build_extra, engine)
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


def ort_caps(served: Served, spec: ModelSpec) -> dict[str, dict[str, str]]:
    """Hard memory limits of ``spec``'s ONNX Runtime sessions, from the ORT runner's share of the card,
    per provider: the CUDA provider's arena gets ``gpu_mem_limit`` = the model's part of the plan (its
    weights and activations) and ``arena_extend_strategy: kSameAsRequested`` (it grows by what is asked,
    not to the next power of two); TensorRT's builder gets ``trt_max_workspace_size`` = the smaller of
    the registry's and what the share leaves beside the runner's steady state. Empty where the profile
    plans no card or the model runs on no GPU provider. What TensorRT holds for its engines is bounded
    by their optimisation profiles (sized by the plan), not by an option."""
    names = {p.name for p in spec.ort.providers or ()}
    if served.gpu is None or not names & {"cuda", "tensorrt"}:
        return {}
    runner = served.runner(Engine.ORT)
    process = ort_process(served, [])
    share_bytes = int(runner.gpu_memory_share * served.gpu.memory_bytes)
    caps: dict[str, dict[str, str]] = {}
    if "cuda" in names:
        caps["cuda"] = {"gpu_mem_limit": str(process.model_bytes(spec.name)),
                        "arena_extend_strategy": "kSameAsRequested"}
    if "tensorrt" in names:
        trt = next(p for p in spec.ort.providers if p.name == "tensorrt")
        room = max(0, share_bytes - process.steady)
        configured = int(trt.options.get("trt_max_workspace_size", 0) or 0)
        caps["tensorrt"] = {"trt_max_workspace_size": str(min(configured, room) if configured else room)}
    return caps


@dataclass(frozen=True)
class PodSizes:
    """What one runner's Kubernetes pod asks for: ``memory`` for its container, ``build_memory`` for the
    init container that builds TensorRT engines (none: no TensorRT), ``startup_failure_threshold`` of
    its startup probe (every ``K8S_PROBE_PERIOD_S`` seconds), from ``start_s``, the estimated start."""

    memory: str
    build_memory: str | None
    start_s: int
    startup_failure_threshold: int


def quantity(n: float) -> str:
    """``n`` bytes with ``K8S_MEMORY_MARGIN`` as a Kubernetes quantity in whole GiB (``"19Gi"``)."""
    return f"{math.ceil(n * K8S_MEMORY_MARGIN / GIB)}Gi"


def kubernetes(result: Plan) -> dict[Engine, PodSizes]:
    """The runner pods' sizes (deploy/k8s/*-runner.yaml): the ORT runner one pod, the vLLM engines one
    pod with the runner's worker and /dev/shm besides them. Engines are built before the runner starts
    (the init container), so its startup probe waits for loading only."""
    sizes = {}
    vllm = [p for p in result.processes if p.key.startswith("vllm:")]
    if vllm:
        start = sum(ENGINE_START_S[Engine.VLLM] + p.read_bytes / STORE_READ_BYTES_PER_S for p in vllm)  # one by one
        host = RUNNER_WORKER_BYTES + VLLM_SHM_BYTES + sum(p.host for p in vllm)
        sizes[Engine.VLLM] = PodSizes(quantity(host), None, round(start), probe_threshold(start))
    if (ort := result.process("ort")) is not None:
        start = ENGINE_START_S[Engine.ORT] + ort.read_bytes / STORE_READ_BYTES_PER_S
        build = quantity(ort.host + ort.host_build_extra) if ort.build_extra else None
        sizes[Engine.ORT] = PodSizes(quantity(ort.host), build, round(start), probe_threshold(start))
    return sizes


def probe_threshold(start_s: float) -> int:
    return math.ceil(K8S_STARTUP_MARGIN * start_s / K8S_PROBE_PERIOD_S)


def card_problems(result: Plan, name: str, total_bytes: int, free_bytes: int | None) -> list[str]:
    """Why the card found (``total_bytes`` as CUDA reports it; ``free_bytes`` from NVML, None when
    unknown) cannot hold the plan: smaller than the planned card, or too little free for the plan's
    peak (what is already on it: a desktop, another server)."""
    found = []
    if total_bytes < result.gpu.memory_bytes:
        found.append(f"the card found, {name}, has {gib(total_bytes)} GiB (as CUDA reports it); profile "
                     f"{result.profile} is planned for {result.gpu.name} with {gib(result.gpu.memory_bytes)} GiB: "
                     "lower the shares and limits (docs/models.md, memory plan) or use a larger card")
    if free_bytes is not None and free_bytes < result.peak:
        found.append(f"{name} has {gib(free_bytes)} GiB free; the plan needs {gib(result.peak)} GiB (steady "
                     f"{gib(result.steady)} GiB, more while TensorRT builds): {gib(total_bytes - free_bytes)} GiB are "
                     "held by other processes (nvidia-smi lists them): stop them, or serve with less")
    return found


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
    parser.add_argument("--k8s", action="store_true", help="the runner pods' memory and startup probe figures")
    args = parser.parse_args(argv)
    result = plan(args.profile)
    if args.k8s:
        for engine, size in kubernetes(result).items():
            print(f"{engine.value} runner: memory {size.memory}" + (f", init container (TensorRT build) "
                  f"{size.build_memory}" if size.build_memory else "") + f"; start about {size.start_s} s: "
                  f"startupProbe periodSeconds {K8S_PROBE_PERIOD_S}, failureThreshold {size.startup_failure_threshold}")
    else:
        print(table(result))
    for problem in result.problems():
        print(f"PROBLEM: {problem}")
    return 1 if result.problems() else 0


if __name__ == "__main__":
    raise SystemExit(main())
