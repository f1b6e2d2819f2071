"""What the gateway answers outside ``/v1``: health, metrics, and an OpenAI-shaped 404 for the rest.

BentoML adds routes of its own to the entry service: an index page (``/``), its schema pages
(``/docs.json``, ``/schema.json``), static files, and plain-text or ``{"error": "..."}`` answers
for unknown paths. None of them describes this API (``/v1/openapi.json`` does), and every answer
of the gateway is in the OpenAI error shape. ``Edge`` (a BentoML service middleware, inside
BentoML's own metrics and timeout middlewares) lets through ``/v1/...``, ``/livez``,
``/healthz`` and ``/readyz``; ``/metrics`` as configured (open; behind an API key with
``server.metrics_require_key``; off with ``server.metrics_port``); and answers 404 to every
other path.
"""

from __future__ import annotations

from typing import Any

from gateway.auth import ApiKeys
from gateway.errors import ApiError, NotFound, error_response
from models.registry import served

OPEN = frozenset({"/livez", "/healthz", "/readyz"})


class Edge:
    def __init__(self, app: Any, keys: ApiKeys) -> None:
        self.app = app
        self.keys = keys
        server = served().server
        self.metrics_here = server.metrics_port is None
        self.metrics_key = server.metrics_require_key

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path in OPEN or path == "/v1" or path.startswith("/v1/"):
            return await self.app(scope, receive, send)
        try:
            if path != "/metrics" or not self.metrics_here:
                raise NotFound(f"No route {scope['method']} {path}.")
            if self.metrics_key:
                self.keys.check(dict(scope["headers"]).get(b"authorization", b"").decode("latin-1") or None)
        except ApiError as error:
            return await error_response(error)(scope, receive, send)
        await self.app(scope, receive, send)
