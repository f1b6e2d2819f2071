"""Export ColQwen2 (transformers' ``ColQwen2ForRetrieval``) to ONNX: one query graph and one page
graph per image resolution bucket, checked against PyTorch.

Reference, pinned: transformers 5.19 ``ColQwen2ForRetrieval`` + ``ColQwen2Processor``, for
``vidore/colqwen2-v1.0-hf`` (the merged checkpoint of vidore/colqwen2-v1.0). Queries are formatted
exactly as ``ColQwen2Processor.process_queries`` does: ``query_prefix + text + pad_token * 10 +
"\\n"``, tokenized without added special tokens. Pages use the processor's visual prompt with
one ``<|image_pad|>`` per merged visual token. ``ColQwen2ForRetrieval`` calls the VLM with
``inputs_embeds`` only, so its decoder sees plain 1-D positions (0..S-1) for pages as for
queries; the graphs reproduce exactly that.

Graphs (the runner depends on them exactly):

- ``query/model.onnx``: ``input_ids`` int64 [batch, sequence], ``attention_mask`` int64 [batch,
  sequence] (right padding) -> ``embeddings`` float32 [batch, sequence, 128], each row
  L2-normalised, padding rows zero.
- ``page_<H>x<W>/model.onnx`` per bucket: ``pixel_values`` uint8 [batch, H, W, 3] (RGB, already
  resized to the bucket) -> ``embeddings`` float32 [batch, tokens, 128]. Rescaling, CLIP
  normalisation and Qwen2-VL's patch layout run inside the graph; the vision encoder attends
  within each image (batched), and its rotary positions are constants of the bucket (the legacy
  exporter bakes the image grid in; the dynamo exporter fails on ``cu_seqlens``).

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
from models.store import QUERY_GRAPH, page_graph

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
)
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)


@dataclass
class Loaded:
    model: Any  # ColQwen2ForRetrieval, eval mode, fp32, eager attention
    processor: Any  # ColQwen2Processor
    revision: str
    random_weights: bool


def load(source: str, revision: str | None = None) -> Loaded:
    """The model and processor of ``source`` (see the module docstring); ``ExportError`` if not."""
    from transformers import ColQwen2ForRetrieval, ColQwen2Processor

    if source == RANDOM_PREFIX + TINY_RANDOM:
        model, processor = tiny_random()
        return Loaded(model, processor, revision or "random-seed-0", True)
    if source.startswith(RANDOM_PREFIX):
        raise ExportError(f"source {source!r}: the only random model is {RANDOM_PREFIX}{TINY_RANDOM}")
    from export import sources

    resolved = sources.resolve(source, revision)
    model = ColQwen2ForRetrieval.from_pretrained(
        resolved.folder, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    processor = ColQwen2Processor.from_pretrained(resolved.folder)
    return Loaded(model, processor, resolved.revision or "unknown", False)


def tiny_random(seed: int = 0):
    """A tiny random-weight ``ColQwen2ForRetrieval`` and its ``ColQwen2Processor``, built offline."""
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
    image_processor = Qwen2VLImageProcessorPil(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 64)
    processor = ColQwen2Processor(image_processor=image_processor, tokenizer=tokenizer)
    return model, processor


class QueryGraph(nn.Module):
    """``ColQwen2ForRetrieval`` on token ids: (ids, mask) -> normalised, masked (B, S, 128)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.eval()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).embeddings


class PageGraph(nn.Module):
    """One bucket's page path: uint8 RGB (B, H, W, 3) -> (B, tokens, 128).

    Does what ``Qwen2VLImageProcessorPil`` (rescale, normalise, patchify; the image is already at
    the bucket size) and ``ColQwen2ForRetrieval.forward`` (vision encoder, features in place of
    the ``<|image_pad|>`` tokens, decoder, projection, L2) do for one image, for B images at once.
    The only re-implemented piece is the vision attention: per image over its own patches (the
    reference splits one flat sequence by ``cu_seqlens``), with the reference's rotary function.
    """

    def __init__(self, model: nn.Module, processor: Any, height: int, width: int, prompt_ids: list[int]) -> None:
        super().__init__()
        from transformers.vision_utils import get_vision_position_ids

        self.model = model
        visual = model.vlm.visual
        config = visual.config
        self.patch, self.merge, self.temporal = config.patch_size, config.spatial_merge_size, config.temporal_patch_size
        self.grid_h, self.grid_w = height // self.patch, width // self.patch
        self.patches = self.grid_h * self.grid_w
        image_processor = processor.image_processor
        self.register_buffer("mean", torch.tensor(image_processor.image_mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(image_processor.image_std, dtype=torch.float32).view(1, 3, 1, 1))
        self.rescale = float(image_processor.rescale_factor)
        grid = torch.tensor([[1, self.grid_h, self.grid_w]])
        positions = get_vision_position_ids(grid, self.merge, kwargs={})
        with torch.no_grad():
            cos, sin = visual.rotary_pos_emb(torch.zeros(1), positions)
        self.register_buffer("cos", cos.float())
        self.register_buffer("sin", sin.float())
        image_token = model.config.vlm_config.image_token_id
        first = prompt_ids.index(image_token)
        count = prompt_ids.count(image_token)
        if prompt_ids[first : first + count] != [image_token] * count or count != self.patches // self.merge**2:
            raise ExportError(f"bucket {height}x{width}: the visual prompt does not hold "
                              f"{self.patches // self.merge**2} image tokens")
        self.register_buffer("prefix", torch.tensor(prompt_ids[:first]))
        self.register_buffer("suffix", torch.tensor(prompt_ids[first + count :]))
        self.eval()

    def _attention(self, attn: nn.Module, x: torch.Tensor) -> torch.Tensor:
        from transformers.models.qwen2_vl.modeling_qwen2_vl import apply_rotary_pos_emb_vision

        batch = x.shape[0]
        q, k, v = attn.qkv(x).reshape(batch, self.patches, 3, attn.num_heads, -1).permute(2, 0, 1, 3, 4).unbind(0)
        q, k = apply_rotary_pos_emb_vision(q, k, self.cos, self.sin)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                             scale=attn.scaling)
        return attn.proj(out.transpose(1, 2).reshape(batch, self.patches, -1))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        batch = pixel_values.shape[0]
        m, p = self.merge, self.patch
        x = (pixel_values.permute(0, 3, 1, 2).float() * self.rescale - self.mean) / self.std
        x = x.reshape(batch, 3, self.grid_h // m, m, p, self.grid_w // m, m, p).permute(0, 2, 5, 3, 6, 1, 4, 7)
        x = x.reshape(batch * self.patches, 3, 1, p, p).expand(-1, -1, self.temporal, -1, -1)
        visual = self.model.vlm.visual
        h = visual.patch_embed(x.reshape(batch * self.patches, -1)).reshape(batch, self.patches, -1)
        for block in visual.blocks:
            h = h + self._attention(block.attn, block.norm1(h))
            h = h + block.mlp(block.norm2(h))
        features = visual.merger(h.reshape(batch * self.patches, -1)).reshape(batch, self.patches // m**2, -1)
        embed = self.model.vlm.get_input_embeddings()
        embeds = torch.cat(
            [embed(self.prefix).expand(batch, -1, -1), features, embed(self.suffix).expand(batch, -1, -1)], dim=1
        )
        mask = torch.ones(embeds.shape[:2], dtype=torch.int64)
        return self.model(inputs_embeds=embeds, attention_mask=mask).embeddings


def query_frame(processor: Any) -> tuple[str, list[int]]:
    """(text prefix, suffix ids) of a query: ids = tokenize(prefix + text) + suffix ids."""
    tokenizer = processor.tokenizer
    pad = tokenizer.convert_tokens_to_ids(processor.query_augmentation_token)
    suffix = [pad] * QUERY_AUGMENTATION_COUNT + tokenizer(QUERY_SUFFIX, add_special_tokens=False)["input_ids"]
    return processor.query_prefix, suffix


def page_prompt_ids(processor: Any, height: int, width: int) -> list[int]:
    """The token ids ColQwen2Processor makes for one image of exactly ``height`` x ``width``."""
    from PIL import Image

    batch = processor.process_images([Image.new("RGB", (width, height))])
    grid = batch["image_grid_thw"][0].tolist()
    if grid[1:] != [height // 14, width // 14]:
        raise ExportError(f"bucket {height}x{width}: the processor resizes it to grid {grid}; pick a size it keeps")
    return batch["input_ids"][0].tolist()


def _onnx_export(module: nn.Module, args: tuple, path: Path, inputs: list[str], axes: dict, opset: int) -> None:
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings are expected; the parity check is the guard
        torch.onnx.export(
            module, args, str(path), input_names=inputs, output_names=["embeddings"],
            dynamic_axes=axes, opset_version=opset, dynamo=False,
        )


def export_graphs(loaded: Loaded, buckets: list[tuple[int, int]], out_dir: Path, opset: int = 17) -> dict[str, Any]:
    """Write the query graph and one page graph per bucket under ``out_dir``, each in a folder of
    its own (external weight files of >2 GB graphs must not collide); returns the bucket table
    and query frame for ``embedding.json``."""
    prefix, suffix = query_frame(loaded.processor)
    sample = loaded.processor.tokenizer([prefix + q for q in SAMPLE_QUERIES[:2]], add_special_tokens=False)["input_ids"]
    width = max(len(s) for s in sample) + len(suffix)
    ids = torch.full((2, width), suffix[0], dtype=torch.int64)
    mask = torch.zeros((2, width), dtype=torch.int64)
    for row, s in enumerate(sample):
        ids[row, : len(s) + len(suffix)] = torch.tensor(s + suffix)
        mask[row, : len(s) + len(suffix)] = 1
    axes = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
            "embeddings": {0: "batch", 1: "sequence"}}
    (out_dir / QUERY_GRAPH).parent.mkdir(parents=True)
    _onnx_export(QueryGraph(loaded.model), (ids, mask), out_dir / QUERY_GRAPH, ["input_ids", "attention_mask"],
                 axes, opset)
    table = []
    for height, width in buckets:
        prompt = page_prompt_ids(loaded.processor, height, width)
        graph = PageGraph(loaded.model, loaded.processor, height, width, prompt)
        name = page_graph(height, width)
        (out_dir / name).parent.mkdir(parents=True)
        pixels = torch.zeros((2, height, width, 3), dtype=torch.uint8)
        _onnx_export(graph, (pixels,), out_dir / name, ["pixel_values"],
                     {"pixel_values": {0: "batch"}, "embeddings": {0: "batch"}}, opset)
        table.append({"height": height, "width": width, "tokens": len(prompt), "graph": name})
    return {"buckets": table, "query_prefix": prefix, "query_suffix_ids": suffix}


def _relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    return float(np.linalg.norm(actual - expected) / max(np.linalg.norm(expected), 1e-12))


def check_parity(loaded: Loaded, out_dir: Path, buckets: list[dict[str, Any]], seed: int = 0) -> dict[str, float]:
    """ONNX Runtime (CPU) against PyTorch through the reference processor, per query and per page.

    Queries: each of ``SAMPLE_QUERIES`` alone through ``process_queries`` (no padding) vs the query
    graph on a right-padded batch of all of them. Pages: two random images per bucket through
    ``process_images`` vs the page graph on both at once. Relative error = ||ort - torch|| /
    ||torch|| over each item's (tokens, 128) matrix; raises ``ExportError`` past
    ``PARITY_MAX_RELATIVE_ERROR`` or on a token-count mismatch."""
    from PIL import Image

    processor, model = loaded.processor, loaded.model
    query = ort.InferenceSession(str(out_dir / QUERY_GRAPH), providers=["CPUExecutionProvider"])
    prefix, suffix = query_frame(processor)
    rows = [processor.tokenizer(prefix + q, add_special_tokens=False)["input_ids"] + suffix for q in SAMPLE_QUERIES]
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), suffix[0], dtype=np.int64)
    mask = np.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, : len(r)], mask[i, : len(r)] = r, 1
    ort_queries = query.run(["embeddings"], {"input_ids": ids, "attention_mask": mask})[0]
    query_errors = []
    with torch.no_grad():
        for i, text in enumerate(SAMPLE_QUERIES):
            batch = processor.process_queries([text])
            if batch["input_ids"][0].tolist() != rows[i]:
                raise ExportError(f"query formatting differs from ColQwen2Processor for {text!r}")
            expected = model(**batch).embeddings[0].numpy()
            query_errors.append(_relative_error(ort_queries[i, : len(rows[i])], expected))
    rng = np.random.default_rng(seed)
    page_errors = []
    for bucket in buckets:
        session = ort.InferenceSession(str(out_dir / bucket["graph"]), providers=["CPUExecutionProvider"])
        pixels = rng.integers(0, 256, size=(2, bucket["height"], bucket["width"], 3), dtype=np.uint8)
        ort_pages = session.run(["embeddings"], {"pixel_values": pixels})[0]
        with torch.no_grad():
            for i in range(2):
                batch = processor.process_images([Image.fromarray(pixels[i])])
                expected = model(**batch).embeddings[0].numpy()
                if expected.shape != ort_pages[i].shape:
                    raise ExportError(f"page graph {bucket['graph']}: shape {ort_pages[i].shape}, "
                                      f"reference {expected.shape}")
                page_errors.append(_relative_error(ort_pages[i], expected))
    result = {"parity_query_max_rel_err": max(query_errors), "parity_page_max_rel_err": max(page_errors)}
    if max(result.values()) > PARITY_MAX_RELATIVE_ERROR:
        raise ExportError(f"ONNX Runtime differs from PyTorch: {result} (limit {PARITY_MAX_RELATIVE_ERROR})")
    return result


def stage_files(loaded: Loaded, out_dir: Path, graphs: dict[str, Any], max_tokens: int) -> dict[str, Any]:
    """Write ``tokenizer.json`` and ``embedding.json`` (the settings the gateway and runner read)."""
    tokenizer = loaded.processor.tokenizer
    tokenizer.backend_tokenizer.save(str(out_dir / "tokenizer.json"))
    config = loaded.model.config
    embedding = {
        "kind": "colqwen2",
        "pooling": "multi",
        "normalize": True,
        "max_tokens": max_tokens,
        "dimensions": int(config.embedding_dim),
        "vocab_size": int(config.vlm_config.text_config.vocab_size),
        "pad_token_id": int(tokenizer.pad_token_id),
        "image_token_id": int(config.vlm_config.image_token_id),
        "random_weights": loaded.random_weights,
        **graphs,
    }
    (out_dir / "embedding.json").write_text(json.dumps(embedding, indent=2))
    return embedding
