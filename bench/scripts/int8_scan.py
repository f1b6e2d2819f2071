"""Which int8 graph of all-MiniLM-L6-v2 keeps fp32's retrieval, and at what speed?

    python -m bench.scripts.int8_scan [--seconds 1.0] [--rounds 3] [--out bench/results/int8_scan.json]

Two families of ONNX Runtime int8, each checked with the quality gate's own code
(``export/quality.py``: mean cosine to fp32, share of queries with the same top-10 set) and timed
with the runner's own ``OrtEngine`` (``bench/inprocess.py``) on 32 short queries and 32 128-token
passages per call, variants interleaved round by round (median of the rounds):

- dynamic int8 (``quantize_dynamic``: int8 weights per output channel, one uint8 scale per
  activation tensor per call; the registry's ``int8``), whole graph and with one kind of MatMul
  kept fp32 at a time (a per-layer-kind sensitivity scan);
- block-wise int8 (``MatMulNBits``, 8 bits, ``accuracy_level`` 4: weights and activations
  quantized per block of ``block`` values along the inner dimension, int8 dot products).

Prints a markdown table; docs/benchmarks.md quotes it.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import statistics
import tempfile
from dataclasses import asdict
from pathlib import Path

from bench.common import ROOT, load_sets, log, machine

# written before the first run of this script
PREDICTED = (
    "dynamic int8: ~2x fp32, same top-10 30-40% whatever one kind of MatMul is kept fp32 (the error "
    "comes from every layer's per-tensor activation scale); block-wise int8: mean cosine >= 0.999 and "
    "same top-10 >= 90%, at 1.3-2x fp32"
)
MATMUL_KINDS = {  # patterns of the exported graph's MatMul node names
    "Q, K, V projections": r"/attention/self/(query|key|value)/",
    "attention output": r"/attention/output/dense/",
    "FFN up-projection": r"/intermediate/dense/",
    "FFN down-projection": r"/layer\.\d+/output/dense/",
}


def build(fp32: Path, folder: Path) -> dict[str, Path]:
    """``model.onnx`` of every variant under ``folder``/<name>/, by variant name."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    logging.getLogger("root").setLevel(logging.ERROR)
    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.ERROR)
    matmuls = [n.name for n in onnx.load(str(fp32)).graph.node if n.op_type == "MatMul"]
    paths = {"fp32": fp32}

    def target(name: str) -> Path:
        (folder / name).mkdir(parents=True, exist_ok=True)
        return paths.setdefault(name, folder / name / "model.onnx")

    for name, kept in [("dynamic int8", None),
                       *((f"dynamic int8, {kind} fp32", p) for kind, p in MATMUL_KINDS.items())]:
        log(f"building {name}")
        excluded = [m for m in matmuls if kept and re.search(kept, m)]
        quantize_dynamic(str(fp32), str(target(name)), per_channel=True, weight_type=QuantType.QInt8,
                         nodes_to_exclude=excluded)
    for block in (32, 128):
        name = f"block-wise int8, block {block}"
        log(f"building {name}")
        config = DefaultWeightOnlyQuantConfig(block_size=block, is_symmetric=True, accuracy_level=4, bits=8)
        quantizer = MatMulNBitsQuantizer(onnx.load(str(fp32)), algo_config=config)
        quantizer.process()
        quantizer.model.save_model_to_file(str(target(name)), use_external_data_format=False)
    return paths


def run(seconds: float, rounds: int) -> dict:
    from bench import inprocess
    from export import quality
    from models.registry import served
    from models.store import open_entry

    spec = served("cpu").find("all-MiniLM-L6-v2")
    entry = open_entry(spec, required=("model.onnx", "tokenizer.json"))
    with tempfile.TemporaryDirectory() as tmp:
        paths = build(entry.file("model.onnx"), Path(tmp))
        passages, queries = quality.load_retrieval_set()
        args = (entry.file("tokenizer.json"), passages + queries, spec.pooling.value, spec.normalize, spec.max_tokens)
        reference = quality.embed(paths["fp32"], *args)
        rows = {name: {} for name in paths}
        for name, path in paths.items():
            if name != "fp32":
                log(f"quality: {name}")
                rows[name]["quality"] = asdict(quality.compare(reference, quality.embed(path, *args), len(passages)))
        sets = load_sets()
        cases = {"query x32": inprocess.tokenize(sets["query"][:256]),
                 "p128 x32": inprocess.tokenize(sets["p128"][:256])}
        engines = {name: inprocess.engine_for(path) for name, path in paths.items()}
        samples = {name: {case: [] for case in cases} for name in paths}
        for r in range(rounds):
            for name, engine in engines.items():
                log(f"round {r + 1}/{rounds}: {name}")
                for case, inputs in cases.items():
                    samples[name][case].append(inprocess.bare(engine, inputs, 32, seconds).inputs_per_s)
    for name in paths:
        rows[name]["inputs_per_s"] = {case: statistics.median(v) for case, v in samples[name].items()}
    return {"machine": machine(), "rounds": rounds, "seconds": seconds, "predicted": PREDICTED, "variants": rows}


def markdown(result: dict) -> str:
    base = result["variants"]["fp32"]["inputs_per_s"]
    lines = ["| graph | mean cosine to fp32 | min cosine | same top-10 set | mean top-10 overlap | "
             "queries x32 (vs fp32) | 128-token passages x32 (vs fp32) |", "|---|---|---|---|---|---|---|"]
    for name, row in result["variants"].items():
        q = row.get("quality")
        cells = ([f"{q['mean_cosine']:.5f}", f"{q['min_cosine']:.5f}", f"{q['same_top10']:.0%}",
                  f"{q['top10_overlap']:.1%}"] if q else ["1", "1", "100%", "100%"])
        speed = [f"{row['inputs_per_s'][c]:,.0f}/s ({row['inputs_per_s'][c] / base[c]:.2f}x)"
                 for c in ("query x32", "p128 x32")]
        lines.append(f"| {name} | " + " | ".join(cells + speed) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="timed seconds per case and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "int8_scan.json")
    args = parser.parse_args(argv)
    result = run(args.seconds, args.rounds)
    args.out.write_text(json.dumps(result, indent=2))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
