"""A faster variant of an exported fp32 graph: transformer fusions (int8: ``export/calibration.py``).

It keeps the ONNX contract of ``export/onnx_text.py`` (same inputs, ``last_hidden_state``
float32 out), so the runner loads it the same way.

- ``fuse_transformer``: ``onnxruntime.transformers.optimizer`` (model type ``bert``) rewrites the
  eager-attention graph into fused ``Attention``, ``SkipLayerNormalization``,
  ``EmbedLayerNormalization`` and ``BiasGelu`` nodes. Still fp32; parity with PyTorch is checked
  by the caller as for the plain export.
"""

from __future__ import annotations

import logging
from pathlib import Path

from export import ExportError


def fuse_transformer(source: Path, target: Path, num_heads: int, hidden_size: int) -> dict[str, int]:
    """Write the fused graph of ``source`` to ``target``; returns the count of each fused op
    (``Attention``, ``SkipLayerNormalization``, ...). ``ExportError`` when nothing fused (the
    optimizer did not recognise the graph: a fused variant would be the plain one, mislabelled)."""
    from onnxruntime.transformers.optimizer import optimize_model

    logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)
    model = optimize_model(
        str(source), model_type="bert", num_heads=num_heads, hidden_size=hidden_size, opt_level=0
    )
    fused = {op: n for op, n in model.get_fused_operator_statistics().items() if n}
    if not fused.get("Attention"):
        raise ExportError(f"the transformer optimizer fused no attention in {source.name} (fused: {fused})")
    model.save_model_to_file(str(target))
    return fused
