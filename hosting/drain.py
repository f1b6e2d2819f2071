"""Shutdown without loss: what a service does between SIGTERM and uvicorn's stop.

uvicorn (under BentoML) stops at once on SIGTERM: it closes its socket, finishes the requests it
is serving and exits. In one ``bentoml serve`` the supervisor signals every service at the same
moment, so the runners stopped while the gateway still had admitted inputs for them, and a
request sent just before SIGTERM could wait in the listening socket's queue until it was reset.
``install`` (called from a service's start hook, after uvicorn installed its handler) replaces
the SIGTERM handler: the first SIGTERM makes ``draining()`` true (the service's ``/readyz``
answers 503 at once) and runs ``done``; only when it returns is uvicorn's own handler called.

- Gateway: ``gateway_done`` keeps accepting and serving for ``server.drain_s`` (2 s), time for
  a load balancer to take it out and for requests already on their way to arrive; then uvicorn
  finishes every admitted request and exits.
- Runner started by the gateway's ``bentoml serve``: ``runner_done`` serves until no connection
  to it is left open (the gateway has finished and closed its clients), at most the gateway's
  request timeout plus its drain.
- Runner on its own (Kubernetes, ``EMBED_RUNNER_URL_<ENGINE>``): stops at once: its pod's
  preStop hook, longer than the gateways' drain, already kept it serving (deploy/k8s).

A second SIGTERM during the drain changes nothing; SIGKILL (a supervisor's or kubelet's grace
period running out) still ends it.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Awaitable, Callable

from models.registry import served

logger = logging.getLogger(__name__)

_draining = False


def draining() -> bool:
    """True from the first SIGTERM on."""
    return _draining


def install(done: Callable[[], Awaitable[None]]) -> None:
    """On SIGTERM: report draining, await ``done()``, then let uvicorn stop. Must run in the
    event loop's (main) thread after uvicorn installed its handlers: a BentoML start hook."""
    stop = signal.getsignal(signal.SIGTERM)
    if not callable(stop):  # not under uvicorn's handler (an in-process test app): leave it
        return
    loop = asyncio.get_running_loop()

    async def drain(frame: object) -> None:
        started = time.monotonic()
        try:
            await done()
        finally:
            logger.info("drained in %.1f s; stopping", time.monotonic() - started)
            stop(signal.SIGTERM, frame)

    def on_sigterm(signum: int, frame: object) -> None:
        global _draining
        if _draining:
            return
        _draining = True
        logger.info("SIGTERM: not ready from now on; finishing the work in hand before stopping")
        loop.call_soon_threadsafe(lambda: loop.create_task(drain(frame)))

    signal.signal(signal.SIGTERM, on_sigterm)


def gateway_done() -> Callable[[], Awaitable[None]]:
    async def done() -> None:
        await asyncio.sleep(served().server.drain_s)

    return done


def runner_done() -> Callable[[], Awaitable[None]]:
    from bentoml._internal.context import server_context

    from hosting.protocol import open_connections

    async def done() -> None:
        if server_context.service_type != "service":  # served on its own: preStop did the waiting
            return
        limit = time.monotonic() + served().request_timeout_s + served().server.drain_s + 5
        while open_connections() and time.monotonic() < limit:
            await asyncio.sleep(0.1)

    return done
