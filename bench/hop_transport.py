"""How the gateway should reach a runner with the binary wire format: measured side by side.

    python -m bench.hop_transport [--rounds 5] [--calls 2000] [--profile bench-null]

One ONNX Runtime runner (``bentoml serve bench.hop_route:OrtRunner``: the platform's runner with the
route below added; the null-cost model of ``--profile``) serves the same call two ways, and an
in-process client sends it both ways in interleaved rounds (the order swapped every round):

- ``api``: the runner's typed BentoML API ``embed(bytes) -> bytes``, called through BentoML's own
  client (``RemoteProxy``, what ``bentoml.depends`` hands the gateway);
- ``route``: the same handler as a raw ASGI route mounted on the runner's app (``/call``,
  ``bench/hop_route.py``), called with a plain aiohttp session.

For calls of 1 job one at a time (one client's view: wall ms per call) and of 32 jobs two at a time
(the gateway under load), it prints per call the client's CPU (this process) and the runner's (its
process tree, psutil), as medians over rounds. docs/benchmarks.md has the table and the choice.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import time

import aiohttp
import numpy as np
import psutil

from bench.common import ROOT, bentoml_argv, cpu_seconds, free_port, log, server
from bench.scripts.benchmark_matrix import WORK


def calls(size: int) -> bytes:
    from core.wire import Job, pack_call

    ids = np.asarray([101, 7592, 2088, 102], dtype=np.int64)
    return pack_call([Job("null-minilm", None, ids, time.time()) for _ in range(size)])


async def drive(send, body: bytes, count: int, concurrency: int) -> float:
    """``count`` calls of ``body``, ``concurrency`` at a time; wall seconds."""
    started = time.perf_counter()

    async def worker(n: int) -> None:
        for _ in range(n):
            await send(body)

    await asyncio.gather(*(worker(count // concurrency) for _ in range(concurrency)))
    return time.perf_counter() - started


async def main_async(args) -> dict:
    import bentoml  # noqa: F401  (BentoML's configuration before its client)
    from _bentoml_impl.client.proxy2 import AsyncClient

    from core.wire import unpack_results
    from runners.ort.service import OrtRunner

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = bentoml_argv("bench.hop_route:OrtRunner", port)
    results: dict = {}
    with server(argv, f"{url}/readyz", WORK / "hop-transport.log", env={"EMBED_PROFILE": args.profile}) as process:
        worker = psutil.Process(process.pid)
        tree = [worker, *worker.children(recursive=True)]
        # what RemoteProxy (bentoml.depends) wraps, with the runners' connection settings
        proxy = AsyncClient(url, service=OrtRunner, media_type="application/vnd.bentoml+pickle", server_ready_timeout=0,
                            max_age=1e9, max_requests=10**9)
        await proxy.__aenter__()  # its endpoints
        session = aiohttp.ClientSession(base_url=url)

        async def via_api(body: bytes) -> None:
            unpack_results(await proxy.embed(body))

        async def via_route(body: bytes) -> None:
            async with session.post("/call", data=body, headers={"content-type": "application/octet-stream"}) as resp:
                unpack_results(await resp.read())

        ways = {"api": via_api, "route": via_route}
        cases = {"1 job, 1 at a time": (calls(1), 1), "32 jobs, 2 at a time": (calls(32), 2)}
        for send in ways.values():  # warm-up: connections, the engine's first shapes
            await drive(send, cases["32 jobs, 2 at a time"][0], 50, 2)
        for r in range(args.rounds):
            for case, (body, concurrency) in cases.items():
                for name in (ways if r % 2 == 0 else list(ways)[::-1]):
                    client, runner = time.process_time(), cpu_seconds(tree)
                    wall = await drive(ways[name], body, args.calls, concurrency)
                    row = {"client_cpu_us": (time.process_time() - client) / args.calls * 1e6,
                           "runner_cpu_us": (cpu_seconds(tree) - runner) / args.calls * 1e6,
                           "wall_us": wall / args.calls * 1e6}
                    results.setdefault(case, {}).setdefault(name, []).append(row)
                    log(f"round {r + 1} {case} {name}: " + ", ".join(f"{k} {v:.0f}" for k, v in row.items()))
        await session.close()
        await proxy.close()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--profile", default="bench-null")
    args = parser.parse_args(argv)
    results = asyncio.run(main_async(args))
    print("| case | way | client CPU us per call | runner CPU us per call | wall us per call |\n|---|---|---|---|---|")
    for case, ways in results.items():
        for name, rows in ways.items():
            print(f"| {case} | {name} | " + " | ".join(
                f"{statistics.median(r[k] for r in rows):.0f}" for k in ("client_cpu_us", "runner_cpu_us", "wall_us"))
                + " |")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
