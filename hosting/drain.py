"""Shutdown without loss: what a service does between SIGTERM and uvicorn's stop.

uvicorn (under BentoML) stops at once on SIGTERM: it stops accepting, finishes the requests it
is serving and exits. In one ``bentoml serve`` the supervisor signals every service at the same
moment, so the runners stopped while the gateway still had admitted inputs for them. And the
listening socket is not uvicorn's alone: circusd created it and every worker of the server inherits
it (BentoML passes its descriptor, ``--fd``; circus hands all of the server's sockets to every
worker), so when uvicorn stopped accepting the kernel went on completing handshakes into the
socket's queue (backlog 2048) until the last process holding it exited, and then reset them all:
requests sent after the drain were accepted, held for seconds and reset (issue 20).

``install`` (called from a service's start hook, after uvicorn installed its handler) replaces
the SIGTERM handler: the first SIGTERM makes ``draining()`` true (the service's ``/readyz``
answers 503 at once) and every answer from then on closes its connection (``Connection: close``,
``hosting/protocol.py``), so kept-alive clients move to a new connection (not in a runner under
the gateway's ``bentoml serve``: its one client is the gateway); then ``done`` runs; then
``stop_listening`` closes the listening socket for every process that holds it, without resetting
anything it accepted; only then is uvicorn's own handler called (it finishes the requests in hand).

- Gateway: ``gateway_done`` keeps accepting and serving for ``server.drain_s`` (2 s), time for
  a load balancer to take it out and for requests already on their way to arrive.
- Runner started by the gateway's ``bentoml serve``: ``runner_done`` serves until no connection
  to it is left open (the gateway has finished and closed its clients), at most the gateway's
  request timeout plus its drain.
- Runner on its own (Kubernetes, ``EMBED_RUNNER_URL_<ENGINE>``): stops at once: its pod's
  preStop hook, longer than the gateways' drain, already kept it serving (deploy/k8s).

``stop_listening``, for a TCP socket: a socket filter (classic BPF; no privilege needed) drops new
connection requests (SYN) while handshakes already under way complete and are accepted as usual for
``HANDSHAKE_GRACE_S``; then uvicorn stops accepting, whatever completed is accepted here and served
like any other connection, and ``shutdown()`` takes the socket out of listening for all its holders
at once: from then on the kernel refuses connections (a client whose request was dropped retries it
about 1 s later and is refused). A Unix socket refuses new connections as soon as it is shut down
and keeps its queue acceptable, so it is shut down first and then emptied. So from SIGTERM a client
gets an answer or a refused connection, never an accepted connection that is reset
(``tests/hosting/test_drain.py`` counts it). What remains: a connection kept alive and idle through the whole
drain, whose client sends on it just as uvicorn closes it (HTTP/1.1's own race; clients retry
idempotent requests, and readiness turns 503 at SIGTERM).

A second SIGTERM during the drain changes nothing; SIGKILL (a supervisor's or kubelet's grace
period running out) still ends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import logging
import os
import signal
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Any

from hosting import protocol
from models.registry import served

logger = logging.getLogger(__name__)

_draining = False


def draining() -> bool:
    """True from the first SIGTERM on."""
    return _draining


def install(done: Callable[[], Awaitable[None]]) -> None:
    """On SIGTERM: report draining, close each answer's connection, await ``done()``, stop
    listening, then let uvicorn stop. Must run in the event loop's (main) thread after uvicorn
    installed its handlers: a BentoML start hook."""
    stop = signal.getsignal(signal.SIGTERM)
    if not callable(stop):  # not under uvicorn's handler (an in-process test app): leave it
        return
    server = getattr(stop, "__self__", None)  # the uvicorn.Server whose handle_exit this is
    loop = asyncio.get_running_loop()

    async def drain(frame: object) -> None:
        started = time.monotonic()
        try:
            await done()
            await stop_listening(server)
        except Exception:
            logger.exception("drain failed; stopping")
        finally:
            logger.info("drained in %.1f s; stopping", time.monotonic() - started)
            stop(signal.SIGTERM, frame)

    def on_sigterm(signum: int, frame: object) -> None:
        global _draining
        if _draining:
            return
        _draining = True
        logger.info("SIGTERM: not ready from now on; finishing the work in hand before stopping")
        if not _under_the_gateway():
            loop.call_soon_threadsafe(protocol.close_after_answers)
        loop.call_soon_threadsafe(lambda: loop.create_task(drain(frame)))

    signal.signal(signal.SIGTERM, on_sigterm)


HANDSHAKE_GRACE_S = 0.2  # connection requests are dropped this long before the socket closes
ARRIVAL_S = 1.0  # at most this long for the requests of the last connections accepted to arrive
SO_ATTACH_FILTER = getattr(socket, "SO_ATTACH_FILTER", 26)  # Linux


def _bpf(*program: tuple[int, int, int, int]) -> tuple[ctypes.Array, bytes]:
    """A classic BPF program and the ``struct sock_fprog`` pointing at it (the kernel copies the
    program at ``setsockopt``)."""
    code = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *instruction) for instruction in program))
    return code, struct.pack("HP", len(program), ctypes.addressof(code))


# Run on a TCP socket's packets from the TCP header on: a segment with SYN set and ACK clear (a new
# connection request) is dropped, any other passes.
_LOAD_BYTE, _JUMP_IF_SET, _RETURN = 0x30, 0x45, 0x06  # BPF_LD|BPF_B|BPF_ABS, BPF_JMP|BPF_JSET|BPF_K, BPF_RET|BPF_K
# (_PROGRAM is kept: DROP_CONNECTION_REQUESTS holds its address, read at each setsockopt)
_PROGRAM, DROP_CONNECTION_REQUESTS = _bpf((_LOAD_BYTE, 0, 0, 13), (_JUMP_IF_SET, 2, 0, 0x10),
                                          (_JUMP_IF_SET, 0, 1, 0x02), (_RETURN, 0, 0, 0), (_RETURN, 0, 0, 0xFFFFFFFF))


async def stop_listening(server: Any) -> None:
    """Close the listening sockets of ``server`` (a ``uvicorn.Server``) for every process holding
    them, answering (not resetting) every connection they accepted; see the module's docstring.
    A server that is not a uvicorn server (none is listening) is logged and left alone."""
    import uvicorn

    if not isinstance(server, uvicorn.Server):
        logger.warning("SIGTERM handler of %r is not uvicorn's: the listening socket stays open until exit", server)
        return
    listeners = [socket.socket(fileno=os.dup(sock.fileno())) for each in server.servers for sock in each.sockets]
    tcp = [sock for sock in listeners if sock.family in (socket.AF_INET, socket.AF_INET6)]
    for sock in tcp:
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, DROP_CONNECTION_REQUESTS)
    if tcp:
        await asyncio.sleep(HANDSHAKE_GRACE_S)  # uvicorn accepts what is under way meanwhile
    for each in server.servers:
        each.close()  # uvicorn stops accepting (its loop no longer watches the sockets)
    accepted = []
    for sock in listeners:  # no await from here to the shutdowns: nothing else runs in this loop
        if sock.family == socket.AF_UNIX:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # refuses at once; the queue stays acceptable
        sock.setblocking(False)
        while True:
            try:
                accepted.append(sock.accept()[0])
            except OSError:  # empty (BlockingIOError), or shut down by another worker of this service
                break
        if sock.family != socket.AF_UNIX:
            with contextlib.suppress(OSError):  # another worker of this service shut it down already
                sock.shutdown(socket.SHUT_RDWR)  # the kernel refuses from now on
        sock.close()
    loop = asyncio.get_running_loop()
    create = functools.partial(server.config.http_protocol_class, config=server.config,
                               server_state=server.server_state, app_state=server.lifespan.state)
    for connection in accepted:
        connection.setblocking(False)
        await loop.connect_accepted_socket(create, connection)
    limit = time.monotonic() + ARRIVAL_S
    while protocol.receiving() and time.monotonic() < limit:  # uvicorn's stop would close them unanswered
        await asyncio.sleep(0.02)
    logger.info("stopped listening (%d connection(s) accepted at the close)", len(accepted))


def gateway_done() -> Callable[[], Awaitable[None]]:
    async def done() -> None:
        await asyncio.sleep(served().server.drain_s)

    return done


def _under_the_gateway() -> bool:
    """Whether this is a runner started by the gateway's ``bentoml serve``: its only client is the
    gateway, whose clients it keeps (the drain waits for the gateway to close them)."""
    from bentoml._internal.context import server_context

    return server_context.service_type == "service"


def runner_done() -> Callable[[], Awaitable[None]]:
    async def done() -> None:
        if not _under_the_gateway():  # served on its own: preStop did the waiting
            return
        limit = time.monotonic() + served().request_timeout_s + served().server.drain_s + 5
        while protocol.open_connections() and time.monotonic() < limit:
            await asyncio.sleep(0.1)

    return done
