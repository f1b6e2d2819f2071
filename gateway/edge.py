"""What the gateway answers outside ``/v1``, and the OpenAI error shape for whatever BentoML answers.

BentoML adds routes of its own to the entry service: an index page (``/``), its schema pages
(``/docs.json``, ``/schema.json``), static files; and its router answers plain text for paths no
route matches (such as ``/v1/models/...`` with a newline in it, which no path pattern matches) and
for its health checks. None of its pages describes this API (``/v1/openapi.json`` does), and every
error of the gateway is in the OpenAI shape. ``Edge`` (a BentoML service middleware, inside
BentoML's own metrics and timeout middlewares):

- lets through ``/v1/...``, ``/livez``, ``/healthz`` and ``/readyz``; ``/metrics`` as configured
  (open; behind an API key with ``server.metrics_require_key``; off with ``server.metrics_port``);
  and answers 404 to every other path;
- turns any error answer below it that is not JSON (status >= 400, another content type) into the
  OpenAI shape with the same status: 404 ``not_found``, 405 ``method_not_allowed``, else the
  status with its reason;
- hands ``POST /v1/embeddings`` and ``POST /v1/rerank`` straight to their handlers in the ``/v1``
  app (``gateway/app.py``: ``app.state.direct``), past BentoML's context middleware, its router and
  mount and the ``/v1`` app's own Starlette middleware and router, none of which these requests
  need: that stack cost about a fifth of the gateway's CPU per request (docs/benchmarks.md).
  With tracing off (``EMBED_TRACING``), ``Edge`` also registers them with the connection itself
  (``hosting/protocol.py: serve_directly``), which then skips OpenTelemetry and BentoML's request
  timeout above this middleware too (62 us a request); the handlers keep their own 504.
"""

from __future__ import annotations

import http
from typing import Any

from starlette.requests import Request

from core.errors import ApiError, MethodNotAllowed, NotFound, error_response
from core.settings import settings
from gateway.auth import ApiKeys
from hosting.protocol import serve_directly
from models.registry import served

OPEN = frozenset({"/livez", "/healthz", "/readyz"})
DIRECT = frozenset({"/v1/embeddings", "/v1/rerank"})  # POST routes handed straight to their handlers


class Edge:
    def __init__(self, app: Any, keys: ApiKeys, v1: Any = None) -> None:
        """``v1``: what holds the ``/v1`` Starlette app as ``.app`` once the gateway has started
        (``service.py: DeferredApp``); None: every request goes down the stack."""
        self.app = app
        self.keys = keys
        self.v1 = v1
        server = served().server
        self.metrics_here = server.metrics_port is None
        self.metrics_key = server.metrics_require_key
        if v1 is not None and not settings().tracing:
            for path in DIRECT:
                serve_directly(path, self)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        if scope["method"] == "POST" and self.v1 is not None and self.v1.app is not None and path in DIRECT:
            endpoint = self.v1.app.state.direct[path[3:]]  # it answers every error in the OpenAI shape itself
            response = await endpoint(Request(scope, receive, send))
            return await response(scope, receive, send)
        try:
            if path not in OPEN and path != "/v1" and not path.startswith("/v1/"):
                if path != "/metrics" or not self.metrics_here:
                    raise NotFound(f"No route {scope['method']} {path}.")
                if self.metrics_key:
                    self.keys.check(dict(scope["headers"]).get(b"authorization", b"").decode("latin-1") or None)
        except ApiError as error:
            return await error_response(error)(scope, receive, send)
        await self.app(scope, receive, openai_errors(scope, receive, send))


def openai_errors(scope: dict, receive: Any, send: Any) -> Any:
    """``send``, with an error answer that is not JSON replaced by the OpenAI shape."""
    replaced = False

    async def reshaped(message: dict) -> None:
        nonlocal replaced
        if replaced:
            return  # the original body of a replaced answer
        if message["type"] == "http.response.start" and message["status"] >= 400:
            content_type = dict(message.get("headers") or []).get(b"content-type", b"")
            if not content_type.startswith(b"application/json"):
                replaced = True
                return await error_response(as_api_error(message["status"], scope))(scope, receive, send)
        await send(message)

    return reshaped


def as_api_error(status: int, scope: dict) -> ApiError:
    method, path = scope.get("method", ""), scope.get("path", "")
    if status == 404:
        return NotFound(f"No route {method} {path}.")
    if status == 405:
        return MethodNotAllowed(f"{method} is not allowed on {path}.")
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:  # 499, the status of a request whose client went away
        phrase = "Error"
    error = ApiError(f"{phrase} ({method} {path}).", code=phrase.lower().replace(" ", "_"))
    error.status = status
    error.type = "invalid_request_error" if status < 500 else "server_error"
    return error
