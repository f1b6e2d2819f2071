"""The one-process layout next to the by-URL layout, under wrk, in one run.

    python bench/layouts.py [--seconds 10] [--clients 1 32] [--rounds 2]

One process: ``bentoml serve service:Gateway`` (the runner reached over a Unix socket, pickle).
By URL: ``bentoml serve runners.ort.service:OrtRunner`` on its own port and the gateway with
``EMBED_RUNNER_URL_ORT`` (TCP, JSON), each with its own BENTOML_HOME whose ``models`` links to
the store. Rounds alternate the layouts (A B A B) so that the machine's noise hits both; the
table gives the median over rounds. Needs ``wrk``.
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

from bench.load_check import wrk  # noqa: E402
from tests.conftest import bentoml_server, own_bentoml_home  # noqa: E402


@contextlib.contextmanager
def one_process(tmp: Path):
    with bentoml_server({"EMBED_PROFILE": "cpu", "BENTOML_HOME": own_bentoml_home(tmp / "home")},
                        tmp / "serve.log") as url:
        yield url


@contextlib.contextmanager
def by_url(tmp: Path):
    with bentoml_server({"EMBED_PROFILE": "cpu", "BENTOML_HOME": own_bentoml_home(tmp / "home-runner")},
                        tmp / "runner.log", "runners.ort.service:OrtRunner") as runner:
        env = {"EMBED_PROFILE": "cpu", "BENTOML_HOME": own_bentoml_home(tmp / "home-gateway"),
               "EMBED_RUNNER_URL_ORT": runner}
        with bentoml_server(env, tmp / "gateway.log") as url:
            yield url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    results: dict[tuple[str, int], list[dict[str, float]]] = {}
    for round_ in range(args.rounds):
        for name, layout in (("one process", one_process), ("by URL", by_url)):
            with tempfile.TemporaryDirectory() as tmp, layout(Path(tmp)) as url:
                wrk(url, 8, 3)  # warm-up
                for clients in args.clients:
                    r = wrk(url, clients, args.seconds)
                    results.setdefault((name, clients), []).append(r)
                    print(f"round {round_ + 1}, {name}, {clients} clients: {r['rps']:.0f} req/s, "
                          f"p50 {r['p50_ms']:.1f} ms, errors {r['errors']:.0f}, non-2xx {r['non2xx']:.0f}", flush=True)
    print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"{time.strftime('%Y-%m-%d %H:%M')}; median of {args.rounds} rounds\n")
    print("| layout | clients | req/s | p50 ms | p99 ms | errors + non-2xx |\n|---|---|---|---|---|---|")
    for (name, clients), runs in results.items():
        med = {k: statistics.median(r[k] for r in runs) for k in ("rps", "p50_ms", "p99_ms")}
        bad = sum(r["errors"] + r["non2xx"] for r in runs)
        print(f"| {name} | {clients} | {med['rps']:.0f} | {med['p50_ms']:.1f} | {med['p99_ms']:.1f} | {bad:.0f} |")


if __name__ == "__main__":
    main()
