"""What shadow traffic costs the primary: p50 latency at 1 client and throughput at 32 clients, with
the shadow off, on for 10% and on for every request, in one run.

    python bench/shadow_cost.py [--seconds 10] [--rounds 3]

One server (``bentoml serve service:Gateway``) of a profile whose all-MiniLM-L6-v2 has two
variants, ``a`` (the default, which answers) and ``b`` (the same store entry under another
registry name: its own ONNX Runtime session, the same cost), and the shadow set through
``/v1/admin/routing`` between measurements, so the modes share the server and the machine's
noise: each round runs every mode (in a rotated order) at both client counts; the table gives
the median over rounds, and per mode how many shadows were compared or dropped (the runner was
busy). Load: ``wrk`` with one text of ``corpora/sample_queries.jsonl``'s ``query`` set per request,
no ``user`` (``bench/common.py``).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import MODEL, LoadResult, bentoml_serve, load_sets, own_home, write_bodies, wrk  # noqa: E402

ADMIN = {"Authorization": "Bearer bench-admin"}
MODES = {"off": None, "10%": 0.1, "100%": 1.0}


def registry(folder: Path) -> Path:
    data = yaml.safe_load((ROOT / "models/registry.yaml").read_text())
    data["models"]["all-MiniLM-L6-v2-twin"] = {**data["models"][MODEL], "aliases": []}
    data["profiles"]["shadow-bench"] = {
        "models": [MODEL], "runners": data["profiles"]["cpu"]["runners"],
        "routing": {MODEL: {"variants": {"a": {}, "b": {"model": "all-MiniLM-L6-v2-twin", "weight": 0}}}}}
    (folder / "registry.yaml").write_text(yaml.safe_dump(data))
    (folder / "registry.lock").write_text((ROOT / "models/registry.lock").read_text())
    return folder / "registry.yaml"


def shadow_counts(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    counts: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("embedding_shadow_requests_total{"):
            outcome = re.search(r'outcome="(\w+)"', line).group(1)
            counts[outcome] = counts.get(outcome, 0) + float(line.rsplit(" ", 1)[1])
    return counts


def set_shadow(url: str, fraction: float | None) -> None:
    shadow = {"variant": "b", "fraction": fraction} if fraction else None
    response = httpx.post(f"{url}/v1/admin/routing", json={"model": MODEL, "shadow": shadow}, headers=ADMIN)
    response.raise_for_status()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    results: dict[tuple[str, int], list[LoadResult]] = {}
    shadows: dict[str, dict[str, float]] = {mode: {} for mode in MODES}
    with tempfile.TemporaryDirectory() as tmp:
        env = {"EMBED_REGISTRY": str(registry(Path(tmp))), "EMBED_PROFILE": "shadow-bench",
               "EMBED_ADMIN_API_KEYS": "bench-admin", "BENTOML_HOME": own_home(Path(tmp) / "home")}
        bodies = Path(tmp) / "bodies.jsonl"
        write_bodies(bodies, load_sets()["query"], 1, MODEL, count=512)
        with bentoml_serve(env, Path(tmp) / "serve.log") as url:
            wrk(f"{url}/v1/embeddings", bodies, 8, 3)  # warm-up
            names = list(MODES)
            for round_ in range(args.rounds):
                for mode in names[round_ % len(names):] + names[:round_ % len(names)]:
                    set_shadow(url, MODES[mode])
                    before = shadow_counts(url)
                    for clients in (1, 32):
                        r = wrk(f"{url}/v1/embeddings", bodies, clients, args.seconds)
                        results.setdefault((mode, clients), []).append(r)
                        print(f"round {round_ + 1}, shadow {mode}, {clients} clients: {r.ok_per_s:.0f} req/s, "
                              f"p50 {r.p50_ms:.2f} ms, p99 {r.p99_ms:.1f} ms, errors + non-2xx {r.failed}", flush=True)
                    time.sleep(1)  # the last shadows finish
                    after = shadow_counts(url)
                    for outcome, count in after.items():
                        shadows[mode][outcome] = shadows[mode].get(outcome, 0) + count - before.get(outcome, 0)
    print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"{time.strftime('%Y-%m-%d %H:%M')}; median of {args.rounds} rounds of {args.seconds} s\n")
    print("| shadow | p50 ms, 1 client | req/s, 1 client | req/s, 32 clients | p99 ms, 32 clients | errors + non-2xx "
          "| shadows compared / dropped |\n|---|---|---|---|---|---|---|")
    for mode in MODES:
        one, many = results[(mode, 1)], results[(mode, 32)]
        bad = sum(r.failed for r in one + many)
        counts = shadows[mode]
        print(f"| {mode} | {statistics.median(r.p50_ms for r in one):.2f} | "
              f"{statistics.median(r.ok_per_s for r in one):.0f} | {statistics.median(r.ok_per_s for r in many):.0f} | "
              f"{statistics.median(r.p99_ms for r in many):.0f} | {bad:.0f} | "
              f"{counts.get('compared', 0):.0f} / {counts.get('dropped', 0):.0f} |")


if __name__ == "__main__":
    main()
