"""BentoML's request metrics labelled by route template instead of raw path.

BentoML 1.4.40 labels ``bentoml_service_request_total``, ``..._request_duration_seconds`` and
``..._request_in_progress`` with ``endpoint=<the request's path>``: every distinct path a client
invents (404s, ``/v1/models/<anything>``) makes new series without bound. ``install`` replaces
its ``RunnerTrafficMetricsMiddleware`` (which BentoML imports by name when it builds each
service's app) with ``TemplatedTrafficMetrics``: the same middleware, given the request's route
template as its path, while the app below it still routes on the real path.

Templates: the system routes, the service's own API routes (``/embed`` on a runner), the
gateway's ``/v1`` routes with ``{model}`` for the path parameter, and ``UNMATCHED`` for any other
path, so the label set stays bounded whatever clients send.
"""

from __future__ import annotations

from typing import Any

from bentoml._internal.context import server_context
from bentoml._internal.server.http import instruments

UNMATCHED = "unmatched"
SYSTEM_ROUTES = frozenset({"/livez", "/healthz", "/readyz", "/metrics"})
# gateway/app.py's routes under /v1 (tests/test_faults.py checks they agree)
V1_ROUTES = frozenset({"/v1/embeddings", "/v1/rerank", "/v1/models", "/v1/openapi.json", "/v1/admin/routing"})
V1_MODEL = "/v1/models/{model}"
_REAL_PATH = "embedding.real_path"

_Original = instruments.RunnerTrafficMetricsMiddleware


def template(path: str) -> str:
    """The route template that ``path`` is served by, or ``UNMATCHED``."""
    if path in SYSTEM_ROUTES or path in V1_ROUTES or path in (server_context.service_routes or ()):
        return path
    if path.startswith("/v1/models/") and len(path) > len("/v1/models/"):
        return V1_MODEL
    return UNMATCHED


class _RealPath:
    """Below the metrics middleware: hands the app the request's real path back."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if _REAL_PATH in scope:
            scope = dict(scope)
            scope["path"] = scope.pop(_REAL_PATH)
        await self.app(scope, receive, send)


class TemplatedTrafficMetrics(_Original):
    def __init__(self, app: Any, **options: Any) -> None:
        super().__init__(_RealPath(app), **options)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            scope = {**scope, "path": template(scope["path"]), _REAL_PATH: scope["path"]}
        await super().__call__(scope, receive, send)


def install() -> None:
    instruments.RunnerTrafficMetricsMiddleware = TemplatedTrafficMetrics
