"""Which int8 graph of all-MiniLM-L6-v2 keeps fp32's retrieval quality, and at what speed?

    python -m bench.scripts.int8_scan [--rounds 30] [--texts 128] [--keep 3 6 9 12]
                                      [--gate-set full|quick] [--out bench/results/int8_scan.json]

The full sensitivity scan and the full quality gate (``make bench`` runs it; docs/benchmarks.md):

1. calibration (``export/calibration.py``) on the first ``--texts`` texts of
   ``corpora/calibration.jsonl`` by min-max, entropy and percentile (each timed);
2. the per-layer sensitivity scan: each MatMul quantized alone (static, percentile ranges), the
   mean 1 - cosine to fp32 on the calibration texts;
3. the variants: dynamic int8 (the registry's earlier int8), dynamic with the FFN
   down-projections kept fp32 (the best of the earlier scan), static int8 by each calibration
   method, static int8 with the ``--keep`` most sensitive MatMuls kept fp32, and one with the
   second-largest count of them in block-wise int8 instead of fp32;
4. each variant through the full quality gate (``export/quality.py``: nDCG@10 and MRR@10 against
   fp32 with 95% bootstrap intervals, top-10 overlap, cosine) and timed with the runner's own
   engine (``bench/inprocess.py``) on 32 short queries and 32 128-token passages per call: in
   each round fp32 and every variant make one call on the same inputs, one after the other; a
   variant's speed is the median over rounds of fp32's call time / its call time in the same round.

A variant qualifies for the ``cpu`` profile when it passes the gate and is >= 1.8x fp32 on both
cases. Prints a markdown table; ``bench/report.py`` puts it in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from bench.common import ROOT, load_sets, log, machine, write_json

CASES = ("query x32", "p128 x32")
MIN_SPEEDUP = 1.8
FFN_DOWN = r"/layer\.\d+/output/dense/MatMul$"  # the FFN down-projections (GELU outputs in: the widest ranges)
SCAN_METHOD = "percentile"
BLOCK = 128  # block-wise int8: block size (32 was slower and no better, 2026-12-01)


def variants(nodes: list[str], scanned: list[tuple[str, float]], keep_counts: list[int]) -> dict[str, tuple]:
    """Variant name -> (what it is, ``Int8Spec`` fields)."""
    ffn_down = tuple(n for n in nodes if re.search(FFN_DOWN, n))
    out = {
        "dynamic": ("dynamic int8 of every MatMul (the registry's int8 before calibration)", {}),
        "dynamic, FFN down fp32": ("dynamic int8, the 6 FFN down-projections fp32", {"keep_fp32": ffn_down}),
    }
    for method in ("minmax", "entropy", "percentile"):
        out[f"static {method}"] = (f"static QDQ, {method} ranges, every MatMul",
                                   {"quantization": "static", "calibration": method})
    for k in keep_counts:
        kept = tuple(node for node, _ in scanned[:k])
        out[f"static {SCAN_METHOD}, {k} most sensitive fp32"] = (
            f"static QDQ, {SCAN_METHOD} ranges, the scan's {k} most sensitive MatMuls fp32",
            {"quantization": "static", "calibration": SCAN_METHOD, "keep_fp32": kept})
    k = keep_counts[-2] if len(keep_counts) > 1 else keep_counts[0]
    out[f"static {SCAN_METHOD}, {k} most sensitive block-wise int8"] = (
        f"as the row with {k} fp32, those {k} in ONNX Runtime's block-wise int8 instead (MatMulNBits, 8 bits, "
        f"blocks of {BLOCK}, accuracy level 4: a scale per block of weights and of activations)",
        {"quantization": "static", "calibration": SCAN_METHOD, "keep_fp32": tuple(n for n, _ in scanned[:k])})
    return out


def blockwise(graph: Path, nodes: tuple[str, ...], target: Path) -> None:
    """Rewrite the fp32 MatMuls ``nodes`` of ``graph`` as block-wise int8 ``MatMulNBits``."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    config = DefaultWeightOnlyQuantConfig(block_size=BLOCK, is_symmetric=True, accuracy_level=4, bits=8)
    quantizer = MatMulNBitsQuantizer(onnx.load(str(graph)), nodes_to_include=list(nodes), algo_config=config)
    quantizer.process()
    quantizer.model.save_model_to_file(str(target), use_external_data_format=False)


def interleaved_calls(engines: dict, cases: dict[str, list], rounds: int) -> dict[str, dict[str, list[float]]]:
    """Seconds of each engine's calls of 32 inputs, per case: in each round every engine makes one
    call on the same 32 inputs (the next 32 of the case in the next round), in an order that
    rotates by round, so that fp32 and each variant run seconds apart and the machine's load
    (other jobs on a shared machine) hits them alike. One warm-up call each first."""
    names = list(engines)
    for engine in engines.values():
        for inputs in cases.values():
            engine.embed(inputs[:32])
    seconds = {name: {case: [] for case in cases} for name in names}
    for r in range(rounds):
        if r % 10 == 0:
            log(f"speed: round {r + 1}/{rounds}")
        for case, inputs in cases.items():
            chunk = [inputs[(32 * r + j) % len(inputs)] for j in range(32)]
            for name in names[r % len(names):] + names[: r % len(names)]:
                started = time.perf_counter()
                engines[name].embed(chunk)
                seconds[name][case].append(time.perf_counter() - started)
    return seconds


def run(args) -> dict:
    from bench import inprocess
    from export import calibration, quality
    from models.registry import served
    from models.schema import Int8Spec
    from models.store import open_entry

    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    spec = served("cpu").find("all-MiniLM-L6-v2")
    entry = open_entry(spec, required=("model.onnx", "tokenizer.json"))
    tokenizer = entry.file("tokenizer.json")
    rset = quality.load_retrieval_set()
    if args.gate_set == "quick":
        rset = rset.subset(*quality.QUICK_GATE)
    texts = calibration.load_texts(None, args.texts, exclude=set(quality.load_retrieval_set().texts))

    def embed(path: Path, which: list[str]):
        return quality.embed(path, tokenizer, which, spec.pooling.value, spec.normalize, spec.max_tokens)

    with tempfile.TemporaryDirectory(prefix="int8-scan-") as tmp:
        work = Path(tmp)
        fp32 = work / "fp32" / "model.onnx"
        fp32.parent.mkdir()
        shutil.copy2(entry.file("model.onnx"), fp32)
        feeds = calibration.Feeds(tokenizer, texts, spec.max_tokens, calibration.input_names(fp32))
        ranges, calibration_seconds = {}, {}
        for method in ("minmax", "entropy", "percentile"):
            log(f"calibrating: {method} on {len(texts)} texts")
            t0 = time.perf_counter()
            ranges[method] = calibration.collect_ranges(fp32, feeds, Int8Spec(calibration=method), work,
                                                        all_tensors=False)
            calibration_seconds[method] = time.perf_counter() - t0
        nodes = calibration.matmul_nodes(fp32)
        log(f"sensitivity scan: {len(nodes)} MatMuls, one at a time")
        scanned = calibration.sensitivity_scan(
            fp32, ranges[SCAN_METHOD], Int8Spec(quantization="static", calibration=SCAN_METHOD),
            lambda path: embed(path, texts), work, progress=lambda done, total: log(f"  scanned {done}/{total}"))
        chosen = variants(nodes, scanned, args.keep)
        paths = {"fp32": fp32}
        for name, (_, fields) in chosen.items():
            log(f"building: {name}")
            int8 = Int8Spec(**fields)
            path = work / re.sub(r"\W+", "-", name) / "model.onnx"
            path.parent.mkdir()
            if int8.quantization == "static":
                calibration.quantize_static(fp32, ranges[int8.calibration], path, int8)
            else:
                calibration.quantize_dynamic(fp32, path, int8)
            if "block-wise" in name:
                blockwise(path, int8.keep_fp32, path)
            paths[name] = path

        log(f"quality gate: fp32 reference on {rset.name}")
        reference = embed(fp32, rset.texts)
        rows: dict[str, dict] = {"fp32": {"how": "the fp32 export (the `cpu` profile's all-MiniLM-L6-v2)"}}
        for name, (how, fields) in chosen.items():
            log(f"quality gate: {name}")
            gate = quality.compare(reference, embed(paths[name], rset.texts), rset)
            rows[name] = {"how": how, "int8": Int8Spec(**fields).model_dump(mode="json", exclude_none=True),
                          "quality": gate.record(), "why_not": gate.failures()}
        rows["fp32"]["quality_fp32"] = {"ndcg10": gate.ndcg10_fp32, "mrr10": gate.mrr10_fp32,
                                        "queries": len(rset.queries), "passages": len(rset.passages)}

        sets = load_sets()
        cases = {"query x32": inprocess.tokenize(sets["query"][:256]),
                 "p128 x32": inprocess.tokenize(sets["p128"][:256])}
        engines = {name: inprocess.engine_for(path) for name, path in paths.items()}
        call_seconds = interleaved_calls(engines, cases, args.rounds)
    for name in rows:
        rows[name]["speed"] = {}
        for case in CASES:
            ratios = [f / v for v, f in zip(call_seconds[name][case], call_seconds["fp32"][case], strict=True)]
            rows[name]["speed"][case] = {"inputs_per_s": 32 / statistics.median(call_seconds[name][case]),
                                         "ratio": statistics.median(ratios),
                                         "ratio_quartiles": [round(q, 3) for q in statistics.quantiles(ratios, n=4)]}
        if name != "fp32":
            slow = [f"{case} {rows[name]['speed'][case]['ratio']:.2f}x fp32 (needs >= {MIN_SPEEDUP}x)"
                    for case in CASES if rows[name]["speed"][case]["ratio"] < MIN_SPEEDUP]
            rows[name]["why_not"] += slow
            rows[name]["qualifies"] = not rows[name]["why_not"]
    return {"machine": machine(), "started": started, "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "rounds": args.rounds, "calibration_texts": len(texts),
            "calibration_seconds": {m: round(s, 1) for m, s in calibration_seconds.items()}, "retrieval_set": rset.name,
            "scan_method": SCAN_METHOD, "sensitivity": [[node, float(f"{err:.4g}")] for node, err in scanned],
            "variants": rows}


def main(argv: list[str] | None = None) -> int:
    from bench.report import int8_table

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30, help="timed calls per case and variant (interleaved)")
    parser.add_argument("--texts", type=int, default=128, help="calibration texts")
    parser.add_argument("--keep", type=int, nargs="+", default=[3, 6, 9, 12],
                        help="static variants with this many of the most sensitive MatMuls kept fp32")
    parser.add_argument("--gate-set", choices=("full", "quick"), default="full")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "int8_scan.json")
    args = parser.parse_args(argv)
    if args.rounds < 2:
        parser.error("--rounds must be at least 2: the speed ratios' quartiles need two rounds")
    result = run(args)
    write_json(args.out, result)
    print(int8_table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
