"""Choosing ONNX Runtime execution providers from the registry and what this install offers.

The registry lists providers in priority order (TensorRT, then CUDA, then CPU by default), each
with its options. ``choose()`` keeps the available ones, in that order, with their options as
strings (ONNX Runtime parses provider options from strings); CPU is always kept as the last
resort so that every node has a provider.

TensorRT builds one engine per optimisation profile: ``choose(..., profile=...)`` adds the
graph's ``trt_profile_{min,opt,max}_shapes`` (ONNX Runtime's ``name:d0xd1,...`` strings) to the
TensorRT options; ``create_session`` builds a session from a model's registry settings.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from models.registry import ModelSpec, ProviderSpec

Shapes = Mapping[str, Sequence[int]]  # input name -> dims

ORT_PROVIDER_NAMES = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}


def _option_value(value: str | int | float | bool) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def shape_string(shapes: Shapes) -> str:
    """``{"input_ids": (1, 8)}`` -> ``"input_ids:1x8"`` (TensorRT EP profile syntax)."""
    return ",".join(f"{name}:{'x'.join(str(d) for d in dims)}" for name, dims in shapes.items())


def choose(
    specs: Sequence[ProviderSpec],
    available: Iterable[str],
    profile: tuple[Shapes, Shapes, Shapes] | None = None,
) -> list[tuple[str, dict[str, str]]]:
    """(ONNX Runtime provider name, options) for each configured provider that is available.

    ``profile``: (min, opt, max) input shapes of the graph; given, TensorRT gets them as its
    optimisation profile (so it builds one engine for the whole range instead of one per shape)."""
    available = set(available)
    chosen = [
        (ORT_PROVIDER_NAMES[spec.name], {k: _option_value(v) for k, v in spec.options.items()})
        for spec in specs
        if ORT_PROVIDER_NAMES[spec.name] in available
    ]
    for name, options in chosen:
        if name == "TensorrtExecutionProvider" and profile is not None:
            for key, shapes in zip(("min", "opt", "max"), profile, strict=True):
                options[f"trt_profile_{key}_shapes"] = shape_string(shapes)
    if not any(name == "CPUExecutionProvider" for name, _ in chosen):
        chosen.append(("CPUExecutionProvider", {}))
    return chosen


def create_session(path: str, spec: ModelSpec, profile: tuple[Shapes, Shapes, Shapes] | None = None):
    """An ``onnxruntime.InferenceSession`` for ``path`` with ``spec.ort``'s session settings and
    providers (TensorRT profile from ``profile``)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[spec.ort.graph_optimization]
    options.intra_op_num_threads = spec.ort.intra_op_threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spec.ort.allow_spinning else "0")
    chosen = choose(spec.ort.providers, ort.get_available_providers(), profile)
    return ort.InferenceSession(
        path,
        sess_options=options,
        providers=[name for name, _ in chosen],
        provider_options=[opts for _, opts in chosen],
    )
