"""Property-based tests (hypothesis) of the control plane: arbitrary JSON, and JSON shaped like the
real thing with hostile values, thrown at the admin endpoint and at the routing file.

The properties: the admin endpoint answers 200 (the change applied, here and in the file) or a
4xx naming a field, never a 5xx; after a 4xx the routing and the file are as before. A routing file
never makes the code the watcher runs raise (so the watcher cannot die of it: ``watch`` counts any
exception as ``internal``, and that count stays where it was); it applies each model's override
that passes the check and leaves every other model's routing as it was. Whatever was applied obeys
the invariants: finite weights from 0 to ``MAX_WEIGHT`` adding up to more than 0, a layout in
their shares, loaded variants only.

Bounded in time: a fixed number of examples from a fixed seed (``derandomize``), a few seconds.
"""

from __future__ import annotations

import asyncio
import json
import math

import hypothesis
import pytest
from hypothesis import strategies as st
from starlette.testclient import TestClient

from gateway import assignment
from gateway import routing as routing_module
from gateway.admission import Admission
from gateway.app import create_app
from gateway.auth import ApiKeys
from gateway.routing import MAX_WEIGHT, RoutingTable
from gateway.serving import EmbeddingServing
from tests.gateway.test_api_inprocess import mounted
from tests.gateway.test_routing import newer_replicas_change, sample, table

ADMIN = {"Authorization": "Bearer admin-key"}
SETTINGS = hypothesis.settings(max_examples=300, deadline=None, derandomize=True, database=None,
                               suppress_health_check=list(hypothesis.HealthCheck))

# ---- strategies ----

NAMES = st.sampled_from(["a", "b", "next", "default", "c", "", " a", "A"]) | st.text(max_size=8)
NUMBERS = (st.integers(min_value=-(2**70), max_value=2**70) | st.floats(allow_nan=True, allow_infinity=True)
           | st.sampled_from([0, 1, 0.5, 1e-300, 5e-324, MAX_WEIGHT, MAX_WEIGHT + 1, 1e300, 1e308]))
SCALARS = st.none() | st.booleans() | NUMBERS | st.text(max_size=8) | st.sampled_from(["NaN", "Infinity", "2", "0.5"])
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(NAMES, inner, max_size=4),
                    max_leaves=12)


def near(strategy):
    """``strategy`` most of the time, any JSON value sometimes."""
    return st.one_of(strategy, strategy, strategy, JSON)


WEIGHTS = st.dictionaries(NAMES, near(NUMBERS), max_size=4)
SHADOW = st.none() | st.fixed_dictionaries({"variant": near(NAMES), "fraction": near(NUMBERS)})
HOSTILE_CHANGES = st.fixed_dictionaries(
    {"model": near(st.sampled_from(["small", "wide", "nope"]))},
    optional={"weights": near(WEIGHTS), "default": near(NAMES), "shadow": near(SHADOW), "reset": near(st.booleans()),
              "revision": near(st.integers(min_value=-1, max_value=3))},
)
LOADED = st.sampled_from(["a", "b", "next"])
PLAUSIBLE_CHANGES = st.fixed_dictionaries(  # mostly valid: what an operator sends
    {"model": st.sampled_from(["small", "small", "small", "wide"])},
    optional={"weights": st.dictionaries(LOADED, st.integers(0, 5) | st.floats(0, 10) | st.sampled_from(
                  [5e-324, 1e-300, MAX_WEIGHT]), max_size=3),
              "default": LOADED, "shadow": st.none() | st.fixed_dictionaries({"variant": LOADED,
                                                                              "fraction": st.floats(0.001, 1)})},
)
CHANGES = PLAUSIBLE_CHANGES | HOSTILE_CHANGES | JSON


@st.composite
def layouts(draw, weights):
    """A layout: mostly the one the weights give (when they can give one), else anything."""
    if draw(st.booleans()):
        try:
            finite = {str(k): float(v) for k, v in weights.items()}
            return assignment.from_weights(finite).to_json()
        except (TypeError, ValueError, OverflowError, ZeroDivisionError, AttributeError):
            pass
    return draw(near(st.lists(st.tuples(near(st.integers(0, 2**33)), near(NAMES)), max_size=3)))


@st.composite
def overrides(draw):
    weights = draw(near(WEIGHTS))
    override = {"default": draw(near(NAMES)), "weights": weights,
                "layout": draw(layouts(weights if isinstance(weights, dict) else {})), "shadow": draw(near(SHADOW))}
    if draw(st.integers(0, 5)) == 0:
        override.pop(draw(st.sampled_from(sorted(override))))
    return override


HOSTILE_FILES = st.fixed_dictionaries(
    {"format": near(st.just(1)), "revision": near(st.integers(-2, 50) | st.sampled_from([2**63 - 1, 2**63, 2**64])),
     "models": near(st.dictionaries(st.sampled_from(["small", "wide", "gone"]) | NAMES, overrides(), max_size=3))},
    optional={"updated_at": near(st.text(max_size=4))},
)


@st.composite
def plausible_override(draw, names):
    """Mostly valid: what an admin change writes (the layout from the weights), over ``names``."""
    weights = draw(st.dictionaries(st.sampled_from(names), st.integers(0, 5) | st.floats(0, 10), min_size=1))
    try:
        layout = assignment.from_weights(weights).to_json()
    except ValueError:  # weights adding up to 0
        layout = [[assignment.SPACE, names[0]]]
    return {"default": draw(st.sampled_from(names)), "weights": weights, "layout": layout,
            "shadow": draw(st.none() | st.fixed_dictionaries({"variant": st.sampled_from(names),
                                                              "fraction": st.floats(0.001, 1)}))}


PLAUSIBLE_FILES = st.fixed_dictionaries(
    {"format": st.just(1), "revision": st.integers(6, 50),
     "models": st.fixed_dictionaries({}, optional={"small": plausible_override(["a", "b", "next", "c"]),
                                                   "wide": plausible_override(["default", "c"])})},
)
FILES = PLAUSIBLE_FILES | HOSTILE_FILES | JSON


def dumped(value) -> bytes:
    """``value`` as JSON text; NaN and infinities as JavaScript writes them (not JSON: refused)."""
    return json.dumps(value, allow_nan=True).encode()


# ---- invariants ----

def check_invariants(routing: RoutingTable) -> None:
    for name, route in routing.routes.items():
        assert all(math.isfinite(w) and 0 <= w <= MAX_WEIGHT for w in route.weights.values()), route.weights
        assert sum(route.weights.values()) > 0
        assert assignment.in_shares(route.layout, route.weights), (name, route.layout, route.weights)
        assert set(route.layout.share()) <= {n for n, w in route.weights.items() if w > 0}
        assert route.default.name in route.targets and set(route.layout.owners) <= set(route.targets)
        if route.shadow is not None:
            assert route.shadow.name in route.targets and 0 < route.fraction <= 1


def comparable(state: dict) -> dict:
    return {key: state[key] for key in ("revision", "models", "not_applied")}


# ---- the admin endpoint ----

@pytest.fixture(scope="module")
def admin_app(tmp_path_factory):
    path = tmp_path_factory.mktemp("routing-properties") / "routing.json"
    routing, _ = table(path)
    serving = EmbeddingServing(routing.served, routing, Admission(64, 1))
    client = TestClient(mounted(create_app(serving, ApiKeys((b"user-key",)), ApiKeys((b"admin-key",)))),
                        base_url="http://test/v1")
    client.routing, client.path = routing, path
    return client


def test_the_admin_endpoint_applies_a_change_or_refuses_it_with_a_4xx_that_changes_nothing(admin_app):
    outcomes = {"applied": 0, "refused": 0}
    internal = sample("embedding_routing_reload_errors_total", reason="internal")

    @SETTINGS
    @hypothesis.given(change=CHANGES)
    def check(change):
        routing, path = admin_app.routing, admin_app.path
        before, file_before = comparable(routing.state()), path.read_bytes() if path.exists() else None
        answer = admin_app.post("/admin/routing", content=dumped(change), headers=ADMIN)
        assert answer.status_code in (200, 400, 404, 409), (change, answer.status_code, answer.text)
        if answer.status_code == 200:
            outcomes["applied"] += 1
            state = answer.json()
            assert comparable(state) == comparable(routing.state()) and state["revision"] == before["revision"] + 1
            written = json.loads(path.read_text())
            assert written["revision"] == state["revision"]
            for name, route in routing.routes.items():
                assert written["models"].get(name) == (route.state() if route.source == "admin" else None)
            check_invariants(routing)
        else:
            outcomes["refused"] += 1
            error = answer.json()["error"]
            assert set(error) == {"message", "type", "param", "code"} and error["message"]
            assert error["param"] is not None or error["message"].startswith("The request body "), error
            assert comparable(routing.state()) == before
            assert (path.read_bytes() if path.exists() else None) == file_before

    check()
    print(f"\nadmin endpoint: {outcomes}")
    assert outcomes["applied"] >= 20 and outcomes["refused"] >= 100, outcomes  # both sides really explored
    assert sample("embedding_routing_reload_errors_total", reason="internal") == internal


# ---- the routing file ----

def test_a_routing_file_applies_what_passes_the_check_and_leaves_the_rest_as_it_was(tmp_path, monkeypatch):
    path = tmp_path / "routing.json"
    routing, _ = table(path)
    outcomes = {"applied": 0, "ignored": 0, "not_applied": 0}
    internal = sample("embedding_routing_reload_errors_total", reason="internal")

    @SETTINGS
    @hypothesis.given(content=FILES)
    def check(content):
        routing.revision = min(routing.revision, 5)  # so that the next example's revision can be newer
        before = {name: route.state() | {"source": route.source} for name, route in routing.routes.items()}
        applied = routing.apply_file(dumped(content))  # what the watcher runs: must not raise
        after = {name: route.state() | {"source": route.source} for name, route in routing.routes.items()}
        if not applied:
            outcomes["ignored"] += 1
            assert after == before
        for name in routing.targets if applied else ():
            override = content["models"].get(name)
            if name in routing.not_applied:
                outcomes["not_applied"] += 1
                assert after[name] == before[name]
            elif override is None:
                assert after[name]["source"] == "profile"
            else:
                outcomes["applied"] += 1
                assert after[name]["source"] == "admin" and after[name]["default"] == override["default"]
                assert after[name]["layout"] == [list(pair) for pair in override["layout"]]
        check_invariants(routing)

    check()
    print(f"\nrouting file: {outcomes}")
    assert outcomes["applied"] >= 10 and outcomes["not_applied"] >= 50 and outcomes["ignored"] >= 50, outcomes
    assert sample("embedding_routing_reload_errors_total", reason="internal") == internal

    # and the watcher itself, after all of that: alive, and it applies the next good file
    monkeypatch.setattr(routing_module, "WATCH_S", 0.01)

    async def watch_a_good_file():
        watcher = asyncio.get_running_loop().create_task(routing.watch())
        newer_replicas_change(path, 2**40, {"a": 1, "b": 3})
        for _ in range(300):
            if routing.revision == 2**40:
                break
            await asyncio.sleep(0.01)
        alive = not watcher.done()
        watcher.cancel()
        return alive

    assert asyncio.run(watch_a_good_file()) and routing.route("small").weights == {"a": 1, "b": 3, "next": 0}
