"""ONNX Runtime engine for ColQwen2 entries exported by ``python -m export colqwen2``.

One session for queries (``query/model.onnx``: dynamic batch and length) and one per page
bucket (``page_<H>x<W>/model.onnx``: dynamic batch, fixed image size); see ``export/colqwen2.py``
for the graphs. Each graph has a folder of its own because a real checkpoint's graphs exceed
protobuf's 2 GB and keep their weights in external data files next to them. Inputs are either
int64 query ids ``(tokens,)`` (formatted and validated by the gateway)
or uint8 RGB pages ``(H, W, 3)`` already resized to a bucket. Each result is float32
``(tokens, 128)`` with L2-normalised rows: a query's own tokens, or every token of the page
prompt. Queries are right-padded into length-sorted sub-batches (at most ``max_batch_tokens``
padded tokens and ``vision.max_batch_queries`` rows); pages run per bucket, at most
``vision.max_batch_pages`` per call.

TensorRT: each session gets an optimisation profile covering what this engine sends it
(``profiles``): queries from 1x1 to ``max_batch_queries`` x ``max_tokens``, pages from 1 to
``max_batch_pages`` images of the bucket; the registry's TensorRT options (fp16, engine and
timing caches, workspace) apply to all of them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import numpy as np

from models.registry import ModelSpec
from models.store import QUERY_GRAPH, StoreEntry
from runners.metrics import runner_metrics
from runners.ort import providers
from runners.ort.engine import right_padded, token_budget_batches

logger = logging.getLogger(__name__)

QUERY_OPT_TOKENS = 32  # typical formatted query length (the processor adds 11 tokens of suffix)


def query_profile(spec: ModelSpec) -> tuple[providers.Shapes, providers.Shapes, providers.Shapes]:
    """TensorRT (min, opt, max) shapes of the query graph."""
    rows = spec.vision.max_batch_queries
    shape = lambda b, s: {"input_ids": (b, s), "attention_mask": (b, s)}  # noqa: E731
    return shape(1, 1), shape(rows, min(QUERY_OPT_TOKENS, spec.max_tokens)), shape(rows, spec.max_tokens)


def page_profile(
    spec: ModelSpec, height: int, width: int
) -> tuple[providers.Shapes, providers.Shapes, providers.Shapes]:
    """TensorRT (min, opt, max) shapes of one bucket's page graph."""
    pages = spec.vision.max_batch_pages
    return (
        {"pixel_values": (1, height, width, 3)},
        {"pixel_values": (pages, height, width, 3)},
        {"pixel_values": (pages, height, width, 3)},
    )


class ColQwen2Engine:
    def __init__(self, spec: ModelSpec, entry: StoreEntry) -> None:
        if spec.vision is None:
            raise ValueError(f"model {spec.name}: a ColQwen2 engine needs the registry's `vision` section")
        self.spec = spec
        self.pad_id = int(entry.settings["pad_token_id"])
        self.query = providers.create_session(str(entry.file(QUERY_GRAPH)), spec, query_profile(spec))
        self.pages = {
            (b["height"], b["width"]): providers.create_session(
                str(entry.file(b["graph"])), spec, page_profile(spec, b["height"], b["width"])
            )
            for b in entry.settings["buckets"]
        }
        self.page_tokens = {(b["height"], b["width"]): int(b["tokens"]) for b in entry.settings["buckets"]}
        self.provider = self.query.get_providers()[0]
        logger.info(
            "model %s: engine ort (ColQwen2), store %s, provider %s, page buckets %s",
            spec.name, entry.tag, self.provider, ", ".join(f"{h}x{w}" for h, w in self.pages),
        )

    def embed(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        results: list[np.ndarray] = [np.empty((0, self.spec.dimensions), np.float32)] * len(inputs)
        queries = [i for i, x in enumerate(inputs) if x.ndim == 1]
        lengths = [len(inputs[i]) for i in queries]
        for batch in token_budget_batches(
            lengths, self.spec.max_batch_tokens, self.spec.vision.max_batch_queries, self.spec.batch_call_cost_tokens
        ):
            rows = [queries[b] for b in batch]
            for index, result in zip(rows, self._run_queries([inputs[i] for i in rows]), strict=True):
                results[index] = result
        by_bucket: dict[tuple[int, int], list[int]] = {}
        for index, value in enumerate(inputs):
            if value.ndim == 3:
                by_bucket.setdefault(value.shape[:2], []).append(index)
        step = self.spec.vision.max_batch_pages
        for bucket, indices in by_bucket.items():
            for start in range(0, len(indices), step):
                chunk = indices[start : start + step]
                for index, result in zip(chunk, self._run_pages(bucket, [inputs[i] for i in chunk]), strict=True):
                    results[index] = result
        return results

    def _run_queries(self, rows: list[np.ndarray]) -> list[np.ndarray]:
        ids, mask = right_padded(rows, self.pad_id)
        out = self._timed(self.query, {"input_ids": ids, "attention_mask": mask}, len(rows), ids.size)
        return [out[r, : len(row)] for r, row in enumerate(rows)]

    def _run_pages(self, bucket: tuple[int, int], pages: list[np.ndarray]) -> list[np.ndarray]:
        session = self.pages.get(bucket)
        if session is None:  # the gateway resizes to the entry's buckets; anything else is a bug
            raise ValueError(f"model {self.spec.name}: no page graph for {bucket[0]}x{bucket[1]}")
        out = self._timed(session, {"pixel_values": np.stack(pages)}, len(pages), len(pages) * self.page_tokens[bucket])
        return list(out)

    def _timed(self, session, feed: dict[str, np.ndarray], rows: int, size: int) -> np.ndarray:
        started = time.perf_counter()
        out = session.run(["embeddings"], feed)[0]
        metrics = runner_metrics()
        metrics.engine_seconds.labels(self.spec.name).observe(time.perf_counter() - started)
        metrics.batch_size.labels(self.spec.name).observe(rows)
        metrics.batch_tokens.labels(self.spec.name).observe(size)
        return out
