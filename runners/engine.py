"""The engine interface of the ONNX Runtime runner (``runners/ort/``: ``OrtEngine``, ``ColQwen2Engine``;
the vLLM runner's engine is asynchronous and has its own, ``runners/vllm/engine.py``).

An ``EmbeddingEngine`` computes results for one model. It never sees text: inputs are token ids that
the gateway has already validated (ids inside the vocabulary, at most ``max_tokens`` of them), or,
for vision models, images the gateway has already decoded and resized as the model's processor does
(any size its registry ``vision`` section allows). How they reach the runner is ``core/wire.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from models.registry import ModelSpec


class EmbeddingEngine(Protocol):
    spec: ModelSpec

    def embed(self, inputs: Sequence[np.ndarray], labels: tuple[str, str] | None = None) -> list[np.ndarray]:
        """int64 token ids ``(tokens,)`` (or, for vision models, uint8 ``(height, width, 3)``
        images as the gateway resized them) per input -> float32 ``(dim,)`` or ``(tokens, dim)`` per input,
        in input order. Raises only for engine faults (inputs are pre-validated). ``labels``: the
        (served model, variant) its engine metrics count the call under (default: ``(spec.name,
        "default")``)."""
        ...
