"""ONNX Runtime engine for text encoders exported by ``python -m export onnx``.

The ONNX graph takes ``input_ids`` and ``attention_mask`` (and ``token_type_ids`` if the model
has them), int64 ``(batch, seq)``, and returns ``last_hidden_state`` float32
``(batch, seq, hidden)``. This engine pads, runs and pools:

- inputs are sorted by length and cut into sub-batches whose padded size (rows x longest row)
  stays within the model's ``max_batch_tokens`` (memory stays bounded), choosing the cuts that
  waste the fewest padded tokens for the calls they add, so short inputs are not padded to long
  ones;
- pooling (mean / cls / last) and normalisation follow the registry entry; ``multi`` models
  return every real token's vector, each row L2-normalised;
- results go back in input order.

On TensorRT the session gets an optimisation profile from the registry's limits (``text_profile``):
1 to ``trt_rows(spec)`` rows (``max_batch_tokens // max_tokens``) of 1 to ``max_tokens`` tokens, and
sub-batches never have more rows, so every call falls in the engine TensorRT built before serving and
its activation memory is what the memory plan counts (``models/memory_plan.py``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from models.schema import DEFAULT_VARIANT, ModelSpec, Pooling
from models.store import StoreEntry
from runners.metrics import runner_metrics
from runners.ort import providers
from runners.pooling import normalize, pool

TEXT_OPT_TOKENS = 128  # the sequence length TensorRT tunes its kernels for (any length up to max_tokens runs)

logger = logging.getLogger(__name__)


class EmbeddingEngine(Protocol):
    """The engine of one model in the ONNX Runtime runner (``OrtEngine``; ``runners/ort/colqwen2.py:
    ColQwen2Engine``). It never sees text: inputs are token ids that the gateway has already
    validated (ids inside the vocabulary, at most ``max_tokens`` of them), or, for vision models,
    images the gateway has already decoded and resized as the model's processor does (any size its
    registry ``vision`` section allows; ``core/pages.py``). They reach the runner in the wire format
    of ``core/wire.py``; ``runners/guard.py`` checks them again."""

    spec: ModelSpec

    def embed(self, inputs: Sequence[np.ndarray], labels: tuple[str, str] | None = None) -> list[np.ndarray]:
        """int64 token ids ``(tokens,)`` (or, for vision models, uint8 ``(height, width, 3)``
        images as the gateway resized them) per input -> float32 ``(dim,)`` or ``(tokens, dim)`` per input,
        in input order. Raises only for engine faults (inputs are pre-validated). ``labels``: the
        (served model, variant) its engine metrics count the call under (default: ``(spec.name,
        "default")``)."""
        ...


def token_budget_batches(
    lengths: Sequence[int], max_batch_tokens: int, max_rows: int | None, call_cost_tokens: int
) -> list[list[int]]:
    """Indices grouped into sub-batches of neighbouring lengths, shortest first.

    Each sub-batch's rows x longest length is at most ``max_batch_tokens`` (a single longer
    input gets a sub-batch of its own) and it has at most ``max_rows`` rows when given. Among
    those groupings, the one with the least padded tokens plus ``call_cost_tokens`` per call is
    chosen (exact: dynamic programming over the sorted lengths), so mixed lengths are not
    padded to their longest, and equal lengths still go in as few calls as the bounds allow."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    if not order:
        return []
    sorted_lengths = np.array([lengths[i] for i in order], dtype=np.int64)
    n = len(order)
    best = np.zeros(n + 1)  # best[j]: least cost of the first j sorted inputs
    first = np.zeros(n + 1, dtype=np.int64)  # first[j]: where the last sub-batch of that grouping starts
    for j in range(1, n + 1):
        longest = int(sorted_lengths[j - 1])
        rows_allowed = max(1, max_batch_tokens // longest)
        if max_rows is not None:
            rows_allowed = min(rows_allowed, max_rows)
        starts = np.arange(max(0, j - rows_allowed), j)
        cost = best[starts] + call_cost_tokens + (j - starts) * longest
        k = len(starts) - 1 - int(np.argmin(cost[::-1]))  # ties: the shortest last sub-batch
        best[j], first[j] = cost[k], starts[k]
    batches: list[list[int]] = []
    j = n
    while j > 0:
        batches.append(order[first[j]:j])
        j = int(first[j])
    return batches[::-1]


def right_padded(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Token-id rows -> ``(input_ids, attention_mask)``, both int64 ``(len(rows), longest)``,
    padded on the right with ``pad_id`` (mask 0)."""
    width = max(len(row) for row in rows)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for r, row in enumerate(rows):
        ids[r, : len(row)] = row
        mask[r, : len(row)] = 1
    return ids, mask


def padded_feed(rows: Sequence[Sequence[int]], pad_id: int, input_names: set[str]) -> dict[str, np.ndarray]:
    """The graph's inputs for token-id ``rows``: ``right_padded`` ids and mask, and zero
    ``token_type_ids`` when the graph takes them (BERT)."""
    ids, mask = right_padded(rows, pad_id)
    feed = {"input_ids": ids, "attention_mask": mask}
    if "token_type_ids" in input_names:
        feed["token_type_ids"] = np.zeros_like(ids)
    return feed


def trt_rows(spec: ModelSpec) -> int:
    """Rows of a TensorRT text engine's largest call: ``max_batch_tokens`` of ``max_tokens``-token rows."""
    return max(1, spec.max_batch_tokens // spec.max_tokens)


def text_profile(spec: ModelSpec, token_type_ids: bool) -> tuple[providers.Shapes, providers.Shapes, providers.Shapes]:
    """TensorRT (min, opt, max) shapes of a text graph's inputs (``input_ids``, ``attention_mask`` and,
    when the graph takes it, ``token_type_ids``): 1 x 1 up to ``trt_rows`` x ``max_tokens``, tuned for
    half the rows of ``TEXT_OPT_TOKENS`` tokens."""
    names = ("input_ids", "attention_mask", *(("token_type_ids",) if token_type_ids else ()))
    rows = trt_rows(spec)

    def shape(batch: int, length: int) -> providers.Shapes:
        return {name: (batch, length) for name in names}

    return shape(1, 1), shape(max(1, rows // 2), min(TEXT_OPT_TOKENS, spec.max_tokens)), shape(rows, spec.max_tokens)


class OrtEngine:
    """One ONNX Runtime session serving one registry model. ``create_session(path, spec, profile)``:
    how its graph becomes a session (``runners/ort/preflight.py: load_engine`` passes the runner's:
    memory caps, TensorRT engines from their cache)."""

    def __init__(self, spec: ModelSpec, entry: StoreEntry, create_session=providers.create_session) -> None:
        self.spec = spec
        self.pad_id = int(entry.settings.get("pad_token_id") or 0)
        on_tensorrt = any(p.name == "tensorrt" for p in providers.listed_providers(spec))
        self.max_rows = trt_rows(spec) if on_tensorrt else None
        profile = text_profile(spec, bool(entry.settings.get("uses_token_type_ids"))) if on_tensorrt else None
        self.session = create_session(str(entry.file("model.onnx")), spec, profile)
        self.provider = self.session.get_providers()[0]
        self._input_names = {i.name for i in self.session.get_inputs()}
        logger.info(
            "model %s: engine ort, store %s, provider %s (configured %s), precision %s",
            spec.name, entry.tag, self.provider, [p.name for p in providers.listed_providers(spec)], spec.ort.precision,
        )
        if entry.metadata.get("quality", {}).get("passed") is False:
            logger.warning(
                "model %s: store entry %s FAILED the export's quality gate against fp32 (%s); it was "
                "registered with --gate report, for speed measurements only",
                spec.name, entry.tag, entry.metadata["quality"],
            )

    def embed(self, inputs: Sequence[np.ndarray], labels: tuple[str, str] | None = None) -> list[np.ndarray]:
        labels = labels or (self.spec.name, DEFAULT_VARIANT)
        lengths = [len(ids) for ids in inputs]
        results: list[np.ndarray] = [np.empty(0, np.float32)] * len(inputs)
        for batch in token_budget_batches(lengths, self.spec.max_batch_tokens, self.max_rows,
                                          self.spec.batch_call_cost_tokens):
            for index, result in zip(batch, self._run([inputs[i] for i in batch], labels), strict=True):
                results[index] = result
        return results

    def _run(self, rows: list[np.ndarray], labels: tuple[str, str]) -> list[np.ndarray]:
        feed = padded_feed(rows, self.pad_id, self._input_names)
        ids, mask = feed["input_ids"], feed["attention_mask"]
        started = time.perf_counter()
        hidden = self.session.run(["last_hidden_state"], feed)[0]
        metrics = runner_metrics()
        metrics.engine_seconds.labels(*labels).observe(time.perf_counter() - started)
        metrics.batch_size.labels(*labels).observe(len(rows))
        metrics.batch_tokens.labels(*labels).observe(ids.size)
        if self.spec.pooling is Pooling.MULTI:
            return [normalize(hidden[r, : len(row)]) for r, row in enumerate(rows)]
        pooled = pool(hidden, mask, self.spec.pooling)
        if self.spec.normalize:
            pooled = normalize(pooled)
        return list(pooled.astype(np.float32, copy=False))
