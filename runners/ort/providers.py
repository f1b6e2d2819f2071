"""Choosing ONNX Runtime execution providers from the registry and what this install offers.

The registry lists providers in priority order (TensorRT, then CUDA, then CPU by default), each
with its options. ``choose()`` keeps the available ones, in that order, with their options as
strings (ONNX Runtime parses provider options from strings); CPU is always kept as the last
resort so that every node has a provider.
"""

from __future__ import annotations

from typing import Iterable, Sequence

from models.registry import ProviderSpec

ORT_PROVIDER_NAMES = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}


def _option_value(value: str | int | float | bool) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def choose(
    specs: Sequence[ProviderSpec], available: Iterable[str]
) -> list[tuple[str, dict[str, str]]]:
    """(ONNX Runtime provider name, options) for each configured provider that is available."""
    available = set(available)
    chosen = [
        (ORT_PROVIDER_NAMES[spec.name], {k: _option_value(v) for k, v in spec.options.items()})
        for spec in specs
        if ORT_PROVIDER_NAMES[spec.name] in available
    ]
    if not any(name == "CPUExecutionProvider" for name, _ in chosen):
        chosen.append(("CPUExecutionProvider", {}))
    return chosen
