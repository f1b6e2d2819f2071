"""Command line: ``python -m export {onnx,ensure,list}``.

- ``onnx --source SRC --name NAME [--pooling mean|cls|last] [--normalize/--no-normalize]
  [--max-tokens N] [--opset 17] [--revision R] [--fusions] [--precision fp32|int8]``: export one
  text encoder and register it. Unset options come from the checkpoint
  (``onnx_text.resolve_settings``). ``--fusions`` fuses transformer ops offline (parity-checked
  like the plain graph); ``--precision int8`` quantizes the graph and registers it only if it
  passes the quality gate against fp32 (``export/quality.py``).
- ``vllm --source SRC --name NAME [--pooling ...] [--normalize/--no-normalize] [--max-tokens N]
  [--revision R]``: import a Hugging Face checkpoint as it is for the vLLM runner (no
  conversion; ``export/vllm_files.py``) and register it with its source and revision.
- ``colqwen2 --source SRC --name NAME --min-pixels N --max-pixels N [--max-tokens N]``:
  export a ColQwen2 checkpoint (``hf:vidore/colqwen2-v1.0-hf``, a folder, or
  ``random:colqwen2-tiny``) as a vision-encoder graph and one language-model graph for queries
  and pages (``export/colqwen2.py``); pages are served between the given areas (the
  checkpoint's processor must say the same).
- ``calibrate --source SRC --name NAME [--method minmax|entropy|percentile] [--texts N]
  [--calibration-set FILE.jsonl] [--keep-fp32 NODE ...] [--scan K] [--fusions] [--gate-set full|quick]``:
  static int8 (QDQ) calibrated on texts kept apart from the quality gate's, the most sensitive
  MatMuls kept fp32 (``--scan``: measured one by one), the TensorRT INT8 calibration table of the
  fp32 graph in the entry (``tensorrt/``), and the quality gate (``export/calibration.py``,
  ``export/quality.py``). ``calibrate --model NAME [--profile P]``: the same for a registry model
  with ``ort.int8.quantization: static``, or, for one whose TensorRT provider sets
  ``trt_int8_enable``, its calibration table where the provider reads it.
- ``ensure [--profile NAME]``: import every ``ort`` and ``vllm`` model the registry profile loads
  (its variants too) that the store lacks, with the registry's settings: a pinned one must come
  out as its pinned content, else ``ensure`` fails naming the difference; present ones are checked
  as the runners will check them at start-up (files, ONNX sha256, dimensions) and otherwise skipped.
- ``pin [MODEL ...] [--profile P] [--version V]``: pin models by content in the registry's lock
  (``registry.lock``; ``export/pins.py``): without names, every model the profile loads that is not
  pinned yet, to the version it serves now; a named one to ``--version`` or its latest version.
- ``list [--profile P] [--json]``: the store's entries by name: content digest, source, parity and
  quality figures, which registry models pin each and as which served name/variant it is served.

This module only parses and dispatches: each command is ``run(args)`` of its module in
``export/commands/`` (``list``: ``listing.py``).

Progress lines (``[2/5] loading model ... (3.1 s)``) go to stderr, results to stdout.
Exit status: 0 done, 1 an export failed (the message says which and why), 2 bad usage.
"""

from __future__ import annotations

import argparse
import sys

from export import ExportError, quality
from export.commands import calibrate, colqwen2, ensure, listing, onnx, pin, vllm

QUICK_QUERIES = quality.QUICK_GATE[0]
COMMANDS = {"onnx": onnx.run, "vllm": vllm.run, "colqwen2": colqwen2.run, "calibrate": calibrate.run,
            "ensure": ensure.run, "pin": pin.run, "list": listing.run}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m export", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    onnx_cmd = commands.add_parser("onnx", help="export one Hugging Face text encoder to ONNX and register it")
    onnx_cmd.add_argument("--source", required=True, help="package:<python package>, hf:<hub id> or a folder")
    onnx_cmd.add_argument("--name", required=True, help="store name (name or name:version)")
    onnx_cmd.add_argument("--pooling", choices=("mean", "cls", "last"), help="default: from the checkpoint")
    onnx_cmd.add_argument(
        "--normalize", action=argparse.BooleanOptionalAction, help="default: from the checkpoint"
    )
    onnx_cmd.add_argument("--max-tokens", type=_positive_int, help="default: from the checkpoint")
    onnx_cmd.add_argument("--opset", type=_positive_int, default=17)
    onnx_cmd.add_argument("--revision", help="hub revision, package version, or a label for a folder")
    onnx_cmd.add_argument("--fusions", action="store_true", help="fuse transformer ops (onnxruntime.transformers)")
    onnx_cmd.add_argument("--precision", choices=("fp32", "int8"), default="fp32",
                      help="int8: dynamic quantization, registered only if it passes the quality gate")
    onnx_cmd.add_argument("--gate", choices=("enforce", "report"), default="enforce",
                      help="report: register an int8 graph that fails the quality gate anyway, marked "
                      "quality.passed=false (for speed measurements only)")

    vllm_cmd = commands.add_parser("vllm", help="import one Hugging Face checkpoint for the vLLM runner")
    vllm_cmd.add_argument("--source", required=True, help="package:<python package>, hf:<hub id> or a folder")
    vllm_cmd.add_argument("--name", required=True, help="store name (name or name:version)")
    vllm_cmd.add_argument("--pooling", choices=("mean", "cls", "last"), help="default: from the checkpoint")
    vllm_cmd.add_argument("--normalize", action=argparse.BooleanOptionalAction, help="default: from the checkpoint")
    vllm_cmd.add_argument("--max-tokens", type=_positive_int, help="default: from the checkpoint")
    vllm_cmd.add_argument("--revision", help="hub revision, package version, or a label for a folder")
    vllm_cmd.add_argument(
        "--encoder-only", action="store_true",
        help="keep only the base encoder of a masked-LM checkpoint (served with architectures: [BertModel])",
    )

    cal = commands.add_parser(
        "calibrate", help="static int8 (QDQ) calibrated on a text set, its TensorRT INT8 calibration table, the gate")
    target = cal.add_mutually_exclusive_group(required=True)
    target.add_argument("--model", help="a registry model: a static int8 one is exported again as the registry says; "
                        "a TensorRT one with trt_int8_enable gets its calibration table")
    target.add_argument("--source", help="package:<python package>, hf:<hub id> or a folder (with --name)")
    cal.add_argument("--profile", help="with --model: the registry profile (default: $EMBED_PROFILE or cpu)")
    cal.add_argument("--name", help="with --source: store name (name or name:version)")
    cal.add_argument("--pooling", choices=("mean", "cls", "last"), help="default: from the checkpoint")
    cal.add_argument("--normalize", action=argparse.BooleanOptionalAction, help="default: from the checkpoint")
    cal.add_argument("--max-tokens", type=_positive_int, help="default: from the checkpoint")
    cal.add_argument("--revision", help="hub revision, package version, or a label for a folder")
    cal.add_argument("--fusions", action="store_true", help="quantize the fused graph (onnxruntime.transformers)")
    cal.add_argument("--method", choices=("minmax", "entropy", "percentile"), default="minmax",
                     help="how activation ranges are computed from the calibration texts")
    cal.add_argument("--percentile", type=float, default=99.999, help="with --method percentile")
    cal.add_argument("--texts", type=_positive_int, default=128, help="calibration texts (the set's first N)")
    cal.add_argument("--calibration-set", help="a JSONL file of {\"text\": ...} rows (default: the project's "
                     "corpora/calibration.jsonl)")
    cal.add_argument("--per-channel", action=argparse.BooleanOptionalAction, default=True,
                     help="one weight scale per output channel")
    cal.add_argument("--keep-fp32", action="append", default=[], metavar="NODE",
                     help="a MatMul node left in fp32; repeat")
    cal.add_argument("--scan", type=int, default=0, metavar="K",
                     help="measure each MatMul's sensitivity and keep the K most sensitive in fp32 too")
    cal.add_argument("--gate", choices=("enforce", "report"), default="enforce",
                     help="report: register a graph that fails the quality gate anyway, marked quality.passed=false")
    cal.add_argument("--gate-set", choices=("full", "quick"), default="full",
                     help=f"full: the whole retrieval set (as ensure); quick: its first {QUICK_QUERIES} queries, "
                     "for trying settings")

    ensure_cmd = commands.add_parser("ensure", help="import the profile's ort and vllm models missing from the store")
    ensure_cmd.add_argument("--profile", help="registry profile (default: $EMBED_PROFILE or cpu)")

    col = commands.add_parser("colqwen2", help="export a ColQwen2 checkpoint (vision encoder + language model)")
    col.add_argument("--source", required=True, help="hf:vidore/colqwen2-v1.0-hf, a folder, or random:colqwen2-tiny")
    col.add_argument("--name", required=True, help="store name (name or name:version)")
    col.add_argument("--min-pixels", type=_positive_int, required=True,
                     help="smallest page area after resizing (the processor's size.shortest_edge)")
    col.add_argument("--max-pixels", type=_positive_int, required=True,
                     help="largest page area after resizing (the processor's size.longest_edge)")
    col.add_argument("--max-tokens", type=_positive_int, default=768, help="query token limit")
    col.add_argument("--opset", type=_positive_int, default=17)
    col.add_argument("--revision", help="hub revision, or a label for a folder")

    pin_cmd = commands.add_parser("pin", help="pin models by content in the registry's lock (registry.lock)")
    pin_cmd.add_argument("models", nargs="*", help="registry models to pin (again); default: every model the "
                         "profile's runners load that is not pinned yet")
    pin_cmd.add_argument("--profile", help="registry profile (default: $EMBED_PROFILE or cpu)")
    pin_cmd.add_argument("--version", help="the store version to pin (one model); default: the latest")

    list_cmd = commands.add_parser("list", help="show the store's entries: versions, content, source, parity, "
                                   "quality, and which are pinned and served")
    list_cmd.add_argument("--profile", help="the profile whose served versions are marked (default: $EMBED_PROFILE "
                          "or cpu)")
    list_cmd.add_argument("--json", action="store_true", help="one JSON array with paths and metadata")
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except ExportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
