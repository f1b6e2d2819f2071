"""uvicorn's HTTP protocol with a read deadline and a connection cap.

uvicorn (0.54) closes a kept-alive connection that stays idle after a response
(``timeout_keep_alive``), but nothing bounds a connection that never finishes its request: one
that sends nothing after connecting, or trickles its headers or body a byte at a time, is held
for good (slowloris). uvicorn has no setting for it, and BentoML builds ``uvicorn.Config``
without a protocol argument, so uvicorn uses the class registered under ``"auto"`` in
``uvicorn.config.HTTP_PROTOCOLS``. ``install`` registers ``GuardedHTTPProtocol`` there: the
class uvicorn would pick (httptools when installed, else h11) with ``ReadDeadline`` mixed in.

- **Read deadline**: from the moment a connection opens, and again from the first byte of each
  further request on it, the whole request (headers and body) must arrive within
  ``server.read_timeout_s`` (30 s). Otherwise the client gets 408 ``request_timeout`` (OpenAI
  shape) if nothing was answered yet, and the connection is closed. A request whose body the app
  was still reading sees a disconnect (the gateway counts it as 499, client gone).
- **Connection cap**: a worker keeps at most ``server.max_connections`` connections open; one
  more is answered 503 ``server_busy`` with ``Retry-After`` before its request is read, then our
  side is shut and the connection closed a second later (closing at once, with the client's
  request unread, would reset it and lose the answer).
- **Malformed HTTP** gets an OpenAI-shaped 400 instead of uvicorn's plain text.

Cost: a timestamp written when a request starts and cleared when it is in, per request; one
sweep per second over the worker's open connections closes the late ones (so a deadline fires
within a second after it passes). A timer per request (``loop.call_later``) cost more: both
measured in docs/runbook.md ("Slow clients").

``embedding_connections_closed_total{reason}`` counts what this closes: ``read_timeout``,
``too_many_connections``, ``invalid_http``. ``open_connections()`` is what ``drain`` waits on.

- **Direct routes** (``serve_directly``): a ``POST`` to a path registered there goes from the
  connection straight to its handler, counted in BentoML's request metrics
  (``hosting/routes.py``), past the rest of BentoML's ASGI stack: Starlette's error middleware,
  OpenTelemetry (which still costs 18 us a request on an excluded path) and BentoML's request
  timeout (a task, a timer and a future per request: 44 us). The gateway registers its two hot
  routes when tracing is off (``gateway/edge.py``); they keep their own deadline (504).

- **Drain** (``hosting/drain.py``): from ``close_after_answers()`` (SIGTERM) every answer carries
  ``Connection: close`` and closes its connection, so clients move off this server while it still
  answers; ``receiving()`` tells the drain whether a connection is still receiving its request.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from uvicorn.protocols.http.auto import AutoHTTPProtocol

from core.errors import InvalidRequest, RequestTimeout, ServerBusy, http_bytes
from hosting import routes
from models.registry import served

PROTOCOL = "hosting.protocol:GuardedHTTPProtocol"

_open: set[Any] = set()  # this worker's open connections
SWEEP_S = 1.0
_swept_loop: asyncio.AbstractEventLoop | None = None  # the loop the sweep runs on
_closing = False  # from SIGTERM: every answer closes its connection
CLOSE_HEADER = (b"connection", b"close")
_direct: dict[str, Any] = {}  # path -> the ASGI app that answers a POST there (serve_directly)


def serve_directly(path: str, app: Any) -> None:
    """From now on this worker hands ``POST path`` to ``app`` (an ASGI callable that answers every
    error itself), counted in BentoML's request metrics, past BentoML's other middleware."""
    _direct[path] = app


def open_connections() -> int:
    return len(_open)


def receiving() -> bool:
    """Whether a connection of this worker is receiving a request (or waiting for its first one)."""
    return any(connection._since is not None for connection in _open)


def close_after_answers() -> None:
    """From now on every answer closes its connection, the answers in progress too."""
    global _closing
    _closing = True
    for connection in _open:
        connection.close_after_answer()


@functools.cache
def _closed() -> Any:
    import prometheus_client as prom

    return prom.Counter(
        "embedding_connections_closed", "Connections the server closed itself, by reason", ["reason"]
    )


class ReadDeadline:
    """Mixed into uvicorn's ``HttpToolsProtocol`` or ``H11Protocol``: both keep ``transport``,
    ``connections`` (the server's set of open connections) and ``cycle`` (the current request,
    with ``more_body``, ``response_started``, ``response_complete``)."""

    _since: float | None = None  # loop time at which the request being received began; None: none is
    _refused = False
    _timeout_s = 30.0

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)
        self.app = _Lane(self.app)
        _open.add(self)
        _sweep_soon(self.loop)
        server = served().server
        self._timeout_s = server.read_timeout_s
        if len(self.connections) > server.max_connections:
            _closed().labels("too_many_connections").inc()
            self._refuse(ServerBusy(
                f"This server holds its limit of {server.max_connections} connections; retry shortly."
            ))
            return
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # the request of a refused connection is read and dropped
        if self._since is None and (self.cycle is None or self.cycle.response_complete):
            self._arm()  # the first bytes of a further request on a kept-alive connection
        super().data_received(data)
        if _closing:
            self.close_after_answer()
        cycle = self.cycle
        if self._since is not None and cycle is not None and not cycle.more_body and not cycle.response_complete:
            self._since = None  # the whole request is in

    def close_after_answer(self) -> None:
        """The answer to the request in progress closes the connection (with ``Connection: close``:
        httptools writes it for a cycle not kept alive, h11 only when the request has it)."""
        cycle = self.cycle
        if cycle is not None and not cycle.response_started:
            cycle.keep_alive = False
            if CLOSE_HEADER not in cycle.scope["headers"]:
                cycle.scope["headers"].append(CLOSE_HEADER)

    def connection_lost(self, exc: Exception | None) -> None:
        _open.discard(self)
        self._since = None
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        _closed().labels("invalid_http").inc()
        self._answer_and_close(InvalidRequest(f"{msg} The request is not valid HTTP/1.1."))

    def _arm(self) -> None:
        self._since = self.loop.time()

    def _late(self, now: float) -> bool:
        return self._since is not None and now - self._since > self._timeout_s

    def _expired(self) -> None:
        self._since = None
        if self.transport.is_closing():
            return
        _closed().labels("read_timeout").inc()
        cycle = self.cycle
        waiting_for_request = cycle is None or (cycle.response_complete and not cycle.more_body)
        if waiting_for_request or not cycle.response_started:
            self._answer_and_close(RequestTimeout(f"The request did not arrive in full within {self._timeout_s:g} s."))
        else:
            self.transport.close()

    def _answer_and_close(self, error: Exception) -> None:
        self.transport.write(http_bytes(error))
        self.transport.close()

    def _refuse(self, error: Exception) -> None:
        """Answer ``error`` before reading anything, then close our side only and drop what the
        client still sends for a moment: closing at once with its request unread would reset the
        connection and lose the answer."""
        self._refused = True
        self.transport.write(http_bytes(error))
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(1.0, self.transport.close)


class _Lane:
    """The app a connection runs its requests on: the direct routes (``serve_directly``), else
    ``app`` (uvicorn's, i.e. BentoML's whole stack)."""

    __slots__ = ("app",)

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["method"] == "POST" and (direct := _direct.get(scope["path"])) is not None:
            metrics = routes.installed()
            if metrics is not None:  # None until BentoML built its stack, or with its metrics off
                return await metrics.count(scope, receive, send, scope["path"], direct)
        await self.app(scope, receive, send)


def _sweep_soon(loop: asyncio.AbstractEventLoop) -> None:
    """Start the sweep on ``loop`` (once per loop; a worker has one): every ``SWEEP_S`` s, expire
    connections whose request is late."""
    global _swept_loop
    if _swept_loop is loop:
        return
    _swept_loop = loop

    def sweep() -> None:
        now = loop.time()
        for connection in [c for c in _open if c.loop is loop and c._late(now)]:
            connection._expired()
        loop.call_later(SWEEP_S, sweep)

    loop.call_later(SWEEP_S, sweep)


class GuardedHTTPProtocol(ReadDeadline, AutoHTTPProtocol):
    """What uvicorn serves every connection with once ``install`` ran."""


def install() -> None:
    from uvicorn.config import HTTP_PROTOCOLS

    HTTP_PROTOCOLS["auto"] = PROTOCOL
