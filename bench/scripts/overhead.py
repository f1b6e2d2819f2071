"""Serving overhead: the platform beside its bare engine, with CPU per request and a profile.

    python -m bench.scripts.overhead [--rounds 3] [--seconds 8] [--peers] [--profile-seconds 10]
                                     [--label now] [--out bench/results/overhead.json]

One server of profile ``cpu`` (``bentoml serve service:Gateway``) and the bare ``OrtEngine`` on
the very ONNX file it serves (``bench/inprocess.py``), on the same short queries, in
``--rounds`` interleaved rounds (the order of the steps reversed every other round, so a trend
of the machine hits every step alike); the report takes the median over rounds:

- bare: one call of 1 query (``call_ms``) and the best of 32 and 64 queries per call (inputs/s);
- served under ``wrk``, one query per request: 64 clients (texts/s) and 1 client (p50 ms);
  for each, the CPU seconds the gateway's and the runner's process trees spent (psutil: user +
  system of each BentoML worker and everything it started), divided by the requests answered:
  ms of CPU per request;
- with ``--peers``: infinity-emb's ONNX (optimum) engine at 32 clients, beside the platform at 32.

Then, with ``--profile-seconds``, ``py-spy`` samples both workers (``--nonblocking``, on-CPU
samples only) during a 64-client run, and the samples are grouped into the stages of a request
(``STAGES``). py-spy slows what it samples, so the profile gives shares, and wrk the rates.

Results go to ``--out`` under ``--label`` (other labels in the file are kept, so a "before" and an
"after" can sit side by side); ``python -m bench.report`` writes them into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from bench.common import MODEL, ROOT, load_sets, log, machine
from bench.scripts.benchmark_matrix import INFLIGHT_GAUGE, Cell, infinity_server, platform_server, token_counts

SERVICES = ("gateway", "ort_runner")

# What a worker spends its CPU on, by the frame a sample was taken in (its innermost Python frame:
# a call into native code, such as ONNX Runtime's run or the Rust tokenizer, counts where it was
# called): the first stage with a pattern in that frame's file path. Unambiguous, unlike stacks
# of coroutines, whose outer frames say little about who does the work.
STAGES: list[tuple[str, tuple[str, ...]]] = [
    ("ONNX Runtime session.run", ("onnxruntime/",)),
    ("tokenizing (HF tokenizers)", ("gateway/preprocess.py", "tokenizers/")),
    ("engine glue: padding, pooling, batches", ("runners/ort/engine.py", "runners/pooling.py", "runners/batcher.py",
                                                "numpy/")),
    ("wire format: job payloads, base64 vectors", ("runners/engine.py", "base64.py", "orjson")),
    ("runner: job checks, call handling", ("runners/guard.py", "runners/ort/service.py")),
    ("hop client (BentoML client, aiohttp)", ("gateway/runner_client.py", "aiohttp/", "_bentoml_impl/client",
                                              "_bentoml_impl/serde", "yarl/", "multidict/")),
    ("metrics (prometheus_client)", ("prometheus_client/", "/metrics.py")),
    ("gateway: parse, route, answer (gateway/*.py)", ("gateway/", "service.py")),
    ("pydantic validation and serialization", ("pydantic",)),
    ("BentoML and Starlette middleware, routing", ("starlette/", "bentoml/", "_bentoml_impl/", "_bentoml_sdk/",
                                                   "opentelemetry/", "hosting/", "contextlib.py", "re/")),
    ("HTTP server (uvicorn, httptools)", ("uvicorn/", "httptools/", "h11/")),
    ("asyncio event loop, tasks and threads", ("asyncio/", "selectors.py", "concurrent/futures", "threading.py")),
]
TOP_FRAMES = 12  # the busiest frames kept per worker beside the stage shares


def worker_trees(serve_pid: int) -> dict[str, list[psutil.Process]]:
    """Each BentoML worker of ``serve_pid`` by its ``--service-name``, with every process it started."""
    trees: dict[str, list[psutil.Process]] = {}
    for proc in psutil.Process(serve_pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            args = proc.cmdline()
            if "--service-name" in args:
                name = args[args.index("--service-name") + 1]
                trees[name] = [proc, *proc.children(recursive=True)]
    missing = set(SERVICES) - set(trees)
    if missing:
        raise RuntimeError(f"no BentoML worker for {sorted(missing)} under pid {serve_pid}")
    return trees


def cpu_seconds(tree: list[psutil.Process]) -> float:
    total = 0.0
    for proc in tree:
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


def served(cell: Cell, url: str, trees, clients: int, seconds: float, model: str = MODEL) -> dict:
    """One wrk run, one query per request, with each worker tree's CPU ms per answered request."""
    before = {name: cpu_seconds(tree) for name, tree in trees.items()}
    row = cell.run(url, "/v1/embeddings", "query", 1, clients, model, seconds=seconds, gauge=INFLIGHT_GAUGE)
    after = {name: cpu_seconds(tree) for name, tree in trees.items()}
    ok = max(1, row["ok"])
    row["cpu_ms_per_request"] = {name: round((after[name] - before[name]) * 1000 / ok, 3) for name in SERVICES}
    return row


def bare(engine, ids, seconds: float) -> dict:
    from bench import inprocess

    one = inprocess.bare(engine, ids, 1, seconds)
    batches = [inprocess.bare(engine, ids, batch, seconds) for batch in (32, 64)]
    best = max(batches, key=lambda r: r.inputs_per_s)
    return {"call_ms": one.call_ms, "one_per_s": one.inputs_per_s, "best_per_s": best.inputs_per_s,
            "best_batch": best.batch}


def profile(cell: Cell, url: str, trees, seconds: float, out: Path) -> dict:
    """py-spy on both workers during a 64-client run: each worker's on-CPU samples by stage and frame."""
    pinned = Path(sys.executable).parent / "py-spy"  # requirements-dev.txt's, beside this Python
    py_spy = str(pinned) if pinned.exists() else shutil.which("py-spy") or "py-spy"
    files = {name: out / f"{name}.txt" for name in SERVICES}
    samplers = {name: subprocess.Popen([py_spy, "record", "--pid", str(trees[name][0].pid), "--rate", "200",
                                        "--duration", str(round(seconds)), "--nonblocking", "--format", "raw",
                                        "--output", str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                       text=True)
                for name, path in files.items()}
    time.sleep(1)  # py-spy attaches
    row = served(cell, url, trees, 64, seconds)
    workers, errors = {}, {}
    for name, sampler in samplers.items():
        _, stderr = sampler.communicate(timeout=seconds + 60)
        if sampler.returncode == 0 and files[name].exists():
            workers[name] = stage_shares(files[name].read_text())
        else:  # no ptrace permission, say (a container without SYS_PTRACE): told, not hidden
            errors[name] = f"py-spy exited {sampler.returncode}: {stderr.strip()[-300:]}"
            log(f"no profile of {name}: {errors[name]}")
    return {"load": {k: row[k] for k in ("ok_per_s", "p50_ms")}, "workers": workers, "errors": errors}


def stage_shares(raw: str) -> dict:
    """py-spy's raw (collapsed) stacks -> ``{"stages": share per stage, "top": share per frame}``,
    largest first (frames as ``function (file)``, site-packages paths shortened)."""
    stages: collections.Counter[str] = collections.Counter()
    frames: collections.Counter[str] = collections.Counter()
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        leaf = re.sub(r":\d+\)$", ")", stack.rsplit(";", 1)[-1])
        leaf = re.sub(r"\(\S*?(site-packages|python3\.\d+|/work/\w+)/", "(", leaf)
        stages[next((name for name, patterns in STAGES if any(p in leaf for p in patterns)), "other")] += int(count)
        frames[leaf] += int(count)
    total = sum(stages.values()) or 1
    return {"samples": total,
            "stages": {stage: round(n / total, 4) for stage, n in stages.most_common()},
            "top": {frame: round(n / total, 4) for frame, n in frames.most_common(TOP_FRAMES)}}


def median_of(rows: list[dict], *path: str) -> float | None:
    values = []
    for row in rows:
        value = row
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if isinstance(value, (int, float)):
            values.append(value)
    return round(statistics.median(values), 3) if values else None


def summary(rounds: list[dict]) -> dict:
    def m(*path):
        return median_of(rounds, *path)

    result = {
        "bare_call_ms": m("bare", "call_ms"), "bare_best_per_s": m("bare", "best_per_s"),
        "served_64_per_s": m("served_64", "ok_per_s"), "served_1_p50_ms": m("served_1", "p50_ms"),
        "cpu_ms_per_request_64": {name: m("served_64", "cpu_ms_per_request", name) for name in SERVICES},
        "cpu_ms_per_request_1": {name: m("served_1", "cpu_ms_per_request", name) for name in SERVICES},
        "errors": sum(row.get(step, {}).get("errors", 0) for row in rounds for step in ("served_64", "served_1")),
    }
    ratios = [r["served_64"]["ok_per_s"] / r["bare"]["best_per_s"] for r in rounds if "served_64" in r and "bare" in r]
    overs = [r["served_1"]["p50_ms"] - r["bare"]["call_ms"] for r in rounds if "served_1" in r and "bare" in r]
    result["served_over_bare_64"] = round(statistics.median(ratios), 3) if ratios else None
    result["p50_over_bare_ms"] = round(statistics.median(overs), 2) if overs else None
    peers = [r["platform_32"]["ok_per_s"] / r["infinity_onnx_32"]["ok_per_s"] for r in rounds
             if r.get("infinity_onnx_32", {}).get("ok_per_s")]
    result["platform_over_infinity_onnx_32"] = round(statistics.median(peers), 3) if peers else None
    return result


def run(args) -> dict:
    from bench import inprocess

    sets = load_sets()
    cell = Cell(sets, token_counts(sets), args.seconds)
    engine = inprocess.engine_for()
    ids = inprocess.tokenize(sets["query"])
    report: dict = {"machine": machine(), "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "rounds": []}
    with contextlib.ExitStack() as stack:
        url, ctx = platform_server("cpu", "overhead-platform.log")
        process = stack.enter_context(ctx)
        trees = worker_trees(process.pid)
        peer_url = None
        if args.peers:
            peer_url, peer_ctx = infinity_server("optimum")
            stack.enter_context(peer_ctx)
        steps = {
            "bare": lambda: bare(engine, ids, min(args.seconds, 3.0)),
            "served_64": lambda: served(cell, url, trees, 64, args.seconds),
            "served_1": lambda: served(cell, url, trees, 1, args.seconds),
        }
        if peer_url:
            steps["platform_32"] = lambda: served(cell, url, trees, 32, args.seconds)
            steps["infinity_onnx_32"] = lambda: cell.run(peer_url, "/embeddings", "query", 1, 32, MODEL,
                                                         seconds=args.seconds, gauge=None)
        served(cell, url, trees, 64, 2)  # warm-up: connections, allocator, ORT's first shapes
        for r in range(args.rounds):
            order = list(steps) if r % 2 == 0 else list(steps)[::-1]
            row = {}
            for name in order:
                log(f"round {r + 1}/{args.rounds}: {name}")
                row[name] = steps[name]()
            report["rounds"].append(row)
            log(f"round {r + 1}: {json.dumps(summary([row]))}")
        if args.profile_seconds:
            with tempfile.TemporaryDirectory() as folder:
                log(f"py-spy: {args.profile_seconds:.0f} s of 64 clients")
                report["profile"] = profile(cell, url, trees, args.profile_seconds, Path(folder))
    report["summary"] = summary(report["rounds"])
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--peers", action="store_true", help="infinity-emb's ONNX engine at 32 clients too")
    parser.add_argument("--profile-seconds", type=float, default=10.0, help="0: no py-spy profile")
    parser.add_argument("--label", default="now", help="the key the results are kept under in --out")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "overhead.json")
    args = parser.parse_args(argv)
    report = run(args)
    data = json.loads(args.out.read_text()) if args.out.exists() else {}
    data[args.label] = report
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(data, indent=1) + "\n")
    print(json.dumps({"label": args.label, **report["summary"], "profile": report.get("profile")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
