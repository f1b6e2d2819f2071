"""The direct lane below BentoML's app (hosting/protocol.py): which requests skip the stack, and that
they are still counted."""

import asyncio

from hosting import protocol, routes


def test_direct_routes_go_from_the_connection_to_their_handler_counted(monkeypatch):
    """hosting/protocol.py: a POST to a path given to ``serve_directly`` skips the stack below the
    connection but is counted by BentoML's request metrics; any other request, or any request
    before BentoML built its stack (no metrics middleware yet), goes down the whole stack."""
    calls = []

    async def direct(scope, receive, send):
        calls.append(("direct", scope["path"]))

    async def stack(scope, receive, send):
        calls.append(("stack", scope["method"], scope["path"]))

    class Metrics:
        async def count(self, scope, receive, send, endpoint, app):
            calls.append(("counted", endpoint))
            await app(scope, receive, send)

    monkeypatch.setattr(protocol, "_direct", {})
    protocol.serve_directly("/v1/embeddings", direct)
    lane = protocol._Lane(stack)
    monkeypatch.setattr(routes, "installed", lambda: Metrics())
    for method, path in [("POST", "/v1/embeddings"), ("GET", "/v1/embeddings"), ("POST", "/v1/models")]:
        asyncio.run(lane({"type": "http", "method": method, "path": path}, None, None))
    monkeypatch.setattr(routes, "installed", lambda: None)
    asyncio.run(lane({"type": "http", "method": "POST", "path": "/v1/embeddings"}, None, None))
    assert calls == [("counted", "/v1/embeddings"), ("direct", "/v1/embeddings"), ("stack", "GET", "/v1/embeddings"),
                     ("stack", "POST", "/v1/models"), ("stack", "POST", "/v1/embeddings")]
