"""ONNX Runtime engine for ColQwen2 entries exported by ``python -m export colqwen2``.

Two graphs (``export/colqwen2.py`` makes them; each in a folder of its own, because a real
checkpoint's graphs exceed protobuf's 2 GB and keep their weights in external files next to them):

- the **vision encoder** (``VISION_GRAPH``): a batch of pages as uint8 patches, padded to the
  longest page's patch count -> the merged visual features of each page;
- the **language model** (``LANGUAGE_GRAPH``), shared by queries and pages, so that its weights are
  held once: token ids, attention mask, Qwen2-VL's 3-D (M-RoPE) position ids, and the visual
  features with, per token, the feature row that replaces its embedding (``image_index``; -1 for
  text, so a query that spells ``<|image_pad|>`` stays text) -> L2-normalised 128-dim rows.

Inputs are int64 query ids ``(tokens,)`` (formatted and validated by the gateway) or uint8 RGB
pages ``(H, W, 3)`` already resized by the gateway as ``ColQwen2Processor`` does (``smart_resize``:
H and W multiples of patch x merge = 28, at most ``vision.max_pixels``). Each result is float32
``(tokens, 128)``: a query's own tokens, or every token of the page prompt.

Everything the graphs do not hold is computed here in NumPy, as the reference does it:
``patchify`` lays out patches in Qwen2-VL's order (2 x 2 merge blocks row-major), ``patch_positions``
gives the vision encoder's rotary (row, column) per patch, and ``page_positions`` the language
model's 3-D positions of ``Qwen2VLModel.get_rope_index``: the prompt's text tokens count up on all
three axes, the image's tokens get (t, row, column) offset by the text before them, and the text
after the image resumes at that offset + max(rows, columns). Queries keep 1-D text positions (the
same count on all three axes), as ``get_rope_index`` gives text-only inputs.

Batching: queries are right-padded into length-sorted sub-batches (at most ``max_batch_tokens``
padded tokens and ``vision.max_batch_queries`` rows; ``token_budget_batches``). Pages of different
sizes are sorted by their prompt length (which grows with the patch count) and cut the same way,
at most ``vision.max_batch_pages`` per sub-batch; a sub-batch runs the vision encoder on its pages
padded to its largest (padding patches are masked out of attention and their features dropped),
then the language model on their prompts right-padded to the longest. So pages of similar size
share a call and little compute is spent on padding. Queries and pages never share a call.

TensorRT: each session gets one optimisation profile covering what this engine sends it
(``vision_profile``, ``language_profile``): page batches from 1 to ``max_batch_pages`` of up to
``max_pixels``, query batches up to ``max_batch_queries`` x ``max_tokens``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from models.schema import DEFAULT_VARIANT, ModelSpec
from models.store import LANGUAGE_GRAPH, VISION_GRAPH, StoreEntry
from runners.metrics import runner_metrics
from runners.ort import providers
from runners.ort.engine import right_padded, token_budget_batches

logger = logging.getLogger(__name__)

QUERY_OPT_TOKENS = 32  # typical formatted query length (the processor adds 11 tokens of suffix)
CHANNELS = 3


@dataclass(frozen=True)
class PageLayout:
    """What an entry's ``embedding.json`` says about its pages (``export/colqwen2.py: stage_files``)."""

    patch_size: int  # pixels per patch side (14)
    merge_size: int  # patches per merged visual token side (2)
    prefix_ids: tuple[int, ...]  # the visual prompt's ids before the image tokens
    suffix_ids: tuple[int, ...]  # and after them
    image_token_id: int
    hidden_size: int  # the language model's width (the visual features' last dimension)

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> PageLayout:
        return cls(
            patch_size=int(settings["patch_size"]),
            merge_size=int(settings["merge_size"]),
            prefix_ids=tuple(settings["page_prefix_ids"]),
            suffix_ids=tuple(settings["page_suffix_ids"]),
            image_token_id=int(settings["image_token_id"]),
            hidden_size=int(settings["text_hidden_size"]),
        )

    @property
    def factor(self) -> int:
        """Page sides are multiples of this (28): one merged visual token per factor x factor pixels."""
        return self.patch_size * self.merge_size

    def visual_tokens(self, height: int, width: int) -> int:
        return (height // self.factor) * (width // self.factor)

    def page_tokens(self, height: int, width: int) -> int:
        """Tokens of a page's prompt: its visual tokens plus the visual prompt's own."""
        return self.visual_tokens(height, width) + len(self.prefix_ids) + len(self.suffix_ids)


def patchify(pixels: np.ndarray, patch: int, merge: int) -> np.ndarray:
    """uint8 ``(H, W, 3)`` -> uint8 ``(H/patch x W/patch, 3 x patch x patch)`` in Qwen2-VL's order:
    merge blocks row-major, the merge x merge patches of a block row-major, each patch
    channel-major (C, row, column), as ``Qwen2VLImageProcessorPil.patchify`` lays them out (the
    graph repeats each patch over the temporal axis, as the processor does for images)."""
    height, width, channels = pixels.shape
    rows, cols = height // patch, width // patch
    blocks = pixels.reshape(rows // merge, merge, patch, cols // merge, merge, patch, channels)
    ordered = blocks.transpose(0, 3, 1, 4, 6, 2, 5)  # (block row, block col, row, col, C, py, px)
    return np.ascontiguousarray(ordered).reshape(rows * cols, channels * patch * patch)


def patch_positions(rows: int, cols: int, merge: int) -> np.ndarray:
    """int64 ``(rows x cols, 2)``: each patch's (row, column) in the order of ``patchify`` (the
    vision encoder's rotary positions; transformers' ``get_vision_position_ids``)."""
    grid_r, grid_c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    shape = (rows // merge, merge, cols // merge, merge)
    return np.stack([g.reshape(shape).transpose(0, 2, 1, 3).reshape(-1) for g in (grid_r, grid_c)], axis=1)


def page_ids(layout: PageLayout, height: int, width: int) -> np.ndarray:
    """int64 ``(page_tokens,)``: the visual prompt with one image token per merged visual token."""
    image = [layout.image_token_id] * layout.visual_tokens(height, width)
    return np.asarray([*layout.prefix_ids, *image, *layout.suffix_ids], dtype=np.int64)


def page_positions(layout: PageLayout, height: int, width: int) -> np.ndarray:
    """int64 ``(3, page_tokens)``: Qwen2-VL's M-RoPE (temporal, row, column) position of every
    token of a page's prompt, as ``Qwen2VLModel.get_rope_index`` computes them for one image."""
    before, after = len(layout.prefix_ids), len(layout.suffix_ids)
    rows, cols = height // layout.factor, width // layout.factor
    text_before = np.broadcast_to(np.arange(before), (3, before))
    image = np.stack([
        np.zeros(rows * cols, dtype=np.int64),
        np.repeat(np.arange(rows), cols),
        np.tile(np.arange(cols), rows),
    ]) + before
    text_after = np.broadcast_to(np.arange(after) + before + max(rows, cols), (3, after))
    return np.concatenate([text_before, image, text_after], axis=1).astype(np.int64)


def text_positions(batch: int, length: int) -> np.ndarray:
    """int64 ``(3, batch, length)``: 1-D text positions on all three M-RoPE axes (queries)."""
    return np.broadcast_to(np.arange(length, dtype=np.int64), (3, batch, length)).copy()


Profile = tuple[providers.Shapes, providers.Shapes, providers.Shapes]


def vision_profile(spec: ModelSpec, layout: PageLayout) -> Profile:
    """TensorRT (min, opt, max) shapes of the vision graph: 1 page of one merge block up to
    ``max_batch_pages`` pages of ``max_pixels``."""
    pages = spec.vision.max_batch_pages
    most = spec.vision.max_pixels // layout.patch_size**2
    least = layout.merge_size**2
    width = CHANNELS * layout.patch_size**2
    shape = lambda b, p: {"patches": (b, p, width), "patch_positions": (b, p, 2), "patch_mask": (b, p)}  # noqa: E731
    return shape(1, least), shape(pages, most), shape(pages, most)


def language_profile(spec: ModelSpec, layout: PageLayout) -> Profile:
    """TensorRT (min, opt, max) shapes of the language graph, one profile for queries and pages:
    optimised for a full batch of the largest pages; up to the larger of the query and page row
    limits and the longer of ``max_tokens`` and the largest page's prompt."""
    vision = spec.vision
    page_tokens = vision.max_visual_tokens + len(layout.prefix_ids) + len(layout.suffix_ids)
    rows, length = max(vision.max_batch_queries, vision.max_batch_pages), max(spec.max_tokens, page_tokens)
    features = vision.max_batch_pages * vision.max_visual_tokens

    def shape(b: int, s: int, f: int) -> providers.Shapes:
        return {"input_ids": (b, s), "attention_mask": (b, s), "position_ids": (3, b, s),
                "image_features": (f, layout.hidden_size), "image_index": (b, s)}

    return shape(1, 1, 1), shape(vision.max_batch_pages, page_tokens, features), shape(rows, length, features)


class ColQwen2Engine:
    """``create_session(path, spec, profile)``: how a graph becomes a session (the registry's
    providers; the export's parity check passes plain CPU sessions)."""

    def __init__(self, spec: ModelSpec, entry: StoreEntry, create_session=providers.create_session) -> None:
        if spec.vision is None:
            raise ValueError(f"model {spec.name}: a ColQwen2 engine needs the registry's `vision` section")
        self.spec = spec
        self.pad_id = int(entry.settings["pad_token_id"])
        self.layout = PageLayout.from_settings(entry.settings)
        self.vision = create_session(str(entry.file(VISION_GRAPH)), spec, vision_profile(spec, self.layout))
        self.language = create_session(
            str(entry.file(LANGUAGE_GRAPH)), spec, language_profile(spec, self.layout)
        )
        self.no_features = np.zeros((1, self.layout.hidden_size), np.float32)  # what a query batch sends
        self.provider = self.language.get_providers()[0]
        logger.info(
            "model %s: engine ort (ColQwen2: vision encoder + one language model), store %s, provider %s, "
            "pages %d-%d pixels", spec.name, entry.tag, self.provider, spec.vision.min_pixels, spec.vision.max_pixels,
        )

    def embed(self, inputs: Sequence[np.ndarray], labels: tuple[str, str] | None = None) -> list[np.ndarray]:
        """Queries (int64 ids) and pages (uint8 H x W x 3) in any mix -> float32 (tokens, 128) each,
        in input order. Queries and pages are cut into sub-batches of their own by length (a
        page's length is its prompt's, which grows with its patch count). ``labels``: the
        (model, variant) the engine metrics are recorded under (default: this model's own)."""
        labels = labels or (self.spec.name, DEFAULT_VARIANT)
        results: list[np.ndarray] = [np.empty((0, self.spec.dimensions), np.float32)] * len(inputs)
        vision = self.spec.vision
        queries = [i for i, x in enumerate(inputs) if x.ndim == 1]
        pages = [i for i, x in enumerate(inputs) if x.ndim == 3]
        for indices, lengths, rows_allowed, run in (
            (queries, [len(inputs[i]) for i in queries], vision.max_batch_queries, self._run_queries),
            (pages, [self.layout.page_tokens(*inputs[i].shape[:2]) for i in pages], vision.max_batch_pages,
             self._run_pages),
        ):
            for batch in token_budget_batches(lengths, self.spec.max_batch_tokens, rows_allowed,
                                              self.spec.batch_call_cost_tokens):
                rows = [indices[b] for b in batch]
                for index, result in zip(rows, run([inputs[i] for i in rows], labels), strict=True):
                    results[index] = result
        return results

    def _run_queries(self, rows: list[np.ndarray], labels: tuple[str, str]) -> list[np.ndarray]:
        started = time.perf_counter()
        ids, mask = right_padded(rows, self.pad_id)
        out = self._language(ids, mask, text_positions(*ids.shape), self.no_features, np.full(ids.shape, -1))
        self._observe(started, len(rows), ids.size, labels)
        return [out[r, : len(row)] for r, row in enumerate(rows)]

    def _run_pages(self, pages: list[np.ndarray], labels: tuple[str, str]) -> list[np.ndarray]:
        started = time.perf_counter()
        layout, patch, merge = self.layout, self.layout.patch_size, self.layout.merge_size
        for page in pages:
            height, width = page.shape[:2]
            if height % layout.factor or width % layout.factor or height * width > self.spec.vision.max_pixels:
                raise ValueError(f"model {self.spec.name}: a page of {height}x{width} is not a resized page "
                                 f"(multiples of {layout.factor}, at most {self.spec.vision.max_pixels} pixels)")
        counts = [(p.shape[0] // patch) * (p.shape[1] // patch) for p in pages]
        most = max(counts)
        patches = np.zeros((len(pages), most, CHANNELS * patch * patch), np.uint8)
        positions = np.zeros((len(pages), most, 2), np.int64)
        mask = np.zeros((len(pages), most), np.int64)
        for i, (page, count) in enumerate(zip(pages, counts, strict=True)):
            patches[i, :count] = patchify(page, patch, merge)
            positions[i, :count] = patch_positions(page.shape[0] // patch, page.shape[1] // patch, merge)
            mask[i, :count] = 1
        features = self.vision.run(["image_features"], {"patches": patches, "patch_positions": positions,
                                                        "patch_mask": mask})[0]
        merged = np.concatenate([features[i, : count // merge**2] for i, count in enumerate(counts)])
        prompts = [page_ids(layout, *p.shape[:2]) for p in pages]
        ids, attention = right_padded(prompts, self.pad_id)
        position_ids = np.zeros((3, *ids.shape), np.int64)
        index = np.full(ids.shape, -1, np.int64)
        first = 0  # the page's first row in `merged`
        for i, page in enumerate(pages):
            position_ids[:, i, : len(prompts[i])] = page_positions(layout, *page.shape[:2])
            start, count = len(layout.prefix_ids), counts[i] // merge**2
            index[i, start : start + count] = np.arange(first, first + count)
            first += count
        out = self._language(ids, attention, position_ids, merged, index)
        self._observe(started, len(pages), ids.size, labels)
        return [out[i, : len(prompt)] for i, prompt in enumerate(prompts)]

    def _language(self, ids: np.ndarray, mask: np.ndarray, positions: np.ndarray, features: np.ndarray,
                  index: np.ndarray) -> np.ndarray:
        feed = {"input_ids": ids, "attention_mask": mask, "position_ids": positions, "image_features": features,
                "image_index": index.astype(np.int64, copy=False)}
        return self.language.run(["embeddings"], feed)[0]

    @staticmethod
    def _observe(started: float, rows: int, padded_tokens: int, labels: tuple[str, str]) -> None:
        metrics = runner_metrics()
        metrics.engine_seconds.labels(*labels).observe(time.perf_counter() - started)
        metrics.batch_size.labels(*labels).observe(rows)
        metrics.batch_tokens.labels(*labels).observe(padded_tokens)
