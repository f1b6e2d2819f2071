"""The ONNX Runtime runner with the other way ``bench/hop_transport.py`` measures: its ``embed``
handler also as a raw ASGI route (``POST /call``) mounted on the runner's own app, beside the typed
BentoML API. Served as ``bentoml serve bench.hop_route:OrtRunner``; not part of the platform."""

from __future__ import annotations

from _bentoml_sdk.service import get_current_service

from runners.guard import answer
from runners.ort.service import OrtRunner

__all__ = ["OrtRunner"]


async def call_route(scope: dict, receive, send) -> None:
    chunks, more = [], True
    while more:
        message = await receive()
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    runner = get_current_service()
    body = await answer(b"".join(chunks), runner.checker, runner.queue, runner.batcher.submit)
    headers = [(b"content-type", b"application/octet-stream"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


OrtRunner.mount_asgi_app(call_route, path="/call")
