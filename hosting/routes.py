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

Since the label values are bounded, an HTTP request's series (in progress, total, duration, last
request time) keep their labelled children instead of BentoML's four ``labels(**kwargs)`` per
request: its middleware cost 66-86 us of CPU per request (42-49 us now), as much as tokenizing a text
(``bench/front_layers.py``). Websocket traffic is counted by BentoML's own code.
"""

from __future__ import annotations

from timeit import default_timer
from typing import Any

from bentoml._internal.context import server_context
from bentoml._internal.server.http import instruments

UNMATCHED = "unmatched"
SYSTEM_ROUTES = frozenset({"/livez", "/healthz", "/readyz", "/metrics"})
# gateway/app.py's routes under /v1 (tests/hosting/test_faults.py checks they agree)
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


_installed: TemplatedTrafficMetrics | None = None


def installed() -> TemplatedTrafficMetrics | None:
    """This process's request-metrics middleware, once its service's app is built (BentoML builds
    the middleware stack on the first request); None before, or with BentoML's metrics off."""
    return _installed


class TemplatedTrafficMetrics(_Original):
    def __init__(self, app: Any, **options: Any) -> None:
        global _installed
        super().__init__(_RealPath(app), **options)
        self._children: dict[tuple, Any] = {}
        _installed = self

    def _child(self, metric: Any, **labels: Any) -> Any:
        """``metric.labels(**labels, <this service's labels>)``, made once per label values."""
        key = (id(metric), *labels.values())
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(
                **labels, service_name=server_context.bento_name, service_version=server_context.bento_version,
                runner_name=server_context.service_name)
        return child

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await super().__call__(scope, receive, send)  # websockets: BentoML's own counting
        if not self._is_setup:
            self._setup()
        endpoint = template(scope["path"])
        scope = {**scope, "path": endpoint, _REAL_PATH: scope["path"]}
        if endpoint == "/metrics":
            return await self.app(scope, receive, send)
        await self.count(scope, receive, send, endpoint, self.app)

    async def count(self, scope: dict, receive: Any, send: Any, endpoint: str, app: Any) -> None:
        """Run ``app`` on an HTTP request, counted under route template ``endpoint``."""
        if not self._is_setup:
            self._setup()
        if not endpoint.startswith(tuple(self.skip_paths)):
            self._child(self.metrics_last_request_timestamp).set_to_current_time()
        started = default_timer()
        status = 0

        async def counted(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                self._child(self.metrics_request_total, endpoint=endpoint, http_response_code=status).inc()
                self._child(self.metrics_request_duration, endpoint=endpoint, http_response_code=status).observe(
                    max(default_timer() - started, 0))
            await send(message)

        with self._child(self.metrics_request_in_progress, endpoint=endpoint).track_inprogress():
            await app(scope, receive, counted)


def install() -> None:
    instruments.RunnerTrafficMetricsMiddleware = TemplatedTrafficMetrics
