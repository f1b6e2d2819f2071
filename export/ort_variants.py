"""Faster variants of an exported fp32 graph: transformer fusions and int8 quantization.

Both keep the ONNX contract of ``export/onnx_text.py`` (same inputs, ``last_hidden_state``
float32 out), so the runner loads any variant the same way.

- ``fuse_transformer``: ``onnxruntime.transformers.optimizer`` (model type ``bert``) rewrites the
  eager-attention graph into fused ``Attention``, ``SkipLayerNormalization``,
  ``EmbedLayerNormalization`` and ``BiasGelu`` nodes. Still fp32; parity with PyTorch is checked
  by the caller as for the plain export.
- ``quantize_int8``: ONNX Runtime dynamic quantization: int8 weights (per output channel), uint8
  activations quantized per call. On x86 with AVX512-VNNI (or AVX-VNNI) ONNX Runtime runs these
  u8s8 matrix products with the VNNI dot-product instructions. Its quality against fp32 is checked
  by ``export/quality.py`` before the variant is registered.
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


def quantize_int8(source: Path, target: Path) -> None:
    """Write the dynamically quantized (int8 weights, uint8 activations) graph of ``source``."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.getLogger("root").setLevel(logging.ERROR)  # the quantizer logs a warning per node
    quantize_dynamic(
        str(source), str(target), per_channel=True, weight_type=QuantType.QInt8,
        # fused contrib ops (Attention, SkipLayerNormalization) have no ONNX shape inference:
        # their outputs are float32
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )
