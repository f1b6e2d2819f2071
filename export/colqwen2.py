"""Export ColQwen2 to ONNX as trained: a vision-encoder graph and one language-model graph that
queries and pages share, checked against Qwen2-VL with its 3-D M-RoPE positions.

Reference, pinned: transformers 5.19 ``ColQwen2Processor`` (queries and page resizing) and the
checkpoint's Qwen2-VL called as colpali-engine (which trained ``vidore/colqwen2-v1.0``) calls it:
with ``input_ids``, ``pixel_values``, ``image_grid_thw`` and ``mm_token_type_ids``, so that
``get_rope_index`` gives the image tokens (temporal, row, column) positions; then the 128-dim
projection, L2 normalisation and the attention mask (``reference_pages``). transformers' own
``ColQwen2ForRetrieval.forward`` passes only ``inputs_embeds`` to the VLM and so gives image tokens
1-D positions; the export measures and records how far that is from the reference
(``parity_page_vs_1d_positions_rel_err``). Queries are formatted exactly as
``ColQwen2Processor.process_queries`` does (``query_prefix + text + pad_token * 10 + "\\n"``, no
added special tokens) and keep 1-D text positions, as both implementations give them.

Graphs (``runners/ort/colqwen2.py`` feeds them and computes every position in NumPy):

- ``VISION_GRAPH``: ``patches`` uint8 [batch, patches, 3 * 14 * 14] (each page's patches in
  Qwen2-VL's order, padded to the batch's largest page), ``patch_positions`` int64 [batch,
  patches, 2] (row, column), ``patch_mask`` int64 [batch, patches] (1 real, 0 padding) ->
  ``image_features`` float32 [batch, patches / 4, hidden]. Rescaling, CLIP normalisation, the
  temporal repeat of each patch and the rotary angles run inside; each page attends only to its
  own patches (the reference splits one flat sequence by ``cu_seqlens``).
- ``LANGUAGE_GRAPH``: ``input_ids`` int64 [batch, sequence] (right padding), ``attention_mask``
  int64 [batch, sequence], ``position_ids`` int64 [3, batch, sequence] (M-RoPE), ``image_features``
  float32 [features, hidden] (the batch's visual features; one ignored zero row when there are
  none), ``image_index`` int64 [batch, sequence] (the row of ``image_features`` that replaces the
  token's embedding, -1 for text: a query's text that spells ``<|image_pad|>`` stays text, as in
  ``ColQwen2ForRetrieval``) -> ``embeddings`` float32 [batch, sequence, 128], each row
  L2-normalised, padding rows zero.

Both have dynamic batch and length, so any page size is served and the language model's weights
exist once. Each graph has a folder of its own (a real checkpoint's graphs exceed protobuf's 2 GB
and keep their weights in external data files next to them). fp32: this is the master graph that
CPU parity is checked on.

Sources: ``hf:<hub id>`` or a local folder holding the checkpoint (``from_pretrained``), or
``random:colqwen2-tiny``: a tiny **random-weight** model (hidden 64, 2 layers, vision depth 2)
with a byte-level BPE tokenizer trained in-process, for tests and the ``cpu-all`` profile.

This module imports torch and transformers; import it only when something is exported.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F
from torch import nn

from export import ExportError
from models.store import COLQWEN2_LAYOUT, LANGUAGE_GRAPH, VISION_GRAPH

RANDOM_PREFIX = "random:"
TINY_RANDOM = "colqwen2-tiny"
QUERY_AUGMENTATION_COUNT = 10  # ColQwen2Processor: suffix = pad_token * 10
QUERY_SUFFIX = "\n"
PARITY_MAX_RELATIVE_ERROR = 1e-3
SAMPLE_QUERIES = (
    "What is the revenue growth in the third quarter?",
    "diagram of a transformer encoder",
    "Ça coûte combien à Zürich ?",
    "x",
    "text that spells <|image_pad|> and <|vision_start|>",  # special tokens in a query stay text
)
# Page shapes of the parity check (width, height, before resizing): A4 portrait and landscape,
# square, 3:1, one larger than any page the model takes (resized down to max_pixels) and one
# smaller (resized up to min_pixels).
SAMPLE_PAGES = ((595, 842), (842, 595), (700, 700), (900, 300), (2480, 3508), (60, 40))
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
TINY_MIN_PIXELS = 28 * 28 * 4
TINY_MAX_PIXELS = 28 * 28 * 64


@dataclass
class Loaded:
    model: Any  # ColQwen2ForRetrieval, eval mode, fp32, eager attention
    processor: Any  # ColQwen2Processor
    revision: str
    random_weights: bool


def load(source: str, revision: str | None = None, pixels: tuple[int, int] | None = None) -> Loaded:
    """The model and processor of ``source`` (see the module docstring); ``ExportError`` if not.

    ``pixels``: the (min, max) page area the registry serves. The tiny random model's processor is
    built with it; a checkpoint's processor must already resize within exactly that range
    (``ExportError`` naming both otherwise), because the gateway resizes as the registry says."""
    from transformers import ColQwen2ForRetrieval, ColQwen2Processor

    if source == RANDOM_PREFIX + TINY_RANDOM:
        model, processor = tiny_random(pixels=pixels or (TINY_MIN_PIXELS, TINY_MAX_PIXELS))
        return Loaded(model, processor, revision or "random-seed-0", True)
    if source.startswith(RANDOM_PREFIX):
        raise ExportError(f"source {source!r}: the only random model is {RANDOM_PREFIX}{TINY_RANDOM}")
    from export import sources

    resolved = sources.resolve(source, revision)
    model = ColQwen2ForRetrieval.from_pretrained(
        resolved.folder, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    processor = ColQwen2Processor.from_pretrained(resolved.folder)
    own = processor_pixels(processor)
    if pixels is not None and own != tuple(pixels):
        raise ExportError(
            f"the checkpoint's ColQwen2Processor resizes pages to {own[0]}-{own[1]} pixels "
            f"(preprocessor_config.json size shortest_edge/longest_edge), the registry asks for "
            f"{pixels[0]}-{pixels[1]}: set the registry's vision.min_pixels/max_pixels to the processor's"
        )
    return Loaded(model, processor, resolved.revision or "unknown", False)


def processor_pixels(processor: Any) -> tuple[int, int]:
    """(min, max) page area in pixels that the processor's ``smart_resize`` keeps pages within."""
    size = processor.image_processor.size
    return int(size["shortest_edge"]), int(size["longest_edge"])


def tiny_random(seed: int = 0, pixels: tuple[int, int] = (TINY_MIN_PIXELS, TINY_MAX_PIXELS)):
    """A tiny random-weight ``ColQwen2ForRetrieval`` and its ``ColQwen2Processor`` (pages resized to
    ``pixels`` = (min, max) area), built offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        ColQwen2Config,
        ColQwen2ForRetrieval,
        ColQwen2Processor,
        PreTrainedTokenizerFast,
    )
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    corpus = [
        "Query: What is shown on this page? Describe the image.",
        "user\nrevenue growth quarter diagram transformer encoder table figure chart",
        "The quick brown fox jumps over the lazy dog. Ça coûte combien à Zürich ?",
    ] * 20
    bpe.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=400,
            special_tokens=list(SPECIAL_TOKENS),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        ),
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="<|endoftext|>", eos_token="<|im_end|>")
    ids = {token: bpe.token_to_id(token) for token in SPECIAL_TOKENS}
    vocab_size = bpe.get_vocab_size(with_added_tokens=True)
    config = ColQwen2Config(
        vlm_config={
            "model_type": "qwen2_vl",
            "text_config": {
                "model_type": "qwen2_vl_text",
                "vocab_size": vocab_size,
                "hidden_size": 64,
                "intermediate_size": 128,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "num_key_value_heads": 2,
                "max_position_embeddings": 4096,
                "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
                "bos_token_id": ids["<|endoftext|>"],
                "eos_token_id": ids["<|im_end|>"],
                "pad_token_id": ids["<|endoftext|>"],
            },
            "vision_config": {
                "model_type": "qwen2_vl",
                "depth": 2,
                "embed_dim": 32,
                "hidden_size": 64,
                "mlp_ratio": 2,
                "num_heads": 2,
                "patch_size": 14,
                "spatial_merge_size": 2,
                "temporal_patch_size": 2,
            },
            "image_token_id": ids["<|image_pad|>"],
            "video_token_id": ids["<|video_pad|>"],
            "vision_start_token_id": ids["<|vision_start|>"],
            "vision_end_token_id": ids["<|vision_end|>"],
        },
        embedding_dim=128,
    )
    config.vlm_config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = ColQwen2ForRetrieval(config).eval()
    # Pages of at most 64 visual tokens by default (the processor's smart_resize), like
    # colqwen2-v1.0's max_num_visual_tokens but small.
    image_processor = Qwen2VLImageProcessorPil(min_pixels=pixels[0], max_pixels=pixels[1])
    processor = ColQwen2Processor(image_processor=image_processor, tokenizer=tokenizer)
    return model, processor



class VisionGraph(nn.Module):
    """The vision encoder on a padded batch of pages: uint8 patches -> merged visual features.

    Does what ``Qwen2VLImageProcessorPil`` does after resizing (rescale, CLIP normalisation, the
    temporal repeat of each patch; ``runners/ort/colqwen2.patchify`` did the layout) and what
    ``Qwen2VisionTransformerPretrainedModel`` does, for B pages at once. The re-implemented
    pieces are the rotary angles (from the given (row, column) positions, with the reference's
    frequencies) and the attention: per page over its own patches, padding patches masked out."""

    def __init__(self, model: nn.Module, processor: Any) -> None:
        super().__init__()
        self.visual = model.vlm.visual
        config = self.visual.config
        self.patch, self.merge, self.temporal = config.patch_size, config.spatial_merge_size, config.temporal_patch_size
        rotary = self.visual.rotary_pos_emb
        if float(rotary.attention_scaling) != 1.0:
            raise ExportError(f"the vision rotary embedding scales by {rotary.attention_scaling}; only 1.0 is exported")
        self.register_buffer("inv_freq", rotary.inv_freq.detach().float().clone())
        image_processor = processor.image_processor
        channels = (1, 1, 3, 1, 1, 1)  # (batch, patch, C, T, row, column)
        self.register_buffer("mean", torch.tensor(image_processor.image_mean, dtype=torch.float32).view(channels))
        self.register_buffer("std", torch.tensor(image_processor.image_std, dtype=torch.float32).view(channels))
        self.rescale = float(image_processor.rescale_factor)
        self.eval()

    def _attention(self, attn: nn.Module, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                   bias: torch.Tensor) -> torch.Tensor:
        from transformers.models.qwen2_vl.modeling_qwen2_vl import apply_rotary_pos_emb_vision

        batch, count = x.shape[0], x.shape[1]
        q, k, v = attn.qkv(x).reshape(batch, count, 3, attn.num_heads, -1).permute(2, 0, 1, 3, 4).unbind(0)
        q, k = apply_rotary_pos_emb_vision(q, k, cos, sin)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                             attn_mask=bias, scale=attn.scaling)
        return attn.proj(out.transpose(1, 2).reshape(batch, count, -1))

    def forward(self, patches: torch.Tensor, patch_positions: torch.Tensor, patch_mask: torch.Tensor) -> torch.Tensor:
        batch, count = patches.shape[0], patches.shape[1]
        p = self.patch
        x = patches.reshape(batch, count, 3, 1, p, p).float() * self.rescale
        x = ((x - self.mean) / self.std).expand(-1, -1, -1, self.temporal, -1, -1)
        h = self.visual.patch_embed(x.reshape(batch * count, -1)).reshape(batch, count, -1)
        # (B, P, 2, d/4) -> (B, P, d/2): the row's frequencies, then the column's, as the reference
        freqs = (patch_positions.unsqueeze(-1).float() * self.inv_freq).reshape(batch, count, -1)
        angles = torch.cat([freqs, freqs], dim=-1)
        cos, sin = angles.cos(), angles.sin()
        bias = (1.0 - patch_mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
        for block in self.visual.blocks:
            h = h + self._attention(block.attn, block.norm1(h), cos, sin, bias)
            h = h + block.mlp(block.norm2(h))
        merged = self.visual.merger(h.reshape(batch * count, -1))
        return merged.reshape(batch, count // self.merge**2, -1)


class LanguageGraph(nn.Module):
    """The language model for queries and pages: token ids with visual features in place of the
    tokens ``image_index`` points from, 3-D positions given -> normalised, masked (B, S, 128).

    Does what ``Qwen2VLModel.forward`` does after the vision encoder (the features replace the
    image tokens' embeddings in order), with ``position_ids`` computed outside (M-RoPE for pages,
    text positions for queries), then ``ColQwen2ForRetrieval``'s projection, L2 and mask."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.eval()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                image_features: torch.Tensor, image_index: torch.Tensor) -> torch.Tensor:
        vlm = self.model.vlm
        embeds = vlm.get_input_embeddings()(input_ids)
        embeds = torch.where((image_index >= 0).unsqueeze(-1), image_features[image_index.clamp(min=0)], embeds)
        hidden = vlm.language_model(inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids,
                                    use_cache=False).last_hidden_state
        embeddings = self.model.embedding_proj_layer(hidden)
        embeddings = embeddings / embeddings.norm(dim=-1, keepdim=True)
        return embeddings * attention_mask.unsqueeze(-1)


def query_frame(processor: Any) -> tuple[str, list[int]]:
    """(text prefix, suffix ids) of a query: ids = tokenize(prefix + text) + suffix ids."""
    tokenizer = processor.tokenizer
    pad = tokenizer.convert_tokens_to_ids(processor.query_augmentation_token)
    suffix = [pad] * QUERY_AUGMENTATION_COUNT + tokenizer(QUERY_SUFFIX, add_special_tokens=False)["input_ids"]
    return processor.query_prefix, suffix


def page_frame(processor: Any) -> tuple[list[int], list[int]]:
    """(ids before, ids after) the image tokens of the processor's visual prompt."""
    from PIL import Image

    ids = processor.process_images([Image.new("RGB", (56, 56))])["input_ids"][0].tolist()
    first, count = ids.index(processor.image_token_id), ids.count(processor.image_token_id)
    if ids[first : first + count] != [processor.image_token_id] * count:
        raise ExportError("the processor's visual prompt does not hold its image tokens in one run")
    return ids[:first], ids[first + count :]


def _onnx_export(module: nn.Module, args: tuple, path: Path, inputs: list[str], output: str, axes: dict,
                 opset: int) -> None:
    path.parent.mkdir(parents=True)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings are expected; the parity check is the guard
        torch.onnx.export(
            module, args, str(path), input_names=inputs, output_names=[output],
            dynamic_axes=axes, opset_version=opset, dynamo=False,
        )


def export_graphs(loaded: Loaded, out_dir: Path, opset: int = 17) -> None:
    """Write ``VISION_GRAPH`` and ``LANGUAGE_GRAPH`` under ``out_dir``, each in a folder of its own
    (external weight files of >2 GB graphs must not collide). The sample inputs are two pages of
    different sizes and padded rows, so that every dynamic axis is traced as one."""
    from runners.ort.colqwen2 import patch_positions

    visual = loaded.model.vlm.visual.config
    patch, merge = visual.patch_size, visual.spatial_merge_size
    grids = [(4, 6), (6, 4)]  # (rows, columns) of patches of two sample pages
    most = max(r * c for r, c in grids)
    patches = torch.randint(0, 256, (2, most, 3 * patch * patch), dtype=torch.uint8)
    positions = torch.zeros((2, most, 2), dtype=torch.int64)
    mask = torch.zeros((2, most), dtype=torch.int64)
    for i, (rows, cols) in enumerate(grids):
        positions[i, : rows * cols] = torch.from_numpy(patch_positions(rows, cols, merge))
        mask[i, : rows * cols] = 1
    _onnx_export(VisionGraph(loaded.model, loaded.processor), (patches, positions, mask), out_dir / VISION_GRAPH,
                 ["patches", "patch_positions", "patch_mask"], "image_features",
                 {"patches": {0: "batch", 1: "patches"}, "patch_positions": {0: "batch", 1: "patches"},
                  "patch_mask": {0: "batch", 1: "patches"}, "image_features": {0: "batch", 1: "tokens"}}, opset)
    text = loaded.model.config.vlm_config.text_config
    ids = torch.full((2, 9), int(loaded.processor.tokenizer.pad_token_id), dtype=torch.int64)
    ids[0, 2:6] = ids[1, 1:3] = loaded.processor.image_token_id
    attention = torch.ones((2, 9), dtype=torch.int64)
    attention[1, 7:] = 0
    position_ids = torch.arange(9).expand(3, 2, 9).contiguous()
    features = torch.randn(6, text.hidden_size)
    index = torch.full((2, 9), -1, dtype=torch.int64)
    index[0, 2:6], index[1, 1:3] = torch.arange(4), torch.arange(4, 6)
    _onnx_export(LanguageGraph(loaded.model), (ids, attention, position_ids, features, index),
                 out_dir / LANGUAGE_GRAPH, ["input_ids", "attention_mask", "position_ids", "image_features",
                                            "image_index"], "embeddings",
                 {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
                  "position_ids": {1: "batch", 2: "sequence"}, "image_features": {0: "features"},
                  "image_index": {0: "batch", 1: "sequence"}, "embeddings": {0: "batch", 1: "sequence"}}, opset)


def _relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    return float(np.linalg.norm(actual - expected) / max(np.linalg.norm(expected), 1e-12))


def reference_pages(loaded: Loaded, images: list[Any]) -> list[np.ndarray]:
    """The reference page vectors, each image alone: ``ColQwen2Processor.process_images``, then
    Qwen2-VL called as colpali-engine calls it (``input_ids``, ``pixel_values``,
    ``image_grid_thw``, ``mm_token_type_ids``: M-RoPE positions), the projection, L2 and mask.
    float32 ``(tokens, 128)`` per image."""
    model, processor = loaded.model, loaded.processor
    vlm = model.vlm
    results = []
    with torch.no_grad():
        for image in images:
            batch = processor.process_images([image])
            grid = batch["image_grid_thw"]
            pixel_values = batch["pixel_values"][0, : int(grid[0, 1] * grid[0, 2])]  # the processor pads per batch
            token_types = (batch["input_ids"] == processor.image_token_id).int()  # text 0, image 1
            vlm.rope_deltas = None  # Qwen2VLModel caches these between calls
            hidden = vlm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                         pixel_values=pixel_values, image_grid_thw=grid, mm_token_type_ids=token_types,
                         use_cache=False).last_hidden_state
            vlm.rope_deltas = None
            embeddings = model.embedding_proj_layer(hidden)
            embeddings = embeddings / embeddings.norm(dim=-1, keepdim=True) * batch["attention_mask"].unsqueeze(-1)
            results.append(embeddings[0].numpy())
    return results


def reference_queries(loaded: Loaded, texts: list[str]) -> list[np.ndarray]:
    """The reference query vectors, each text alone through ``process_queries`` and
    ``ColQwen2ForRetrieval`` (1-D text positions, as Qwen2-VL gives text-only inputs)."""
    with torch.no_grad():
        loaded.model.vlm.rope_deltas = None
        return [loaded.model(**loaded.processor.process_queries([t])).embeddings[0].numpy() for t in texts]


def transformers_pages(loaded: Loaded, images: list[Any]) -> list[np.ndarray]:
    """What transformers' own ``ColQwen2ForRetrieval`` returns for each image (1-D positions)."""
    with torch.no_grad():
        loaded.model.vlm.rope_deltas = None
        return [loaded.model(**loaded.processor.process_images([image])).embeddings[0].numpy() for image in images]


def check_parity(loaded: Loaded, out_dir: Path, settings: dict[str, Any], pixels: tuple[int, int],
                 seed: int = 0) -> dict[str, float]:
    """The runner's ColQwen2 engine on these graphs (ONNX Runtime, CPU) against the reference.

    Queries: ``SAMPLE_QUERIES`` in one padded batch vs each alone through ``reference_queries``
    (and their formatting vs ``process_queries``). Pages: random images of ``SAMPLE_PAGES``'s
    shapes, resized by the gateway's function, in one batch of mixed sizes vs each original
    image alone through ``reference_pages``. Relative error = ||ort - ref|| / ||ref|| over each
    item's (tokens, 128) matrix; raises ``ExportError`` past ``PARITY_MAX_RELATIVE_ERROR`` or on
    a token-count mismatch. Also returns how far transformers' ``ColQwen2ForRetrieval`` (1-D
    positions) is from the reference on the same pages (information, not a limit)."""
    from PIL import Image

    from core.pages import PageGrid, resize_page
    from models.schema import ModelSpec, VisionSpec
    from models.store import StoreEntry
    from runners.ort.colqwen2 import ColQwen2Engine

    spec = ModelSpec(name="parity", engine="ort", store_tag="parity", pooling="multi",
                     max_tokens=settings["max_tokens"], dimensions=settings["dimensions"],
                     vision=VisionSpec(min_pixels=pixels[0], max_pixels=pixels[1]))
    cpu = lambda path, _spec, _profile: ort.InferenceSession(path, providers=["CPUExecutionProvider"])  # noqa: E731
    engine = ColQwen2Engine(spec, StoreEntry(tag="parity", path=out_dir, metadata={}, settings=settings),
                            create_session=cpu)
    processor = loaded.processor
    prefix, suffix = query_frame(processor)
    rows = [np.asarray(processor.tokenizer(prefix + q, add_special_tokens=False)["input_ids"] + suffix, np.int64)
            for q in SAMPLE_QUERIES]
    for text, row in zip(SAMPLE_QUERIES, rows, strict=True):
        if processor.process_queries([text])["input_ids"][0].tolist() != row.tolist():
            raise ExportError(f"query formatting differs from ColQwen2Processor for {text!r}")
    rng = np.random.default_rng(seed)
    images = [Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)) for w, h in SAMPLE_PAGES]
    grid = PageGrid(factor=engine.layout.factor, min_pixels=pixels[0], max_pixels=pixels[1])
    ours = engine.embed(rows + [resize_page(image, grid, "parity") for image in images])
    errors: dict[str, list[float]] = {"query": [], "page": [], "1d": []}
    expected = reference_queries(loaded, list(SAMPLE_QUERIES)) + reference_pages(loaded, images)
    for i, (actual, reference) in enumerate(zip(ours, expected, strict=True)):
        if actual.shape != reference.shape:
            raise ExportError(f"{'query' if i < len(rows) else 'page'} {i}: shape {actual.shape}, "
                              f"reference {reference.shape}")
        errors["query" if i < len(rows) else "page"].append(_relative_error(actual, reference))
    for one_d, reference in zip(transformers_pages(loaded, images), expected[len(rows):], strict=True):
        errors["1d"].append(_relative_error(one_d, reference))
    result = {"parity_query_max_rel_err": max(errors["query"]), "parity_page_max_rel_err": max(errors["page"])}
    if max(result.values()) > PARITY_MAX_RELATIVE_ERROR:
        raise ExportError(f"ONNX Runtime differs from the reference: {result} (limit {PARITY_MAX_RELATIVE_ERROR})")
    return {**result, "parity_page_vs_1d_positions_rel_err": max(errors["1d"])}


def stage_files(loaded: Loaded, out_dir: Path, max_tokens: int, pixels: tuple[int, int]) -> dict[str, Any]:
    """Write ``tokenizer.json`` and ``embedding.json`` (the settings the gateway and runner read)."""
    tokenizer = loaded.processor.tokenizer
    tokenizer.backend_tokenizer.save(str(out_dir / "tokenizer.json"))
    config = loaded.model.config
    visual = config.vlm_config.vision_config
    query_prefix, query_suffix = query_frame(loaded.processor)
    page_prefix, page_suffix = page_frame(loaded.processor)
    embedding = {
        "kind": "colqwen2",
        "layout": COLQWEN2_LAYOUT,
        "pooling": "multi",
        "normalize": True,
        "max_tokens": max_tokens,
        "dimensions": int(config.embedding_dim),
        "vocab_size": int(config.vlm_config.text_config.vocab_size),
        "pad_token_id": int(tokenizer.pad_token_id),
        "image_token_id": int(config.vlm_config.image_token_id),
        "text_hidden_size": int(config.vlm_config.text_config.hidden_size),
        "patch_size": int(visual.patch_size),
        "merge_size": int(visual.spatial_merge_size),
        "min_pixels": pixels[0],
        "max_pixels": pixels[1],
        "query_prefix": query_prefix,
        "query_suffix_ids": query_suffix,
        "page_prefix_ids": page_prefix,
        "page_suffix_ids": page_suffix,
        "random_weights": loaded.random_weights,
    }
    (out_dir / "embedding.json").write_text(json.dumps(embedding, indent=2))
    return embedding
