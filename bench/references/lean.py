"""The lean reference: a raw ASGI callable on uvicorn (httptools, uvloop), orjson, and one
micro-batching queue in front of the session, run in one thread (``bench/references``)."""

from __future__ import annotations

import asyncio
import sys
from concurrent.futures import ThreadPoolExecutor

import orjson
import uvicorn

from bench.references import answer, load

MAX_BATCH = 128


def app_for(model: str, profile: str):
    engine, tokenize = load(model, profile)
    thread = ThreadPoolExecutor(1)
    waiting: list = []  # (ids, future) queued while the engine runs
    worker: list[asyncio.Task] = []  # the batch loop, while it runs

    async def run_batches() -> None:
        loop = asyncio.get_running_loop()
        while waiting:
            batch, waiting[:MAX_BATCH] = waiting[:MAX_BATCH], []
            vectors = await loop.run_in_executor(thread, engine.embed, [ids for ids, _ in batch])
            for (_, future), vector in zip(batch, vectors, strict=True):
                future.set_result(vector)

    async def app(scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/health":
            status, body = 200, b"{}"
        else:
            chunks, more = [], True
            while more:
                message = await receive()
                chunks.append(message.get("body", b""))
                more = message.get("more_body", False)
            ids = tokenize(orjson.loads(b"".join(chunks))["input"])
            future = asyncio.get_running_loop().create_future()
            waiting.append((ids, future))
            if not worker or worker[0].done():
                worker[:] = [asyncio.get_running_loop().create_task(run_batches())]
            status, body = 200, answer(model, await future, len(ids))
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    return app


if __name__ == "__main__":
    port, model, profile = int(sys.argv[1]), sys.argv[2], (sys.argv[3:] or ["cpu"])[0]
    uvicorn.run(app_for(model, profile), host="127.0.0.1", port=port, http="httptools", loop="uvloop",
                log_level="warning", access_log=False)
