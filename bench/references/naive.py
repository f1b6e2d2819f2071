"""The naive reference: uvicorn + Starlette, the tokenizer, and the session run once per request in
a worker thread (``bench/references``)."""

from __future__ import annotations

import sys

import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bench.references import answer, load


def app_for(model: str, profile: str) -> Starlette:
    engine, tokenize = load(model, profile)

    async def embeddings(request: Request) -> Response:
        ids = tokenize((await request.json())["input"])
        vector = (await run_in_threadpool(engine.embed, [ids]))[0]
        return Response(answer(model, vector, len(ids)), media_type="application/json")

    async def health(request: Request) -> Response:
        return Response(b"{}", media_type="application/json")

    return Starlette(routes=[Route("/v1/embeddings", embeddings, methods=["POST"]), Route("/health", health)])


if __name__ == "__main__":
    port, model, profile = int(sys.argv[1]), sys.argv[2], (sys.argv[3:] or ["cpu"])[0]
    uvicorn.run(app_for(model, profile), host="127.0.0.1", port=port, log_level="warning", access_log=False)
