"""``python -m export calibrate``: static int8 (QDQ) calibrated on a text set with its TensorRT
INT8 calibration table and the quality gate, for a checkpoint (``--source``) or a registry model
(``--model``), whose TensorRT provider may only need its table."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from export import ExportError, quality
from export.commands.onnx import TRT_BATCH, export_model, trt_table
from export.steps import Steps
from models.schema import Int8Spec
from models.store import open_entry


def run(args: argparse.Namespace) -> int:
    """The ``calibrate`` command (``ExportError`` propagates to ``main``)."""
    from pydantic import ValidationError

    gate_set = quality.load_retrieval_set()
    if args.gate_set == "quick":
        gate_set = gate_set.subset(*quality.QUICK_GATE)
    if args.scan < 0:
        print("error: --scan is a count of MatMuls (>= 0)", file=sys.stderr)
        return 2
    if args.model:
        calibrate_registry_model(args.model, args.profile, args.scan, args.gate == "enforce", gate_set)
        return 0
    if not args.name:
        print("error: --source needs --name", file=sys.stderr)
        return 2
    try:
        int8 = Int8Spec(quantization="static", calibration=args.method, percentile=args.percentile,
                        calibration_texts=args.texts, calibration_set=args.calibration_set,
                        per_channel=args.per_channel, keep_fp32=tuple(args.keep_fp32))
    except ValidationError as exc:
        print(f"error: {exc.errors()[0]['loc'][0]}: {exc.errors()[0]['msg']}", file=sys.stderr)
        return 2
    export_model(args.source, args.name, revision=args.revision, pooling=args.pooling, normalize=args.normalize,
                 max_tokens=args.max_tokens, fusions=args.fusions, precision="int8", int8=int8,
                 enforce_gate=args.gate == "enforce", gate_set=gate_set, scan=args.scan)
    return 0


def calibrate_registry_model(name: str, profile: str | None, scan: int, enforce_gate: bool,
                             gate_set: quality.RetrievalSet | None) -> None:
    """``calibrate --model``: a static int8 registry model is exported again as the registry says
    (a new store version); a TensorRT model with ``trt_int8_enable`` gets its calibration table,
    computed from its fp32 store entry, where its provider options say. ``ExportError`` otherwise."""
    from export import calibration
    from models.registry import RegistryError, served
    from models.schema import Engine

    try:
        spec = served(profile).find(name)
    except RegistryError as exc:
        raise ExportError(str(exc)) from None
    if spec is None or spec.engine is not Engine.ORT or spec.vision is not None:
        raise ExportError(f"model {name!r} is no ONNX Runtime text encoder of profile {profile or 'cpu'}")
    table = calibration.trt_int8_table(spec)
    static = spec.ort.precision == "int8" and spec.ort.int8.quantization == "static"
    if not static and table is None:
        raise ExportError(f"model {name!r} has neither `ort: {{precision: int8, int8: {{quantization: static}}}}` "
                          "nor a tensorrt provider with trt_int8_enable: nothing to calibrate")
    if static:
        if not spec.source:
            raise ExportError(f"model {name!r}: the registry gives no source")
        export_model(spec.source, spec.store_tag.split(":")[0], revision=spec.revision,
                     pooling=spec.pooling.value, normalize=spec.normalize, max_tokens=spec.max_tokens,
                     dimensions=spec.dimensions, fusions=spec.ort.transformer_fusions, precision="int8",
                     int8=spec.ort.int8, enforce_gate=enforce_gate, gate_set=gate_set, scan=scan)
    if table is not None:
        entry = open_entry(spec, required=("model.onnx", "tokenizer.json"))
        int8 = spec.ort.int8
        texts = calibration.load_texts(int8.calibration_set, int8.calibration_texts,
                                       exclude=set(quality.load_retrieval_set().texts))
        steps = Steps(2)
        with tempfile.TemporaryDirectory(prefix="calibrate-") as tmp:
            with steps(f"calibrating every tensor of {entry.tag} on {len(texts)} texts ({int8.calibration}), "
                       f"{TRT_BATCH} per padded batch"):
                written = trt_table(entry.file("model.onnx"), entry.file("tokenizer.json"), texts, spec.max_tokens,
                                    int8, Path(tmp) / "table", Path(tmp), steps)
            with steps(f"writing the TensorRT INT8 calibration table {table}"):
                calibration.copy_trt_table(Path(tmp) / "table", table)
        print(f"wrote {table}: dynamic ranges of {len(written)} tensors of {entry.tag} "
              f"(model.onnx sha256 {entry.metadata.get('onnx_sha256', '?')[:12]}...)", flush=True)

