"""The OpenAPI document of ``/v1``, generated from the protocol models.

Served at ``GET /v1/openapi.json``; ``tests/service/golden/openapi.json`` pins it so that any change to
the public contract shows up in review.
"""

from __future__ import annotations

from typing import Any

from pydantic.json_schema import models_json_schema

from gateway.protocol import (
    EmbeddingRequest,
    EmbeddingResponse,
    ErrorResponse,
    ModelCard,
    ModelList,
    RerankRequest,
    RerankResponse,
)

ERRORS = {
    "400": "Invalid request: body, input, dimensions, token ids, or an image/PDF "
           "(format, corrupt data, size, pixels, pages); or an X-Embedding-Variant the model does not have",
    "401": "Missing or wrong API key (only when keys are configured)",
    "404": "Unknown model",
    "413": "Body larger than the configured limit",
    "422": "An image or PDF part crashed its decoder or ran past its time or memory budget",
    "429": "Too much work in flight; retry after `Retry-After` seconds",
    "500": "The engine failed on valid input (a fault; see the server logs)",
    "503": "The model's runner is not ready or unreachable, or the server is at its connection limit; "
           "retry after `Retry-After` seconds",
    "504": "Not answered within the request timeout; retry after `Retry-After` seconds",
}


def _ref(name: str) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}}}


def _errors(codes: list[str]) -> dict[str, Any]:
    return {code: {"description": ERRORS[code], **_ref("ErrorResponse")} for code in codes}


VARIANT = {
    "name": "X-Embedding-Variant", "in": "header", "required": False, "schema": {"type": "string"},
    "description": "Force one variant of the model (GET /v1/models lists them); without it, a request with "
                   "`user` goes to that user's variant, any other to the default variant.",
}
VARIANT_ANSWERED = {"X-Embedding-Variant": {"description": "The variant that answered.", "schema": {"type": "string"}}}


def openapi_document() -> dict[str, Any]:
    _, schemas = models_json_schema(
        [(m, "validation" if m in (EmbeddingRequest, RerankRequest) else "serialization")
         for m in (EmbeddingRequest, EmbeddingResponse, RerankRequest, RerankResponse, ModelCard, ModelList,
                   ErrorResponse)],
        ref_template="#/components/schemas/{model}",
    )
    return {
        "openapi": "3.1.0",
        "info": {"title": "Embedding platform (OpenAI-compatible)", "version": "1"},
        "paths": {
            "/v1/embeddings": {
                "post": {
                    "operationId": "createEmbedding",
                    "parameters": [VARIANT],
                    "requestBody": {"required": True, **_ref("EmbeddingRequest")},
                    "responses": {
                        "200": {"description": "Embeddings in input order", "headers": VARIANT_ANSWERED,
                                **_ref("EmbeddingResponse")},
                        **_errors(["400", "401", "404", "413", "422", "429", "500", "503", "504"]),
                    },
                }
            },
            "/v1/rerank": {
                "post": {
                    "operationId": "rerank",
                    "description": "Score documents against a query, best first: MaxSim for multi-vector models "
                    "(ColQwen2; documents may be images or single PDF pages), cosine for pooled models.",
                    "parameters": [VARIANT],
                    "requestBody": {"required": True, **_ref("RerankRequest")},
                    "responses": {
                        "200": {"description": "Results sorted by relevance_score", "headers": VARIANT_ANSWERED,
                                **_ref("RerankResponse")},
                        **_errors(["400", "401", "404", "413", "422", "429", "500", "503", "504"]),
                    },
                }
            },
            "/v1/models": {
                "get": {
                    "operationId": "listModels",
                    "responses": {"200": {"description": "Served models", **_ref("ModelList")}, **_errors(["401"])},
                }
            },
            "/v1/models/{model}": {
                "get": {
                    "operationId": "retrieveModel",
                    "parameters": [{"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}],
                    "responses": {"200": {"description": "One model", **_ref("ModelCard")}, **_errors(["401", "404"])},
                }
            },
        },
        "components": {"schemas": schemas["$defs"]},
    }


if __name__ == "__main__":  # `make openapi` refreshes tests/service/golden/openapi.json from this
    import json

    print(json.dumps(openapi_document(), indent=2, sort_keys=True))
