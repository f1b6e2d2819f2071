"""``python -m export onnx``: export one text encoder to ONNX, check parity, optionally fuse and
quantize it to int8 (behind the quality gate), and register it in the Bento model store."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import bentoml

from export import ExportError, quality, sources, store
from export.steps import Steps
from export.store import exporter_versions
from models.schema import Int8Spec
from models.store import sha256_of

STEPS = 5
TRT_TABLE_DIR = "tensorrt"  # a static int8 entry's TensorRT calibration table (of its fp32 graph)
TRT_BATCH = 16  # texts per padded batch when a TensorRT table is calibrated


def export_model(
    source: str,
    name: str,
    *,
    revision: str | None = None,
    pooling: str | None = None,
    normalize: bool | None = None,
    max_tokens: int | None = None,
    opset: int = 17,
    dimensions: int | None = None,
    fusions: bool = False,
    precision: str = "fp32",
    int8: Int8Spec | None = None,
    enforce_gate: bool = True,
    gate_set: quality.RetrievalSet | None = None,
    scan: int = 0,
) -> bentoml.Model:
    """Resolve ``source``, export it to ONNX, check parity and register it as ``name``.

    ``pooling``/``normalize``/``max_tokens`` left None come from the checkpoint's files;
    ``dimensions``, when given, must equal the model's hidden size. ``fusions``: fuse
    transformer ops (``ort_variants.fuse_transformer``); ``precision`` ``int8``: quantize as
    ``int8`` says (default: dynamic; ``export/calibration.py``) and pass the quality gate on
    ``gate_set`` (default the whole retrieval set; ``enforce_gate=False`` registers a failing
    graph anyway, with ``quality.passed`` false in its metadata: for speed measurements only).
    ``scan``: static int8 only: measure each MatMul's sensitivity and keep the ``scan`` most
    sensitive in fp32 besides ``int8.keep_fp32``. Raises ``ExportError`` (nothing is registered then).
    """
    store.check_tag(name)
    if precision not in ("fp32", "int8"):
        raise ExportError(f"precision {precision!r} is not fp32 or int8")
    int8 = int8 or Int8Spec()
    static = precision == "int8" and int8.quantization == "static"
    if scan and not static:
        raise ExportError("--scan measures static int8 (QDQ) layers; it needs static quantization")
    int8_steps = (4 + bool(scan)) if static else 2 if precision == "int8" else 0
    steps = Steps(STEPS + int(fusions) + int8_steps)
    with steps(f"resolving {source}"):
        resolved = sources.resolve(source, revision)
    with steps(f"loading {resolved.folder}"):
        from export import onnx_text

        settings = onnx_text.resolve_settings(resolved.folder, pooling, normalize, max_tokens)
        loaded = onnx_text.load(resolved.folder)
        onnx_text.check_settings(loaded, settings)
        if dimensions is not None and loaded.dimensions != dimensions:
            raise ExportError(f"the model has {loaded.dimensions} dimensions, the registry says {dimensions}")
    with tempfile.TemporaryDirectory(prefix="export-") as tmp:
        out_dir = Path(tmp) / "entry"
        out_dir.mkdir()
        with steps(f"exporting to ONNX (opset {opset})"):
            onnx_text.export_onnx(loaded, out_dir / "model.onnx", opset)
            onnx_text.stage_files(loaded, resolved.folder, out_dir)
            embedding = onnx_text.write_embedding_json(loaded, settings, out_dir)
        with steps("parity check: ONNX Runtime CPU vs PyTorch"):
            parity = onnx_text.check_parity(loaded, out_dir / "model.onnx", settings)
        variant: dict = {"precision": precision, "transformer_fusions": {}}
        if fusions or precision == "int8":
            fp32 = Path(tmp) / "fp32.onnx"
            (out_dir / "model.onnx").rename(fp32)
            current = fp32
        if fusions:
            with steps("fusing transformer ops, parity check again"):
                from export import ort_variants

                current = Path(tmp) / "fused.onnx"
                variant["transformer_fusions"] = ort_variants.fuse_transformer(
                    fp32, current, loaded.model.config.num_attention_heads, loaded.dimensions
                )
                parity = onnx_text.check_parity(loaded, current, settings)
        if precision == "int8":
            quantized = Path(tmp) / "int8.onnx"
            variant.update(quantize(steps, fp32, current, quantized, out_dir, settings, int8, scan))
            with steps(f"quality gate against fp32 on {(gate_set or quality.load_retrieval_set()).name}"):
                gate = quality.gate(fp32, quantized, out_dir / "tokenizer.json", settings.pooling, settings.normalize,
                                    settings.max_tokens, enforce=enforce_gate, rset=gate_set)
            variant["quality"] = gate.record()
            current = quantized
        if fusions or precision == "int8":
            current.rename(out_dir / "model.onnx")
        with steps(f"registering {name}"):
            labels = {"engine": "ort", "format": "onnx", "task": "embedding", "pooling": settings.pooling}
            metadata = {
                "source": source,
                "revision": resolved.revision or "unknown",
                "engine": "ort",
                "pooling": settings.pooling,
                "normalize": settings.normalize,
                "dimensions": embedding["dimensions"],
                "max_tokens": settings.max_tokens,
                "opset": opset,
                "onnx_sha256": sha256_of(out_dir / "model.onnx"),
                "parity_min_cosine": parity.min_cosine,
                "parity_max_abs_err": parity.max_abs_err,
                **variant,
                "exported_with": exporter_versions(),
            }
            model = store.register(name, out_dir, labels, metadata)
    print(
        f"registered {model.tag} ({embedding['dimensions']} dims, {settings.pooling} pooling, "
        f"normalize={settings.normalize}, max_tokens={settings.max_tokens}; parity min cosine "
        f"{parity.min_cosine:.6f}, max abs err {parity.max_abs_err:.2e}; {precision}"
        + (f" {int8.quantization}" if precision == "int8" else "")
        + (f", fused {sum(variant['transformer_fusions'].values())} ops" if fusions else "") + ")"
        + (f"\nquality gate {'passed' if gate.passed else 'FAILED: ' + '; '.join(gate.failures())}: {gate.summary()}"
           if precision == "int8" else ""),
        flush=True,
    )
    return model


def quantize(steps: Steps, fp32: Path, graph: Path, target: Path, entry: Path, settings, int8: Int8Spec,
             scan: int) -> dict:
    """Write the int8 graph of ``graph`` (the fp32 export ``fp32``, or its fused form) to ``target``
    as ``int8`` says; static int8 also writes the TensorRT calibration table of ``fp32`` into
    ``entry``/``TRT_TABLE_DIR``. Returns the store metadata of what was done: ``int8`` (the settings,
    with the scan's nodes added to ``keep_fp32``) and, for static, ``calibration``,
    ``sensitivity`` (when scanned) and ``tensorrt_table``."""
    from export import calibration

    if int8.quantization == "dynamic":
        with steps("int8 dynamic quantization"):
            calibration.quantize_dynamic(graph, target, int8)
        return {"int8": int8.model_dump(mode="json", exclude_none=True)}
    tokenizer, work = entry / "tokenizer.json", target.parent
    texts = calibration.load_texts(int8.calibration_set, int8.calibration_texts,
                                   exclude=set(quality.load_retrieval_set().texts))
    record: dict = {}
    started = time.perf_counter()
    names = calibration.input_names(fp32)
    with steps(f"calibrating on {len(texts)} texts ({int8.calibration}), the MatMuls' inputs"):
        feeds = calibration.Feeds(tokenizer, texts, settings.max_tokens, names)
        ranges = calibration.collect_ranges(graph, feeds, int8, work, all_tensors=False, progress=steps.progress)
    record["calibration"] = {"set": str(int8.calibration_set or calibration.CALIBRATION_SET.name),
                             "texts": len(texts), "texts_sha256": calibration.texts_sha256(texts),
                             "tensors": len(ranges.data), "seconds": round(time.perf_counter() - started, 1)}
    with steps(f"TensorRT INT8 calibration table: every tensor of the fp32 graph, {TRT_BATCH} texts per padded batch"):
        table = trt_table(fp32, tokenizer, texts, settings.max_tokens, int8, entry / TRT_TABLE_DIR, work, steps)
        record["tensorrt_table"] = {"folder": TRT_TABLE_DIR, "files": list(calibration.TRT_FILES),
                                    "tensors": len(table), "fp32_onnx_sha256": sha256_of(fp32)}
    if scan:
        with steps(f"sensitivity scan: each of {len(calibration.matmul_nodes(graph))} MatMuls quantized alone"):
            def embed(path: Path):
                return quality.embed(path, tokenizer, texts, settings.pooling, settings.normalize, settings.max_tokens)

            errors = calibration.sensitivity_scan(graph, ranges, int8, embed, work, progress=steps.progress)
        record["sensitivity"] = [[node, float(f"{error:.4g}")] for node, error in errors]
        kept = tuple(dict.fromkeys([*int8.keep_fp32, *(node for node, _ in errors[:scan])]))
        int8 = int8.model_copy(update={"keep_fp32": kept})
        print("sensitivity (mean 1 - cosine to fp32 on the calibration texts, that MatMul alone in int8):",
              *(f"  {error:.5f}  {node}{'  (kept fp32)' if node in kept else ''}" for node, error in errors),
              sep="\n", file=sys.stderr, flush=True)
    with steps(f"static int8 quantization (QDQ, {len(int8.keep_fp32)} MatMuls kept fp32)"):
        calibration.quantize_static(graph, ranges, target, int8)
    return {**record, "int8": int8.model_dump(mode="json", exclude_none=True)}


def trt_table(graph: Path, tokenizer: Path, texts: list[str], max_tokens: int, int8: Int8Spec, folder: Path,
              work: Path, steps: Steps) -> dict[str, float]:
    """Calibrate every tensor of the fp32 ``graph`` on ``texts`` in padded batches and write the
    TensorRT INT8 calibration table files into ``folder``; returns the range per tensor."""
    from export import calibration

    feeds = calibration.Feeds(tokenizer, texts, max_tokens, calibration.input_names(graph), batch=TRT_BATCH)
    ranges = calibration.collect_ranges(graph, feeds, int8, work, all_tensors=True, progress=steps.progress)
    left_out = calibration.constant_tensors(graph) | calibration.mask_tensors(graph)
    return calibration.write_trt_table(ranges, folder, leave_out=left_out)


def run(args: argparse.Namespace) -> int:
    export_model(args.source, args.name, revision=args.revision, pooling=args.pooling, normalize=args.normalize,
                 max_tokens=args.max_tokens, opset=args.opset, fusions=args.fusions, precision=args.precision,
                 enforce_gate=args.gate == "enforce")
    return 0
