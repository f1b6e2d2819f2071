"""ONNX Runtime engine for text encoders exported by ``python -m export onnx``.

The ONNX graph takes ``input_ids`` and ``attention_mask`` (and ``token_type_ids`` if the model
has them), int64 ``(batch, seq)``, and returns ``last_hidden_state`` float32
``(batch, seq, hidden)``. This engine pads, runs and pools:

- inputs are sorted by length and cut into sub-batches whose padded size (rows x longest row)
  stays within the model's ``max_batch_tokens``, so short inputs are not padded to long ones and
  memory stays bounded;
- pooling (mean / cls / last) and normalisation follow the registry entry; ``multi`` models
  return every real token's vector, each row L2-normalised;
- results go back in input order.
"""

from __future__ import annotations

import logging
import time
from typing import Sequence

import numpy as np

from models.registry import ModelSpec, Pooling
from models.store import StoreEntry
from runners.metrics import runner_metrics
from runners.ort import providers
from runners.pooling import normalize, pool

logger = logging.getLogger(__name__)


def token_budget_batches(
    lengths: Sequence[int], max_batch_tokens: int, max_rows: int | None = None
) -> list[list[int]]:
    """Indices grouped into sub-batches, shortest first; each sub-batch's rows x longest length
    is at most ``max_batch_tokens`` (a single longer input gets a sub-batch of its own), and it
    has at most ``max_rows`` rows when given."""
    batches: list[list[int]] = []
    current: list[int] = []
    for index in sorted(range(len(lengths)), key=lengths.__getitem__):
        if current and (
            (len(current) + 1) * lengths[index] > max_batch_tokens or (max_rows is not None and len(current) >= max_rows)
        ):
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches


def right_padded(rows: Sequence[np.ndarray], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Token-id rows -> ``(input_ids, attention_mask)``, both int64 ``(len(rows), longest)``,
    padded on the right with ``pad_id`` (mask 0)."""
    width = max(len(row) for row in rows)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for r, row in enumerate(rows):
        ids[r, : len(row)] = row
        mask[r, : len(row)] = 1
    return ids, mask


class OrtEngine:
    """One ONNX Runtime session serving one registry model."""

    def __init__(self, spec: ModelSpec, entry: StoreEntry) -> None:
        self.spec = spec
        self.pad_id = int(entry.settings.get("pad_token_id") or 0)
        self.session = providers.create_session(str(entry.file("model.onnx")), spec)
        self.provider = self.session.get_providers()[0]
        self._input_names = {i.name for i in self.session.get_inputs()}
        logger.info(
            "model %s: engine ort, store %s, provider %s (configured %s), precision %s",
            spec.name, entry.tag, self.provider, [p.name for p in spec.ort.providers], spec.ort.precision,
        )
        if entry.metadata.get("quality", {}).get("passed") is False:
            logger.warning(
                "model %s: store entry %s FAILED the export's quality gate against fp32 (%s); it was "
                "registered with --gate report, for speed measurements only",
                spec.name, entry.tag, entry.metadata["quality"],
            )

    def embed(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        lengths = [len(ids) for ids in inputs]
        results: list[np.ndarray] = [np.empty(0, np.float32)] * len(inputs)
        for batch in token_budget_batches(lengths, self.spec.max_batch_tokens):
            for index, result in zip(batch, self._run([inputs[i] for i in batch])):
                results[index] = result
        return results

    def _run(self, rows: list[np.ndarray]) -> list[np.ndarray]:
        ids, mask = right_padded(rows, self.pad_id)
        feed = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._input_names:
            feed["token_type_ids"] = np.zeros_like(ids)
        started = time.perf_counter()
        hidden = self.session.run(["last_hidden_state"], feed)[0]
        metrics = runner_metrics()
        metrics.engine_seconds.labels(self.spec.name).observe(time.perf_counter() - started)
        metrics.batch_size.labels(self.spec.name).observe(len(rows))
        metrics.batch_tokens.labels(self.spec.name).observe(ids.size)
        if self.spec.pooling is Pooling.MULTI:
            return [normalize(hidden[r, : len(row)]) for r, row in enumerate(rows)]
        pooled = pool(hidden, mask, self.spec.pooling)
        if self.spec.normalize:
            pooled = normalize(pooled)
        return list(pooled.astype(np.float32, copy=False))
