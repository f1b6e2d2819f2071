"""The quality gate of a reduced-precision graph: does it retrieve what the fp32 graph retrieves?

On the retrieval set ``bench/datasets/retrieval.jsonl`` (400 synthetic passages, 100 queries;
``bench/datasets/make_datasets.py``) both graphs embed every text exactly as the runner does
(tokenizer without padding, truncation at ``max_tokens``, pooling and normalisation of the
registry). The gate passes when

- the mean cosine between the candidate's and fp32's vector of the same text is >= 0.99, and
- for >= 90% of the queries the candidate's 10 nearest passages are the same set as fp32's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from export import ExportError
from models.registry import Pooling
from runners.pooling import normalize, pool

RETRIEVAL_SET = Path(__file__).resolve().parents[1] / "bench" / "datasets" / "retrieval.jsonl"
MIN_MEAN_COSINE = 0.99
MIN_SAME_TOP10 = 0.90
TOP_K = 10


@dataclass(frozen=True)
class Quality:
    """Candidate against fp32: ``mean_cosine``/``min_cosine`` over all texts, ``same_top10``: the
    fraction of queries whose top-10 passage set is unchanged, ``top10_overlap``: the mean share
    of those 10 passages kept, ``texts``/``queries``: the set's size."""

    mean_cosine: float
    min_cosine: float
    same_top10: float
    top10_overlap: float
    texts: int
    queries: int

    @property
    def passed(self) -> bool:
        return self.mean_cosine >= MIN_MEAN_COSINE and self.same_top10 >= MIN_SAME_TOP10


def load_retrieval_set(path: Path = RETRIEVAL_SET) -> tuple[list[str], list[str]]:
    """(passages, queries) texts of the retrieval set."""
    if not path.is_file():
        raise ExportError(f"the quality gate's retrieval set {path} is missing")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r["text"] for r in rows if r["kind"] == "doc"], [r["text"] for r in rows if r["kind"] == "query"]


def embed(onnx_path: Path, tokenizer_path: Path, texts: list[str], pooling: str, normalized: bool,
          max_tokens: int, batch: int = 32) -> np.ndarray:
    """float32 (len(texts), dim) embeddings of ``texts`` through the graph at ``onnx_path`` on CPU."""
    import onnxruntime as ort
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    tokenizer.enable_truncation(max_length=max_tokens)
    tokenizer.enable_padding(pad_id=tokenizer.padding["pad_id"] if tokenizer.padding else 0)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    out = []
    for start in range(0, len(texts), batch):
        encodings = tokenizer.encode_batch(texts[start : start + batch])
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        feed = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in names:
            feed["token_type_ids"] = np.zeros_like(ids)
        (hidden,) = session.run(["last_hidden_state"], feed)
        pooled = pool(hidden, mask, Pooling(pooling))
        out.append(normalize(pooled) if normalized else pooled)
    return np.concatenate(out).astype(np.float32)


def compare(reference: np.ndarray, candidate: np.ndarray, passages: int) -> Quality:
    """Quality of ``candidate`` against ``reference`` embeddings of the same texts, where the
    first ``passages`` rows are the passages and the rest the queries."""
    ref, cand = normalize(reference), normalize(candidate)
    cosines = np.sum(ref * cand, axis=1)

    def top(vectors: np.ndarray) -> np.ndarray:
        scores = vectors[passages:] @ vectors[:passages].T
        return np.argsort(-scores, axis=1)[:, :TOP_K]

    overlaps = [len(set(a) & set(b)) / TOP_K for a, b in zip(top(ref), top(cand), strict=True)]
    return Quality(
        mean_cosine=float(cosines.mean()),
        min_cosine=float(cosines.min()),
        same_top10=float(np.mean([o == 1.0 for o in overlaps])),
        top10_overlap=float(np.mean(overlaps)),
        texts=len(ref),
        queries=len(ref) - passages,
    )


def gate(reference: Path, candidate: Path, tokenizer: Path, pooling: str, normalized: bool,
         max_tokens: int, enforce: bool = True) -> Quality:
    """Compare graph ``candidate`` with graph ``reference`` on the retrieval set; ``ExportError``
    naming the numbers when the gate fails and ``enforce``."""
    passages, queries = load_retrieval_set()
    texts = passages + queries
    args = (tokenizer, texts, pooling, normalized, max_tokens)
    quality = compare(embed(reference, *args), embed(candidate, *args), len(passages))
    if enforce and not quality.passed:
        raise ExportError(
            f"quality gate failed: mean cosine to fp32 {quality.mean_cosine:.4f} (needs >= {MIN_MEAN_COSINE}), "
            f"same top-{TOP_K} for {quality.same_top10:.0%} of queries (needs >= {MIN_SAME_TOP10:.0%}); not registering"
        )
    return quality
