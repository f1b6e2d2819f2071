"""The one-process layout next to the by-URL layout, under wrk, in one run.

    python bench/layouts.py [--seconds 10] [--clients 1 32] [--rounds 2]

One process: ``bentoml serve service:Gateway`` (the runner reached over a Unix socket, pickle).
By URL: ``bentoml serve runners.ort.service:OrtRunner`` on its own port and the gateway with
``EMBED_RUNNER_URL_ORT`` (TCP, JSON), each with its own BENTOML_HOME whose ``models`` links to
the store. Rounds alternate the layouts (A B A B) so that the machine's noise hits both; the
table gives the median over rounds. Load: ``wrk`` with one text of ``corpora/sample_queries.jsonl``'s
``query`` set per request (``bench/common.py``). Needs ``wrk``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import MODEL, LoadResult, bentoml_serve, load_sets, own_home, write_bodies, wrk  # noqa: E402


@contextlib.contextmanager
def one_process(tmp: Path):
    with bentoml_serve({"EMBED_PROFILE": "cpu", "BENTOML_HOME": own_home(tmp / "home")}, tmp / "serve.log") as url:
        yield url


@contextlib.contextmanager
def by_url(tmp: Path):
    with bentoml_serve({"EMBED_PROFILE": "cpu", "BENTOML_HOME": own_home(tmp / "home-runner")},
                       tmp / "runner.log", "runners.ort.service:OrtRunner") as runner:
        env = {"EMBED_PROFILE": "cpu", "BENTOML_HOME": own_home(tmp / "home-gateway"),
               "EMBED_RUNNER_URL_ORT": runner}
        with bentoml_serve(env, tmp / "gateway.log") as url:
            yield url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    results: dict[tuple[str, int], list[LoadResult]] = {}
    for round_ in range(args.rounds):
        for name, layout in (("one process", one_process), ("by URL", by_url)):
            with tempfile.TemporaryDirectory() as tmp, layout(Path(tmp)) as url:
                bodies = Path(tmp) / "bodies.jsonl"
                write_bodies(bodies, load_sets()["query"], 1, MODEL, count=512)
                wrk(f"{url}/v1/embeddings", bodies, 8, 3)  # warm-up
                for clients in args.clients:
                    r = wrk(f"{url}/v1/embeddings", bodies, clients, args.seconds)
                    results.setdefault((name, clients), []).append(r)
                    print(f"round {round_ + 1}, {name}, {clients} clients: {r.ok_per_s:.0f} req/s, "
                          f"p50 {r.p50_ms:.1f} ms, errors + non-2xx {r.failed}", flush=True)
    print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"{time.strftime('%Y-%m-%d %H:%M')}; median of {args.rounds} rounds\n")
    print("| layout | clients | req/s | p50 ms | p99 ms | errors + non-2xx |\n|---|---|---|---|---|---|")
    for (name, clients), runs in results.items():
        med = {k: statistics.median(getattr(r, k) for r in runs) for k in ("ok_per_s", "p50_ms", "p99_ms")}
        bad = sum(r.failed for r in runs)
        print(f"| {name} | {clients} | {med['ok_per_s']:.0f} | {med['p50_ms']:.1f} | {med['p99_ms']:.1f} | {bad:.0f} |")


if __name__ == "__main__":
    main()
