"""ONNX Runtime tuning, one step at a time, each measured beside the others in one run.

    python -m bench.scripts.ort_tuning [--seconds 1.0] [--rounds 3] [--out .cache/bench/ort_tuning.json]

Every step is a variant of the bare engine (``bench/inprocess.py``: the runner's own
``OrtEngine``) on all-MiniLM-L6-v2: graph optimisation levels, the offline transformer fusions
of ``onnxruntime.transformers``, int8 dynamic quantization (with and without fusions), the thread
count and spinning. Each is timed on the same pre-tokenized texts at one short query per call,
32 short queries per call and 32 128-token passages per call; the variants are interleaved
round by round and the median of the rounds is reported, so machine noise hits all alike.

``PREDICTED`` holds what each step was expected to do, written before the first measurement;
the report prints it beside the measured effect. int8 variants also get the quality gate's
numbers (``export/quality.py``) against the plain fp32 graph.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
from pathlib import Path

from bench.common import ROOT, load_sets, log, machine, write_json

# (step, relative to which step, OrtOptions changed, graph variant, predicted effect): the predictions
# were written and committed before the first measurement.
STEPS = [
    ("no graph optimisation", None, {"graph_optimization": "disable"}, "fp32", "baseline"),
    ("basic", "no graph optimisation", {"graph_optimization": "basic"}, "fp32",
     "+5-15%: constant folding, redundant nodes removed"),
    ("extended", "basic", {"graph_optimization": "extended"}, "fp32",
     "+10-30% at batch 32: ORT's online fusions (GELU, LayerNorm, MatMul+Add, attention where the pattern matches)"),
    ("all (runner default)", "extended", {"graph_optimization": "all"}, "fp32",
     "+-5%: 'all' adds layout transforms for convolutions, and this graph has none"),
    ("+ offline transformer fusions", "all (runner default)", {}, "fused",
     "+0-20%: fused Attention/SkipLayerNorm/BiasGelu where the online pass missed them"),
    ("+ int8 dynamic quantization", "+ offline transformer fusions", {}, "int8-fused",
     "1.8-2.5x at batch 32, ~1.5x at batch 1: VNNI u8s8 matrix products, a quarter of the weight bytes"),
    ("int8 without offline fusions", "+ int8 dynamic quantization", {}, "int8",
     "-10-20% against int8 with fusions (unfused attention stays fp32)"),
    ("threads: 1 instead of one per core", "all (runner default)", {"intra_op_threads": 1}, "fp32",
     "-35-45% at batch 32 (one core idle), about -20% at batch 1"),
    ("threads: 2 set explicitly", "all (runner default)", {"intra_op_threads": 2}, "fp32",
     "+-5%: ORT's default is already one thread per core here"),
    ("spinning on", "all (runner default)", {"allow_spinning": True}, "fp32",
     "+0-10% alone in-process (the runner keeps it off: spinning steals the gateway's core)"),
]
CASES = [("query", 1), ("query", 32), ("p128", 32)]


def build_variants(folder: Path) -> dict[str, dict]:
    """model.onnx files of the variants under ``folder``/<name>/; returns per variant its path
    and, for int8, the quality gate's numbers against plain fp32. Reuses ``folder``/variants.json
    when it was built from the same fp32 store entry with the same ONNX Runtime (building and
    checking takes minutes on 2 cores)."""
    import onnxruntime

    from export import calibration, ort_variants, quality
    from models.registry import served
    from models.schema import Int8Spec
    from models.store import open_entry

    spec = served("cpu").find("all-MiniLM-L6-v2")
    entry = open_entry(spec, required=("model.onnx", "tokenizer.json"), verify=False)
    key = f"{entry.tag} {entry.metadata.get('onnx_sha256')} onnxruntime {onnxruntime.__version__}"
    cache = folder / "variants.json"
    if cache.is_file():
        cached = json.loads(cache.read_text())
        if cached.get("key") == key and all(Path(v["path"]).is_file() for v in cached["variants"].values()):
            log(f"variants: reusing {folder}")
            return cached["variants"]
    paths = {name: folder / name / "model.onnx" for name in ("fp32", "fused", "int8", "int8-fused")}
    for path in paths.values():
        path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(entry.file("model.onnx"), paths["fp32"])
    log("building variants: fused")
    fused_ops = ort_variants.fuse_transformer(paths["fp32"], paths["fused"], 12, spec.dimensions)
    log("building variants: int8, int8-fused")
    calibration.quantize_dynamic(paths["fp32"], paths["int8"], Int8Spec())
    calibration.quantize_dynamic(paths["fused"], paths["int8-fused"], Int8Spec())
    info: dict[str, dict] = {name: {"path": str(path)} for name, path in paths.items()}
    info["fused"]["fused_ops"] = fused_ops
    rset = quality.load_retrieval_set().subset(*quality.QUICK_GATE)  # the full gate: bench/scripts/int8_scan.py
    args = (entry.file("tokenizer.json"), rset.texts, spec.pooling.value, spec.normalize, spec.max_tokens)
    reference = quality.embed(paths["fp32"], *args)
    for name in ("int8", "int8-fused"):  # the fused fp32 graph's parity is checked at export
        log(f"quality gate: {name}")
        info[name]["quality"] = quality.compare(reference, quality.embed(paths[name], *args), rset).record()
    cache.write_text(json.dumps({"key": key, "variants": info}, indent=1))
    return info


def run(seconds: float, rounds: int, work: Path, out: Path) -> dict:
    """Build the variants, time every step, write ``out`` after every round (a partial run keeps
    its finished rounds) and return the result."""
    from bench import inprocess

    variants = build_variants(work)
    sets = load_sets()
    inputs = {name: inprocess.tokenize(sets[name][:256]) for name in {s for s, _ in CASES}}
    engines = {
        step: inprocess.engine_for(Path(variants[graph]["path"]), **options)
        for step, _, options, graph, _ in STEPS
    }
    samples: dict[str, dict[str, list[dict]]] = {step: {f"{s}x{b}": [] for s, b in CASES} for step in engines}
    result: dict = {}
    for r in range(rounds):
        for step, engine in engines.items():
            log(f"round {r + 1}/{rounds}: {step}")
            for set_name, batch in CASES:
                samples[step][f"{set_name}x{batch}"].append(
                    inprocess.bare(engine, inputs[set_name], batch, seconds).__dict__)
        result = summarize(samples, variants, seconds, r + 1)
        write_json(out, result)
    return result


def summarize(samples: dict, variants: dict, seconds: float, rounds: int) -> dict:
    steps = []
    for step, base, options, graph, predicted in STEPS:
        row = {"step": step, "relative_to": base, "graph": graph, "options": options, "predicted": predicted,
               "cases": {}}
        for case, runs in samples[step].items():
            row["cases"][case] = {
                "inputs_per_s": statistics.median(x["inputs_per_s"] for x in runs),
                "tokens_per_s": statistics.median(x["tokens_per_s"] for x in runs),
                "call_ms": statistics.median(x["call_ms"] for x in runs),
                "rounds": len(runs),
            }
        steps.append(row)
    return {"machine": machine(), "seconds": seconds, "rounds": rounds, "variants": variants, "steps": steps}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="per case, per round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / ".cache" / "bench" / "ort_tuning.json")
    args = parser.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = run(args.seconds, args.rounds, ROOT / ".cache" / "bench" / "variants", args.out)
    for row in result["steps"]:
        cases = "  ".join(f"{case} {v['inputs_per_s']:.0f}/s" for case, v in row["cases"].items())
        print(f"{row['step']:<40} {cases}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    os.chdir(ROOT)
    sys.exit(main())
