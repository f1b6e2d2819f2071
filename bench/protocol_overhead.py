"""What the read deadline and connection cap (hosting/protocol.py) cost per request, side by side.

    python bench/protocol_overhead.py [--rounds 5] [--seconds 5] [--clients 16]

Two uvicorn servers of the same trivial ASGI app (200, 2 bytes), one with uvicorn's own
protocol (httptools) and one with ``GuardedHTTPProtocol``, each pinned to the same core; ``wrk``
on the other core drives them in interleaved rounds, the order swapped every round (stock
then guarded, guarded then stock, ...), so machine noise and its trends hit both alike. Prints
each round and the medians: requests/s, and the per-request cost difference
``1/rps_guarded - 1/rps_stock`` per round (a server saturating one core spends 1/rps seconds of
it per request). The app does nothing, so this is the protocol's cost against the cheapest
request there is; a real /v1/embeddings request costs milliseconds.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import free_port, server  # noqa: E402  (after the path is set)

SERVER = """
import sys, uvicorn
sys.path.insert(0, {root!r})
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from hosting.protocol import GuardedHTTPProtocol

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({{"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}})
    await send({{"type": "http.response.body", "body": b"ok"}})

protocol = GuardedHTTPProtocol if sys.argv[1] == "guarded" else HttpToolsProtocol
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), http=protocol, log_level="warning", access_log=False)
"""


def start(kind: str, port: int, core: int) -> contextlib.AbstractContextManager:
    """The ``kind`` server (stock or guarded) on ``port``, pinned to ``core``, until the block ends."""
    argv = ["taskset", "-c", str(core), sys.executable, "-c", SERVER.format(root=str(ROOT)), kind, str(port)]
    return server(argv, f"http://127.0.0.1:{port}/", ROOT / ".cache" / "bench" / f"protocol-{kind}.log",
                  env={"EMBED_PROFILE": "cpu"}, timeout=30)


def wrk(port: int, seconds: int, clients: int, core: int) -> float:
    out = subprocess.run(["taskset", "-c", str(core), "wrk", "-t1", f"-c{clients}", f"-d{seconds}s",
                          f"http://127.0.0.1:{port}/"], capture_output=True, text=True, check=True).stdout
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--clients", type=int, default=16)
    args = parser.parse_args()
    server_core, load_core = 1, 0
    ports = {"stock": free_port(), "guarded": free_port()}
    rps: dict[str, list[float]] = {kind: [] for kind in ports}
    with contextlib.ExitStack() as stack:
        for kind, port in ports.items():
            stack.enter_context(start(kind, port, server_core))
        for port in ports.values():  # warm-up
            wrk(port, 1, args.clients, load_core)
        for round_ in range(args.rounds):
            order = list(ports.items()) if round_ % 2 == 0 else list(ports.items())[::-1]
            for kind, port in order:
                rps[kind].append(wrk(port, args.seconds, args.clients, load_core))
            print(f"round {round_ + 1}: stock {rps['stock'][-1]:.0f} req/s, guarded {rps['guarded'][-1]:.0f} req/s",
                  flush=True)
    stock, guarded = statistics.median(rps["stock"]), statistics.median(rps["guarded"])
    ratios = [g / s for g, s in zip(rps["guarded"], rps["stock"], strict=True)]
    print(f"\n{platform.node()} {os.cpu_count()} cores, {time.strftime('%Y-%m-%d %H:%M')}, {args.rounds} interleaved "
          f"rounds of {args.seconds} s, {args.clients} connections, server and wrk on one core each")
    print(f"median stock {stock:.0f} req/s, guarded {guarded:.0f} req/s; guarded/stock per round: "
          f"median {statistics.median(ratios):.3f} (min {min(ratios):.3f}, max {max(ratios):.3f})")
    costs = [1e6 / g - 1e6 / s for g, s in zip(rps["guarded"], rps["stock"], strict=True)]
    print(f"per-request cost: stock {1e6 / stock:.1f} us, guarded {1e6 / guarded:.1f} us; guarded minus stock "
          f"per round: median {statistics.median(costs):+.1f} us (min {min(costs):+.1f}, max {max(costs):+.1f})")


if __name__ == "__main__":
    main()
