"""The quality gate of a reduced-precision graph, on the task metric: does it retrieve as well as fp32?

The labelled retrieval set ``corpora/retrieval.jsonl`` (2,000 standard-library docstrings,
500 queries with one relevant docstring each; ``corpora/make.py``) is embedded by
both graphs exactly as the runner embeds (tokenizer without padding, truncation at
``max_tokens``, the registry's pooling and normalisation). The candidate passes when

- its nDCG@10 and its MRR@10 are each at most 1% (relative) below fp32's (a gain never fails;
  closeness to fp32 is what the next two criteria check), and
- the mean overlap of its top-10 passages with fp32's is >= 0.95, and
- the mean cosine between its vector and fp32's for the same text is >= 0.99.

Reported beside them, as information: a 95% bootstrap interval of each relative change
(queries resampled), the minimum cosine, and the share of queries whose top-10 set is exactly
fp32's (a near-tie at rank 10 flips that set, so it measures ties more than quality; it was the
gate before and no int8 graph passed it: docs/benchmarks.md).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

import corpora
from export import ExportError
from models.schema import Pooling
from runners.pooling import normalize, pool

RETRIEVAL_SET = corpora.RETRIEVAL
TOP_K = 10
MAX_RELATIVE_LOSS = 0.01  # nDCG@10 and MRR@10 at most 1% below fp32's
MIN_TOP10_OVERLAP = 0.95
MIN_MEAN_COSINE = 0.99
BOOTSTRAP_SAMPLES = 2000
BOOTSTRAP_SEED = 13
QUICK_GATE = (100, 500)  # queries, passages: `calibrate --gate-set quick` and the tests; ensure uses the whole set


@dataclass(frozen=True)
class RetrievalSet:
    """``passages`` and ``queries`` (texts) with ``relevant[i]``: the index in ``passages`` of
    query ``i``'s one relevant passage. ``name`` says which set (for reports)."""

    passages: tuple[str, ...]
    queries: tuple[str, ...]
    relevant: tuple[int, ...]
    name: str = "retrieval.jsonl"

    @property
    def texts(self) -> list[str]:
        """Passages, then queries: the row order of ``embed``'s output that ``compare`` expects."""
        return [*self.passages, *self.queries]

    def subset(self, queries: int, passages: int) -> RetrievalSet:
        """The first ``queries`` queries and ``passages`` passages: their relevant passages first,
        then the set's first others (a small set for tests; ``passages`` >= ``queries``)."""
        chosen = list(dict.fromkeys(self.relevant[:queries]))
        chosen += [i for i in range(len(self.passages)) if i not in set(chosen)][: max(0, passages - len(chosen))]
        position = {old: new for new, old in enumerate(chosen)}
        return RetrievalSet(
            passages=tuple(self.passages[i] for i in chosen), queries=self.queries[:queries],
            relevant=tuple(position[i] for i in self.relevant[:queries]),
            name=f"{self.name} (first {queries} queries, {len(chosen)} passages)",
        )


def load_retrieval_set(path: Path = RETRIEVAL_SET) -> RetrievalSet:
    """The labelled set at ``path``: rows ``{"kind": "doc", "id", "text"}`` and ``{"kind": "query",
    "text", "relevant": doc id}``. ``ExportError`` when missing or when a label names no passage."""
    if not path.is_file():
        raise ExportError(f"the quality gate's retrieval set {path} is missing")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    docs = [r for r in rows if r["kind"] == "doc"]
    index = {r["id"]: i for i, r in enumerate(docs)}
    queries = [r for r in rows if r["kind"] == "query"]
    unknown = [q["relevant"] for q in queries if q["relevant"] not in index]
    if unknown:
        raise ExportError(f"{path}: queries name passages that are not in it: {unknown[:5]}")
    return RetrievalSet(passages=tuple(r["text"] for r in docs), queries=tuple(q["text"] for q in queries),
                        relevant=tuple(index[q["relevant"]] for q in queries), name=path.name)


def embed(onnx_path: Path, tokenizer_path: Path, texts: list[str], pooling: str, normalized: bool,
          max_tokens: int, batch: int = 32) -> np.ndarray:
    """float32 (len(texts), dim) embeddings of ``texts`` through the graph at ``onnx_path`` on CPU.
    Texts are sorted by length before batching (less padding; the result is in input order)."""
    import onnxruntime as ort
    from tokenizers import Tokenizer

    from runners.ort.engine import padded_feed

    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    pad_id = tokenizer.padding["pad_id"] if tokenizer.padding else 0  # masked out: any id in range does
    tokenizer.enable_truncation(max_length=max_tokens)
    tokenizer.no_padding()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    encodings = tokenizer.encode_batch(texts)
    order = sorted(range(len(texts)), key=lambda i: len(encodings[i].ids))
    out = np.zeros((len(texts), 0), dtype=np.float32)
    for start in range(0, len(order), batch):
        feed = padded_feed([encodings[i].ids for i in order[start : start + batch]], pad_id, names)
        mask = feed["attention_mask"]
        (hidden,) = session.run(["last_hidden_state"], feed)
        pooled = pool(hidden, mask, Pooling(pooling))
        pooled = normalize(pooled) if normalized else pooled
        if out.shape[1] == 0:
            out = np.zeros((len(texts), pooled.shape[1]), dtype=np.float32)
        out[order[start : start + batch]] = pooled
    return out


@dataclass(frozen=True)
class Quality:
    """A candidate graph against fp32 on one labelled retrieval set.

    ``ndcg10``/``mrr10``: the candidate's mean nDCG@10 and MRR@10 over the queries, ``*_fp32``:
    fp32's, ``*_change``: candidate / fp32 - 1, ``*_change_ci``: its 95% bootstrap interval
    (queries resampled ``BOOTSTRAP_SAMPLES`` times). ``top10_overlap``: mean share of fp32's 10
    nearest passages that the candidate also ranks in its 10; ``mean_cosine``/``min_cosine``:
    between the two vectors of each text; ``same_top10``: share of queries with exactly fp32's
    top-10 set (information). ``texts``/``queries``: the set's size, ``retrieval_set``: its name."""

    ndcg10: float
    ndcg10_fp32: float
    ndcg10_change: float
    ndcg10_change_ci: tuple[float, float]
    mrr10: float
    mrr10_fp32: float
    mrr10_change: float
    mrr10_change_ci: tuple[float, float]
    top10_overlap: float
    mean_cosine: float
    min_cosine: float
    same_top10: float
    texts: int
    queries: int
    retrieval_set: str

    def failures(self) -> list[str]:
        """One line per gate criterion this candidate misses (empty: it passes)."""
        out = [f"{name} {change:+.2%} against fp32 (needs >= {-MAX_RELATIVE_LOSS:.0%})"
               for name, change in (("nDCG@10", self.ndcg10_change), ("MRR@10", self.mrr10_change))
               if change < -MAX_RELATIVE_LOSS]
        if self.top10_overlap < MIN_TOP10_OVERLAP:
            out.append(f"mean top-{TOP_K} overlap with fp32 {self.top10_overlap:.3f} (needs >= {MIN_TOP10_OVERLAP})")
        if self.mean_cosine < MIN_MEAN_COSINE:
            out.append(f"mean cosine to fp32 {self.mean_cosine:.4f} (needs >= {MIN_MEAN_COSINE})")
        return out

    @property
    def passed(self) -> bool:
        return not self.failures()

    def summary(self) -> str:
        """One line with every figure, for logs and error messages."""
        return (f"nDCG@10 {self.ndcg10:.4f} vs fp32 {self.ndcg10_fp32:.4f} ({self.ndcg10_change:+.2%}, 95% CI "
                f"{self.ndcg10_change_ci[0]:+.2%} to {self.ndcg10_change_ci[1]:+.2%}), MRR@10 {self.mrr10:.4f} vs "
                f"{self.mrr10_fp32:.4f} ({self.mrr10_change:+.2%}, CI {self.mrr10_change_ci[0]:+.2%} to "
                f"{self.mrr10_change_ci[1]:+.2%}), top-{TOP_K} overlap {self.top10_overlap:.3f}, mean cosine "
                f"{self.mean_cosine:.4f} (min {self.min_cosine:.4f}), same top-{TOP_K} set {self.same_top10:.0%}; "
                f"{self.queries} queries, {self.texts - self.queries} passages")

    def record(self) -> dict:
        """The store metadata form: rounded figures, ``passed``, and the thresholds applied."""
        rounded = {k: (round(v, 5) if isinstance(v, float) else [round(x, 5) for x in v] if isinstance(v, tuple)
                       else v) for k, v in asdict(self).items()}
        return {**rounded, "passed": self.passed, "thresholds": {
            "max_relative_loss": MAX_RELATIVE_LOSS, "min_top10_overlap": MIN_TOP10_OVERLAP,
            "min_mean_cosine": MIN_MEAN_COSINE}}


def top_k(vectors: np.ndarray, passages: int) -> np.ndarray:
    """(queries, ``TOP_K``) passage indices by descending dot product, for rows ``passages:``
    (queries) against rows ``:passages`` (passages) of unit ``vectors``."""
    scores = vectors[passages:] @ vectors[:passages].T
    best = np.argpartition(-scores, TOP_K - 1, axis=1)[:, :TOP_K]
    order = np.argsort(-np.take_along_axis(scores, best, axis=1), axis=1, kind="stable")
    return np.take_along_axis(best, order, axis=1)


def per_query_scores(ranked: np.ndarray, relevant: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(nDCG@10, reciprocal rank @10) of each query with one relevant passage: 1 / log2(rank + 1)
    and 1 / rank when it is ranked ``rank`` (1-based) within the top 10, else 0."""
    hits = ranked == relevant[:, None]
    rank = np.where(hits.any(axis=1), hits.argmax(axis=1) + 1, 0)
    found = rank > 0
    ndcg = np.where(found, 1.0 / np.log2(np.maximum(rank, 1) + 1), 0.0)
    rr = np.where(found, 1.0 / np.maximum(rank, 1), 0.0)
    return ndcg, rr


def relative_change_ci(candidate: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """95% percentile-bootstrap interval of mean(candidate) / mean(reference) - 1 over queries
    resampled with replacement (paired: one resample draws the same queries for both)."""
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    draws = rng.integers(0, len(candidate), size=(BOOTSTRAP_SAMPLES, len(candidate)))
    ref = reference[draws].mean(axis=1)
    change = candidate[draws].mean(axis=1) / np.where(ref > 0, ref, np.nan) - 1
    low, high = np.nanpercentile(change, [2.5, 97.5])
    return float(low), float(high)


def compare(reference: np.ndarray, candidate: np.ndarray, rset: RetrievalSet) -> Quality:
    """Quality of ``candidate`` against ``reference`` embeddings of ``rset.texts`` (passages
    first, then queries)."""
    ref, cand = normalize(reference), normalize(candidate)
    passages = len(rset.passages)
    cosines = np.sum(ref * cand, axis=1)
    ref_top, cand_top = top_k(ref, passages), top_k(cand, passages)
    overlaps = np.array([len(set(a) & set(b)) / TOP_K for a, b in zip(ref_top, cand_top, strict=True)])
    relevant = np.asarray(rset.relevant)
    (ref_ndcg, ref_rr), (cand_ndcg, cand_rr) = per_query_scores(ref_top, relevant), per_query_scores(cand_top, relevant)

    def change(a: np.ndarray, b: np.ndarray) -> float:
        return float(a.mean() / b.mean() - 1) if b.mean() > 0 else 0.0

    return Quality(
        ndcg10=float(cand_ndcg.mean()), ndcg10_fp32=float(ref_ndcg.mean()), ndcg10_change=change(cand_ndcg, ref_ndcg),
        ndcg10_change_ci=relative_change_ci(cand_ndcg, ref_ndcg),
        mrr10=float(cand_rr.mean()), mrr10_fp32=float(ref_rr.mean()), mrr10_change=change(cand_rr, ref_rr),
        mrr10_change_ci=relative_change_ci(cand_rr, ref_rr),
        top10_overlap=float(overlaps.mean()), mean_cosine=float(cosines.mean()), min_cosine=float(cosines.min()),
        same_top10=float(np.mean(overlaps == 1.0)), texts=len(ref), queries=len(rset.queries),
        retrieval_set=rset.name,
    )


def gate(reference: Path, candidate: Path, tokenizer: Path, pooling: str, normalized: bool, max_tokens: int,
         enforce: bool = True, rset: RetrievalSet | None = None) -> Quality:
    """Compare graph ``candidate`` with graph ``reference`` on ``rset`` (default: the whole
    retrieval set); ``ExportError`` naming every missed criterion when the gate fails and ``enforce``."""
    rset = rset or load_retrieval_set()
    args = (tokenizer, rset.texts, pooling, normalized, max_tokens)
    quality = compare(embed(reference, *args), embed(candidate, *args), rset)
    if enforce and not quality.passed:
        raise ExportError(
            f"quality gate failed: {'; '.join(quality.failures())} ({quality.summary()}); not registering")
    return quality
