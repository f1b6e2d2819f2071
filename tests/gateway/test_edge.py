"""The gateway's edge (gateway/edge.py): its hot routes take the direct lane only with tracing off."""

import pytest

from core.settings import Settings
from gateway.auth import ApiKeys


@pytest.mark.parametrize("tracing", [False, True])
def test_the_gateway_serves_its_hot_routes_directly_only_with_tracing_off(monkeypatch, tracing):
    """With EMBED_TRACING=1 the hot routes keep BentoML's OpenTelemetry middleware (their spans)."""
    from gateway.edge import DIRECT, Edge
    from hosting import protocol

    monkeypatch.setattr(protocol, "_direct", {})
    monkeypatch.setattr("gateway.edge.settings", lambda: Settings(tracing=tracing))
    edge = Edge(None, ApiKeys(()), v1=object())
    assert protocol._direct == ({} if tracing else {path: edge for path in DIRECT})
