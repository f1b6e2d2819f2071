"""``python -m export vllm``: register a Hugging Face checkpoint as it is for the vLLM runner."""

from __future__ import annotations

import argparse
import importlib.metadata
import tempfile
from pathlib import Path

import bentoml

from export import ExportError, sources, store
from export.steps import Steps
from models.store import sha256_of


def import_vllm(
    source: str,
    name: str,
    *,
    revision: str | None = None,
    pooling: str | None = None,
    normalize: bool | None = None,
    max_tokens: int | None = None,
    dimensions: int | None = None,
    encoder_only: bool = False,
) -> bentoml.Model:
    """Resolve ``source`` and register its checkpoint files for the vLLM runner as ``name``.

    Unset ``pooling``/``normalize``/``max_tokens`` come from the checkpoint's files as for ONNX
    exports; ``dimensions``, when given, must equal the config's hidden size; ``encoder_only``
    keeps only the base encoder of a masked-LM checkpoint (``vllm_files.write_encoder_weights``).
    Raises ``ExportError`` (nothing is registered then)."""
    from export import vllm_files
    from export.onnx_text import POOLINGS, resolve_settings

    store.check_tag(name)
    steps = Steps(3)
    with steps(f"resolving {source}"):
        resolved = sources.resolve(source, revision)
        settings = resolve_settings(resolved.folder, pooling, normalize, max_tokens)
        if settings.pooling not in POOLINGS:
            raise ExportError(f"pooling {settings.pooling!r} is not one of {', '.join(POOLINGS)}")
    with tempfile.TemporaryDirectory(prefix="import-") as tmp:
        out_dir = Path(tmp)
        with steps("staging the checkpoint, tokenizer and embedding.json"):
            embedding = vllm_files.stage(resolved.folder, settings, out_dir, encoder_only)
            if dimensions is not None and embedding["dimensions"] != dimensions:
                raise ExportError(f"the model has {embedding['dimensions']} dimensions, the registry says {dimensions}")
        with steps(f"registering {name}"):
            labels = {"engine": "vllm", "format": "hf", "task": "embedding", "pooling": settings.pooling}
            metadata = {
                "source": source,
                "revision": resolved.revision or "unknown",
                "engine": "vllm",
                "pooling": settings.pooling,
                "normalize": settings.normalize,
                "dimensions": embedding["dimensions"],
                "max_tokens": settings.max_tokens,
                "encoder_only": encoder_only,
                "weights": {p.name: sha256_of(p) for p in vllm_files.weight_files(out_dir)},
                "imported_with": {dist: importlib.metadata.version(dist) for dist in ("transformers", "tokenizers")},
            }
            model = store.register(name, out_dir, labels, metadata)
    print(
        f"registered {model.tag} for vllm ({embedding['dimensions']} dims, {settings.pooling} pooling, "
        f"normalize={settings.normalize}, max_tokens={settings.max_tokens}; revision {metadata['revision']})",
        flush=True,
    )
    return model


def run(args: argparse.Namespace) -> int:
    import_vllm(args.source, args.name, revision=args.revision, pooling=args.pooling, normalize=args.normalize,
                max_tokens=args.max_tokens, encoder_only=args.encoder_only)
    return 0
