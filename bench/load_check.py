"""Server throughput and latency at 1, 32 and 128 clients next to the bare ONNX Runtime session,
on the same texts, in one run.

    python bench/load_check.py [--seconds 10] [--clients 1 32 128]
    python bench/load_check.py --profile cpu-all --models all-MiniLM-L6-v2 all-MiniLM-L6-v2-vllm --rounds 3

With several ``--models`` (one server of ``--profile``), each round runs every model at each
client count in turn, so the engines are compared on the same texts at the same time; the table
gives the median over rounds.

Starts ``bentoml serve service:Gateway`` (profile cpu), drives it with ``wrk`` (a native load
generator: a Python client would take the server's CPU on a small machine) and
``bench/wrk/embeddings.lua``, then measures the bare session in-process on the same 1024 texts at
batch 1 and 32. Prints a markdown table. Needs ``wrk`` (Debian package).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TEXTS = [f"sentence number {i} about topic {i % 17} and more words {i * 7}" for i in range(1, 1025)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def server(port: int, profile: str = "cpu"):
    log = open(ROOT / ".cache" / "load_check_serve.log", "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "bentoml", "serve", "service:Gateway", "--port", str(port), "--host", "127.0.0.1"],
        cwd=ROOT, env={**os.environ, "EMBED_PROFILE": profile}, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        for _ in range(1200):  # a vLLM engine takes a minute or more to start on a busy CPU
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            time.sleep(0.5)
        else:
            raise SystemExit("server did not become ready; see .cache/load_check_serve.log")
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


def wrk(url: str, clients: int, seconds: int, model: str = "all-MiniLM-L6-v2", inputs: int = 1) -> dict[str, float]:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{clients}", f"-d{seconds}s", "--timeout", "30s", "-s",
         str(ROOT / "bench" / "wrk" / "embeddings.lua"), f"{url}/v1/embeddings"],
        capture_output=True, text=True, check=True,
        env={**os.environ, "EMBED_MODEL": model, "EMBED_INPUTS": str(inputs)},
    ).stdout
    line = next(row for row in out.splitlines() if row.startswith("RESULT"))
    return {k: float(v) for k, v in re.findall(r"(\w+)=([\d.]+)", line)}


def bare_session(seconds: float) -> dict[int, tuple[float, float]]:
    """texts/s and median ms per call of the bare session at batch 1 and 32 (same texts, same
    session options as the runner)."""
    from gateway.preprocess import TextPreprocessor
    from models.registry import served
    from models.store import open_entry
    from runners.ort.engine import OrtEngine

    spec = served("cpu").find("all-MiniLM-L6-v2")
    entry = open_entry(spec, required=("model.onnx", "tokenizer.json"))
    ids = TextPreprocessor(spec, entry).texts(TEXTS, None, True)
    session = OrtEngine(spec, entry).session
    results = {}
    for batch in (1, 32):
        times, done, started = [], 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            rows = [ids[(done + j) % len(ids)] for j in range(batch)]
            width = max(map(len, rows))
            feed = {name: np.zeros((batch, width), np.int64)
                    for name in ("input_ids", "attention_mask", "token_type_ids")}
            for r, row in enumerate(rows):
                feed["input_ids"][r, : len(row)] = row
                feed["attention_mask"][r, : len(row)] = 1
            t0 = time.perf_counter()
            session.run(["last_hidden_state"], feed)
            times.append(time.perf_counter() - t0)
            done += batch
        results[batch] = (done / (time.perf_counter() - started), float(np.median(times)) * 1000)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 32, 128])
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--models", nargs="+", default=["all-MiniLM-L6-v2"])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--inputs", type=int, default=1, help="texts per request")
    args = parser.parse_args()
    (ROOT / ".cache").mkdir(exist_ok=True)
    runs: dict[tuple[str, int], list[dict[str, float]]] = {}
    with server(free_port(), args.profile) as url:
        for model in args.models:
            wrk(url, 8, 3, model)  # warm-up
        for _ in range(args.rounds):
            for clients in args.clients:
                for model in args.models:
                    runs.setdefault((model, clients), []).append(wrk(url, clients, args.seconds, model, args.inputs))
    rows = [
        (model, clients, {key: float(np.median([r[key] for r in results])) for key in results[0]})
        for (model, clients), results in runs.items()
    ]
    bare = bare_session(args.seconds)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"{time.strftime('%Y-%m-%d %H:%M')}\n")
    print(f"median of {args.rounds} round(s) of {args.seconds} s each; {args.inputs} text(s) per request\n")
    print("| setup | clients | req/s | p50 ms | p99 ms | errors | non-2xx |\n|---|---|---|---|---|---|---|")
    for model, clients, r in rows:
        print(f"| gateway + {model} (wrk) | {clients} | {r['rps']:.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} "
              f"| {r['errors']:.0f} | {r['non2xx']:.0f} |")
    for batch, (rate, median_ms) in bare.items():
        print(f"| bare ORT session, batch {batch} | - | {rate:.0f} texts/s | {median_ms:.1f} per call | | | |")


if __name__ == "__main__":
    main()
