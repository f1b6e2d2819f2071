"""The ``/v1`` ASGI app: routes only dispatch; errors become responses in one place.

Routes: ``POST /embeddings``, ``POST /rerank``, ``GET /models``, ``GET /models/{model}``, ``GET /openapi.json``,
and ``GET``/``POST /admin/routing`` (behind the admin key: ``gateway/auth.py``).
Every request under ``/v1`` passes the API-key check (when keys are configured). Bodies are read
with a size limit (413) and parsed with bounded work (``gateway/parsing.py``; 400), in a worker
thread when large. A request not answered within the request timeout gets 504; one whose client
went away (disconnected while sending) is counted as 499, without a traceback, and answered to
nobody.

Variants (``gateway/routing.py``): an embeddings or rerank request is answered by the variant
its ``X-Embedding-Variant`` header forces, its ``user`` falls to, or the default; the answer (an
error too, once a variant is chosen) carries ``X-Embedding-Variant``, and the metrics its
``variant`` label. A shadow job of the result starts after the answer has been sent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import orjson
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from core.errors import (
    CLIENT_GONE,
    ApiError,
    Forbidden,
    GatewayTimeout,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    error_response,
)
from gateway.auth import ApiKeys
from gateway.metrics import NO_VARIANT, gateway_metrics
from gateway.openapi import openapi_document
from gateway.parsing import BodyLimits, parse_request
from gateway.protocol import EmbeddingRequest, ModelCard, ModelList, RerankRequest, VariantCard
from gateway.routing import VARIANT_HEADER, LiveRoute, RoutingChange, Target
from gateway.serving import EmbeddingResult, EmbeddingServing
from models.schema import ModelSpec

logger = logging.getLogger(__name__)

PARSE_INLINE_BYTES = 64 * 1024  # a smaller body parses in well under a millisecond: no thread hop
ADMIN_BODY_BYTES = 64 * 1024
RESPONSE_VARIANT_HEADER = "X-Embedding-Variant"

async def read_body(request: Request, limit: int) -> bytes:
    """The request body, or ``PayloadTooLarge`` as soon as it passes ``limit`` bytes."""
    too_large = PayloadTooLarge(f"The request body is larger than the limit of {limit} bytes.")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


async def parse_body(body: bytes, schema: type[BaseModel], limits: BodyLimits) -> BaseModel:
    """``parsing.parse_request``, in a worker thread once the body is large enough for its parse and
    validation to hold up the event loop (and ``/livez``, ``/metrics``, other requests)."""
    if len(body) < PARSE_INLINE_BYTES:
        return parse_request(body, schema, limits)
    return await asyncio.to_thread(parse_request, body, schema, limits)


def model_card(spec: ModelSpec, route: LiveRoute) -> ModelCard:
    total = sum(route.weights.values())
    return ModelCard(
        id=spec.name,
        created=0,
        owned_by="embedding-platform",
        aliases=list(spec.aliases),
        engine=spec.engine.value,
        dimensions=spec.dimensions,
        max_tokens=spec.max_tokens,
        matryoshka_dimensions=(spec.matryoshka.min, spec.matryoshka.max) if spec.matryoshka else None,
        pooling=spec.pooling.value,
        variants=[VariantCard(id=t.name, model=t.spec.name, weight=route.weights[t.name] / total)
                  for t in route.targets.values()],
        default_variant=route.default.name,
    )


def json_response(content: bytes, headers: dict[str, str] | None = None,
                  background: BackgroundTask | None = None) -> Response:
    return Response(content, media_type="application/json", headers=headers, background=background)


def create_app(serving: EmbeddingServing, keys: ApiKeys, admin_keys: ApiKeys | None = None) -> Starlette:
    """The ``/v1`` app; ``admin_keys``: who may change the routing (default: ``keys``; no key at
    all: the admin endpoint answers 403)."""
    limit = serving.served.gateway.max_body_bytes
    timeout_s = serving.served.request_timeout_s
    retry_after_s = serving.served.gateway.retry_after_s
    body_limits = BodyLimits.of(serving.served.gateway)
    metrics = gateway_metrics()

    def guarded(
        handler: Callable[[Request], Awaitable[Response]], check_key: bool = True
    ) -> Callable[[Request], Awaitable[Response]]:
        """The handler behind the API-key check, with every error turned into its response."""

        async def endpoint(request: Request) -> Response:
            try:
                if check_key:
                    keys.check(request.headers.get("authorization"))
                return await handler(request)
            except ApiError as error:
                return error_response(error)
            except ClientDisconnect:  # nobody to answer; counted in `counted`
                return Response(status_code=CLIENT_GONE)
            except Exception:
                logger.exception("unexpected error on %s %s", request.method, request.url.path)
                return error_response(ApiError("The server had an error while processing your request."))

        return endpoint

    async def counted(
        request: Request, schema: type[BaseModel],
        run: Callable[[BaseModel, ModelSpec, LiveRoute, Target], Awaitable[EmbeddingResult]],
    ) -> Response:
        """Parse with ``schema``, choose the variant, then ``run`` it within the request timeout
        (504), counting the request by model, variant and status (401s too: the API key is checked
        here, not in ``guarded``; 499 when the client went away), its inputs and tokens, and its
        latency when it succeeds. Once a variant is chosen, every answer names it."""
        started = time.perf_counter()
        model, variant, status = "unknown", NO_VARIANT, 500
        try:
            try:
                async with asyncio.timeout(timeout_s) as deadline:
                    keys.check(request.headers.get("authorization"))
                    parsed = await parse_body(await read_body(request, limit), schema, body_limits)
                    spec = serving.model(parsed.model)
                    model = spec.name
                    route = serving.routing.route(model)
                    forced = request.headers.get(VARIANT_HEADER)
                    target = route.choose(forced.strip(" \t") if forced is not None else None,
                                          getattr(parsed, "user", None))
                    variant = target.name
                    result = await run(parsed, spec, route, target)
            except TimeoutError:
                if not deadline.expired():
                    raise
                raise GatewayTimeout(
                    f"The request was not answered within {timeout_s:g} s; retry later.", retry_after_s
                ) from None
            status = 200
            metrics.inputs.labels(model, variant).inc(result.inputs)
            metrics.input_tokens.labels(model, variant).inc(result.tokens)
            background = BackgroundTask(serving.shadows.start, result.shadow) if result.shadow else None
            return json_response(result.body, {RESPONSE_VARIANT_HEADER: variant}, background)
        except ApiError as error:
            status = error.status
            if variant == NO_VARIANT:
                raise
            response = error_response(error)
            response.headers[RESPONSE_VARIANT_HEADER] = variant
            return response
        except ClientDisconnect:
            status = CLIENT_GONE
            raise
        finally:
            metrics.requests.labels(model, variant, str(status)).inc()
            if status == 200:
                metrics.request_seconds.labels(model, variant).observe(time.perf_counter() - started)

    async def embeddings(request: Request) -> Response:
        return await counted(request, EmbeddingRequest, serving.embed)

    async def rerank(request: Request) -> Response:
        return await counted(request, RerankRequest, serving.rerank)

    async def list_models(request: Request) -> Response:
        cards = ModelList(data=[model_card(spec, serving.routing.route(spec.name)) for spec in serving.served.models])
        return json_response(cards.model_dump_json().encode())

    async def retrieve_model(request: Request) -> Response:
        spec = serving.model(request.path_params["model"])
        return json_response(model_card(spec, serving.routing.route(spec.name)).model_dump_json().encode())

    admin = admin_keys if admin_keys is not None else keys

    def check_admin(request: Request) -> None:
        if not admin.keys:
            raise Forbidden("The admin endpoint needs a key: set EMBED_ADMIN_API_KEYS (or EMBED_API_KEYS) and "
                            "restart the server.", code="admin_disabled")
        admin.check(request.headers.get("authorization"))

    async def routing_state(request: Request) -> Response:
        check_admin(request)
        return json_response(orjson.dumps(serving.routing.state()))

    async def change_routing(request: Request) -> Response:
        check_admin(request)
        change = parse_request(await read_body(request, ADMIN_BODY_BYTES), RoutingChange, body_limits)
        return json_response(orjson.dumps(await serving.routing.change(change)))

    async def openapi(request: Request) -> Response:
        return json_response(orjson.dumps(openapi_document()))

    async def not_found(request: Request, exc: HTTPException) -> Response:
        if exc.status_code == 405:
            error = MethodNotAllowed(f"{request.method} is not allowed on {request.url.path}.")
            error.headers = dict(exc.headers or {})  # Starlette sets Allow
            return error_response(error)
        return error_response(NotFound(f"No route {request.method} {request.url.path}."))

    direct = {"/embeddings": guarded(embeddings, check_key=False), "/rerank": guarded(rerank, check_key=False)}
    app = Starlette(
        routes=[
            Route("/embeddings", direct["/embeddings"], methods=["POST"]),
            Route("/rerank", direct["/rerank"], methods=["POST"]),
            Route("/models", guarded(list_models), methods=["GET"]),
            Route("/models/{model:path}", guarded(retrieve_model), methods=["GET"]),
            Route("/openapi.json", openapi, methods=["GET"]),
            Route("/admin/routing", guarded(routing_state, check_key=False), methods=["GET"]),
            Route("/admin/routing", guarded(change_routing, check_key=False), methods=["POST"]),
        ],
        exception_handlers={404: not_found, 405: not_found},
    )
    app.state.direct = direct  # the POST routes gateway/edge.py calls without routing (the hot path)
    return app
