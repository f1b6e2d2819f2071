"""The ``/v1`` ASGI app: routes only dispatch; errors become responses in one place.

Routes: ``POST /embeddings``, ``POST /rerank``, ``GET /models``, ``GET /models/{model}``, ``GET /openapi.json``.
Every request under ``/v1`` passes the API-key check (when keys are configured). Bodies are read
with a size limit (413) and parsed with bounded work (``gateway/parsing.py``; 400), in a worker
thread when large. A request not answered within the request timeout gets 504; one whose client
went away (disconnected while sending) is counted as 499, without a traceback, and answered to
nobody.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import orjson
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.auth import ApiKeys
from gateway.errors import (
    CLIENT_GONE,
    ApiError,
    GatewayTimeout,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    error_response,
)
from gateway.metrics import gateway_metrics
from gateway.openapi import openapi_document
from gateway.parsing import BodyLimits, parse_request
from gateway.protocol import EmbeddingRequest, ModelCard, ModelList, RerankRequest
from gateway.serving import EmbeddingResult, EmbeddingServing
from models.registry import ModelSpec

logger = logging.getLogger(__name__)

PARSE_INLINE_BYTES = 64 * 1024  # a smaller body parses in well under a millisecond: no thread hop

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


def model_card(spec: ModelSpec) -> ModelCard:
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
    )


def json_response(content: bytes) -> Response:
    return Response(content, media_type="application/json")


def create_app(serving: EmbeddingServing, keys: ApiKeys) -> Starlette:
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
        request: Request, schema: type[BaseModel], run: Callable[[BaseModel, ModelSpec], Awaitable[EmbeddingResult]]
    ) -> Response:
        """Parse with ``schema``, then ``run`` it on its model within the request timeout (504),
        counting the request by model and status (401s too: the API key is checked here, not in
        ``guarded``; 499 when the client went away), its inputs and tokens, and its latency when
        it succeeds."""
        started = time.perf_counter()
        model, status = "unknown", 500
        try:
            async with asyncio.timeout(timeout_s) as deadline:
                keys.check(request.headers.get("authorization"))
                parsed = await parse_body(await read_body(request, limit), schema, body_limits)
                spec = serving.model(parsed.model)
                model = spec.name
                result = await run(parsed, spec)
            status = 200
            metrics.inputs.labels(model).inc(result.inputs)
            metrics.input_tokens.labels(model).inc(result.tokens)
            return json_response(result.body)
        except TimeoutError:
            if not deadline.expired():
                raise
            status = GatewayTimeout.status
            raise GatewayTimeout(
                f"The request was not answered within {timeout_s:g} s; retry later.", retry_after_s
            ) from None
        except ApiError as error:
            status = error.status
            raise
        except ClientDisconnect:
            status = CLIENT_GONE
            raise
        finally:
            metrics.requests.labels(model, str(status)).inc()
            if status == 200:
                metrics.request_seconds.labels(model).observe(time.perf_counter() - started)

    async def embeddings(request: Request) -> Response:
        return await counted(request, EmbeddingRequest, serving.embed)

    async def rerank(request: Request) -> Response:
        return await counted(request, RerankRequest, serving.rerank)

    async def list_models(request: Request) -> Response:
        cards = ModelList(data=[model_card(spec) for spec in serving.served.models])
        return json_response(cards.model_dump_json().encode())

    async def retrieve_model(request: Request) -> Response:
        return json_response(model_card(serving.model(request.path_params["model"])).model_dump_json().encode())

    async def openapi(request: Request) -> Response:
        return json_response(orjson.dumps(openapi_document()))

    async def not_found(request: Request, exc: HTTPException) -> Response:
        if exc.status_code == 405:
            error = MethodNotAllowed(f"{request.method} is not allowed on {request.url.path}.")
            error.headers = dict(exc.headers or {})  # Starlette sets Allow
            return error_response(error)
        return error_response(NotFound(f"No route {request.method} {request.url.path}."))

    return Starlette(
        routes=[
            Route("/embeddings", guarded(embeddings, check_key=False), methods=["POST"]),
            Route("/rerank", guarded(rerank, check_key=False), methods=["POST"]),
            Route("/models", guarded(list_models), methods=["GET"]),
            Route("/models/{model:path}", guarded(retrieve_model), methods=["GET"]),
            Route("/openapi.json", openapi, methods=["GET"]),
        ],
        exception_handlers={404: not_found, 405: not_found},
    )
