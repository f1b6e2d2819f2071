"""``python -m export colqwen2``: export a ColQwen2 checkpoint as a vision-encoder graph and a
language-model graph (``export/colqwen2.py``), check parity and register it."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import bentoml

from export import store
from export.steps import Steps
from export.store import exporter_versions
from models.store import LANGUAGE_GRAPH, VISION_GRAPH, sha256_of

STEPS = 5


def export_colqwen2(
    source: str,
    name: str,
    pixels: tuple[int, int],
    *,
    max_tokens: int,
    revision: str | None = None,
    opset: int = 17,
) -> bentoml.Model:
    """Export a ColQwen2 checkpoint (vision-encoder graph + language-model graph), check parity
    with the reference for queries and for pages resized within ``pixels`` = (min, max) area, and
    register it as ``name``. Raises ``ExportError`` (nothing is registered then)."""
    store.check_tag(name)
    steps = Steps(STEPS)
    with steps(f"resolving and loading {source}"):
        from export import colqwen2

        loaded = colqwen2.load(source, revision, pixels)
    with steps("reading the processor's query and page prompts"):
        colqwen2.query_frame(loaded.processor)
        colqwen2.page_frame(loaded.processor)
    with tempfile.TemporaryDirectory(prefix="export-") as tmp:
        out_dir = Path(tmp)
        with steps(f"exporting the vision encoder and the language model to ONNX (opset {opset})"):
            colqwen2.export_graphs(loaded, out_dir, opset)
            embedding = colqwen2.stage_files(loaded, out_dir, max_tokens, pixels)
        with steps("parity check: the runner's engine on ONNX Runtime CPU vs Qwen2-VL with M-RoPE (queries, pages)"):
            parity = colqwen2.check_parity(loaded, out_dir, embedding, pixels)
        with steps(f"registering {name}"):
            onnx_files = [VISION_GRAPH, LANGUAGE_GRAPH]
            labels = {"engine": "ort", "format": "onnx", "task": "multi-vector", "pooling": "multi",
                      "weights": "random" if loaded.random_weights else "checkpoint"}
            metadata = {
                "source": source,
                "revision": loaded.revision,
                "reference": "ColQwen2Processor + Qwen2-VL with input_ids, pixel_values, image_grid_thw and "
                             "mm_token_type_ids (M-RoPE positions, as colpali-engine)",
                "layout": embedding["layout"],
                "random_weights": loaded.random_weights,
                "engine": "ort",
                "pooling": "multi",
                "precision": "fp32",
                "dimensions": embedding["dimensions"],
                "max_tokens": max_tokens,
                "min_pixels": pixels[0],
                "max_pixels": pixels[1],
                "opset": opset,
                "onnx_files_sha256": {f: sha256_of(out_dir / f) for f in onnx_files},
                **parity,
                "exported_with": exporter_versions(),
            }
            model = store.register(name, out_dir, labels, metadata)
    print(
        f"registered {model.tag} (multi-vector x {embedding['dimensions']}, pages {pixels[0]}-{pixels[1]} pixels"
        f"{', RANDOM WEIGHTS' if loaded.random_weights else ''}; parity max relative error queries "
        f"{parity['parity_query_max_rel_err']:.2e}, pages {parity['parity_page_max_rel_err']:.2e}; transformers' "
        f"ColQwen2ForRetrieval (1-D positions) differs from the reference by up to "
        f"{parity['parity_page_vs_1d_positions_rel_err']:.2e})",
        flush=True,
    )
    return model


def run(args: argparse.Namespace) -> int:
    if args.min_pixels > args.max_pixels:
        print("error: --min-pixels must not exceed --max-pixels", file=sys.stderr)
        return 2
    export_colqwen2(args.source, args.name, (args.min_pixels, args.max_pixels),
                    max_tokens=args.max_tokens, revision=args.revision, opset=args.opset)
    return 0
