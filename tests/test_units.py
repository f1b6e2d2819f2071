"""Unit tests of the small pieces: request parsing, pooling, sub-batching, wire format,
provider choice, API keys and admission."""


import numpy as np
import pytest

from core.errors import InvalidRequest, Overloaded, Unauthorized
from core.settings import Settings
from core.wire import Job, JobError, JobFailure, WireError, pack_call, pack_results, unpack_call, unpack_results
from gateway.admission import Admission
from gateway.auth import ApiKeys, load_keys
from gateway.parsing import parse_request
from gateway.protocol import RerankRequest
from models.schema import Pooling
from runners.ort.engine import token_budget_batches
from runners.pooling import normalize, pool


@pytest.mark.parametrize(
    "body, expected",
    [
        (b'{"model":"m","input":"hi"}', "hi"),
        (b'{"model":"m","input":["a","b"]}', ["a", "b"]),
        (b'{"model":"m","input":[1,2,3]}', [1, 2, 3]),
        (b'{"model":"m","input":[[1],[2,3]]}', [[1], [2, 3]]),
    ],
)
def test_input_shapes_of_the_openai_spec(body, expected):
    assert parse_request(body).input == expected


@pytest.mark.parametrize(
    "body, param, fragment",
    [
        (b"{not json", None, "not a valid JSON object"),
        (b"[1,2]", None, "not a valid JSON object"),
        (b'{"input":"hi"}', "model", "'model' is a required property"),
        (b'{"model":"m"}', "input", "'input' is a required property"),
        (b'{"model":"m","input":[1,"a"]}', "input", "'input' must be"),
        (b'{"model":"m","input":[1.5]}', "input", "'input' must be"),
        (b'{"model":"m","input":[true]}', "input", "'input' must be"),
        (b'{"model":"m","input":[-3]}', "input", "from 0 to"),
        (b'{"model":"m","input":{"text":"x"}}', "input", "'input' must be"),
        (b'{"model":"m","input":"x","encoding_format":"int8"}', "encoding_format", "Invalid value"),
        (b'{"model":"m","input":"x","dimensions":0}', "dimensions", "Invalid value"),
        (b'{"model":"m","input":"x","temperature":1}', "temperature", "Unrecognized request argument"),
        (b'{"model":7,"input":"x"}', "model", "Invalid value"),
        (b'{"model":"m","input":[9999999999999999999]}', "input", "from 0 to"),  # 64 bits (unsigned)
        (b'{"model":"m","input":[99999999999999999999]}', "input", "outside the 64-bit range"),
        (b'{"model":"m","input":[101, 1e400, 102]}', "input", "outside the 64-bit range"),
        (b'{"model":"m","input":"x","dimensions":1e400}', "dimensions", "outside the 64-bit range"),
        (b'{"model":"m","input":"x","dimensions":100000000000000000000}', "dimensions", "outside the 64-bit range"),
        (b'{"model":"m","input":"x","dimensions":1e20}', "dimensions", "Invalid value"),
        (b'{"model":"m","input":[01]}', "input", "not valid JSON"),
        (b'{"model":"m","input":[1, NaN, 1e400]}', None, "not a valid JSON object"),
        (b'{"model":"m","input":"x","truncate":"yes"}', "truncate", "Invalid value"),
    ],
)
def test_bad_bodies_name_the_field(body, param, fragment):
    with pytest.raises(InvalidRequest) as info:
        parse_request(body)
    assert info.value.param == param and fragment in info.value.message
    assert info.value.body()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("body, param", [
    (b'{"model":"m","query":"q","documents":["d"],"top_n":100000000000000000000}', "top_n"),
    (b'{"model":"m","query":"q","documents":["d"],"top_n":1e400}', "top_n"),
    (b'{"model":"m","query":"q","documents":["d"],"top_n":1e20}', "top_n"),
])
def test_rerank_numbers_out_of_range_name_their_field(body, param):
    """Finding 7 of issue 20: these were 400s with param null."""
    with pytest.raises(InvalidRequest) as info:
        parse_request(body, RerankRequest)
    assert info.value.param == param, info.value.message


def test_pooling_modes_respect_the_mask():
    hidden = np.arange(2 * 3 * 2, dtype=np.float32).reshape(2, 3, 2)
    right = np.array([[1, 1, 0], [1, 1, 1]])
    left = np.array([[0, 1, 1], [1, 1, 1]])
    np.testing.assert_allclose(pool(hidden, right, Pooling.MEAN), [[1, 2], [8, 9]])
    np.testing.assert_allclose(pool(hidden, right, Pooling.CLS), [[0, 1], [6, 7]])
    np.testing.assert_allclose(pool(hidden, right, Pooling.LAST), [[2, 3], [10, 11]])
    np.testing.assert_allclose(pool(hidden, left, Pooling.LAST), [[4, 5], [10, 11]])
    unit = normalize(np.array([[3.0, 4.0], [0.0, 0.0]]))
    np.testing.assert_allclose(unit, [[0.6, 0.8], [0.0, 0.0]])


def test_token_budget_batches_sort_and_bound_padding():
    lengths = [5, 1, 100, 3, 5, 2]
    batches = token_budget_batches(lengths, 12, None, 32)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for batch in batches:
        longest = max(lengths[i] for i in batch)
        assert len(batch) * longest <= 12 or len(batch) == 1
    assert batches[-1] == [2]  # the over-long input runs alone
    assert [lengths[i] for i in batches[0]] == [1, 2, 3]


def test_token_budget_batches_do_not_pad_short_inputs_to_long_ones():
    lengths = [256, 8, 250, 9, 240, 10, 8, 12]
    batches = token_budget_batches(lengths, 16384, None, 32)
    assert [sorted(lengths[i] for i in b) for b in batches] == [[8, 8, 9, 10, 12], [240, 250, 256]]
    assert token_budget_batches([128] * 8, 16384, None, 32) == [list(range(8))]  # equal: one call


def test_token_budget_batches_are_the_cheapest_grouping():
    """Against every contiguous grouping of the sorted lengths (brute force): no other grouping
    within the bounds has fewer padded tokens plus the cost of its calls."""
    import itertools
    import random

    def cost(groups, call_cost):
        return sum(call_cost + len(g) * max(g) for g in groups)

    rng = random.Random(7)
    for _ in range(200):
        lengths = [rng.choice([rng.randint(1, 16), rng.randint(8, 300)]) for _ in range(rng.randint(1, 8))]
        budget, max_rows, call_cost = rng.choice([64, 512, 4096]), rng.choice([None, 2, 3]), rng.choice([0, 32, 500])
        ours = [[lengths[i] for i in b] for b in token_budget_batches(lengths, budget, max_rows, call_cost)]
        ordered = sorted(lengths)
        assert sorted(x for g in ours for x in g) == ordered
        assert all(_fits(g, budget, max_rows) for g in ours)
        best = min(
            cost(groups, call_cost)
            for cuts in itertools.product([False, True], repeat=len(ordered) - 1)
            for groups in [_split(ordered, cuts)]
            if all(_fits(g, budget, max_rows) for g in groups)
        )
        assert cost(ours, call_cost) == best, (lengths, budget, max_rows, call_cost, ours)


def _fits(group: list[int], budget: int, max_rows: int | None) -> bool:
    """Within the token budget (or alone) and the row limit."""
    return (len(group) == 1 or len(group) * max(group) <= budget) and (max_rows is None or len(group) <= max_rows)


def _split(values: list[int], cuts: tuple[bool, ...]) -> list[list[int]]:
    groups = [[values[0]]]
    for value, cut in zip(values[1:], cuts, strict=True):
        groups.append([value]) if cut else groups[-1].append(value)
    return groups


def test_a_call_round_trips_through_the_wire_format():
    page = np.random.default_rng(0).integers(0, 256, (28, 56, 3), dtype=np.uint8)
    jobs = [Job("a", None, np.asarray([101, 7, 102]), 1.5), Job("b", "int8", np.asarray([101, 102]), 2.25),
            Job("pages", None, page, 3.0), Job("a", None, np.asarray([101, 9, 9, 102]), 4.0)]
    body = pack_call(jobs)
    assert body[:4] == b"EMBC" and np.asarray([101, 7, 102, 101, 102], "<i4").tobytes() in body  # int32 ids
    assert page.tobytes() in body
    back = unpack_call(body)
    assert [(j.model, j.variant, j.sent_at) for j in back] == [(j.model, j.variant, j.sent_at) for j in jobs]
    assert [j.value.tolist() for j in back[:2] + back[3:]] == [[101, 7, 102], [101, 102], [101, 9, 9, 102]]
    assert back[0].value.dtype == np.int32 and (back[2].value == page).all()


def test_results_round_trip_float32_little_endian_with_failures_in_place():
    vector, matrix = np.array([0.5, -1.25, 3.0], np.float32), np.arange(6, dtype=np.float32).reshape(2, 3)
    body = pack_results([vector, JobError(JobFailure.ENGINE, "boom"), matrix])
    assert vector.astype("<f4").tobytes() + matrix.astype("<f4").tobytes() in body
    first, failed, rows = unpack_results(body)
    np.testing.assert_array_equal(first, vector)
    assert failed == JobError(JobFailure.ENGINE, "boom")
    np.testing.assert_array_equal(rows.reshape(-1, 3), matrix)


@pytest.mark.parametrize("change, message", [
    (lambda b: b[:3], "shorter than the wire format's prefix"),
    (lambda b: b"EMBR" + b[4:], "not b'EMBC'"),
    (lambda b: b[:-1], "shorter than its header says"),
    (lambda b: b + b"\0", "follow the last array"),
    (lambda b: b.replace(b'"n":2', b'"n":9'), "shorter than its header says"),
    (lambda b: b.replace(b'"targets":[["a",null]]', b'"targets":[["a",7]]   '), "'targets' is not"),
])
def test_a_malformed_call_is_a_wire_error(change, message):
    body = pack_call([Job("a", None, np.asarray([1, 2]), 0.0), Job("a", None, np.asarray([3]), 0.0)])
    with pytest.raises(WireError, match=message):
        unpack_call(change(body))


def test_a_call_whose_arrays_disagree_with_its_header_is_a_wire_error():
    jobs = [Job("a", None, np.asarray([1, 2]), 0.0), Job("pages", None, np.zeros((28, 28, 3), np.uint8), 0.0)]
    body = bytearray(pack_call(jobs))
    start = body.index(b"}") + 1
    start += -start % 8  # the arrays: sent_at f8[2], target i4[2], image i4[2], offsets i4[3], ...
    offsets = start + 16 + 8 + 8
    body[offsets + 4:offsets + 8] = np.int32(1).tobytes()  # offsets [0, 1, 2]: the image job gets an id too
    with pytest.raises(WireError, match="both token ids and an image"):
        unpack_call(bytes(body))
    body[offsets + 4:offsets + 8] = np.int32(3).tobytes()  # offsets [0, 3, 2] no longer grow
    with pytest.raises(WireError, match="do not start at 0 and grow"):
        unpack_call(bytes(body))


def test_api_keys(tmp_path):
    keyfile = tmp_path / "keys"
    keyfile.write_text("# team keys\nfile-key\n\n")
    keys = ApiKeys(load_keys(Settings(api_keys="env-key, other", api_keys_file=keyfile)))
    for good in ("Bearer env-key", "bearer other", "Bearer file-key"):
        keys.check(good)
    for bad in (None, "", "Bearer", "Bearer wrong", "Basic env-key", "env-key"):
        with pytest.raises(Unauthorized):
            keys.check(bad)
    ApiKeys(()).check(None)  # no keys configured: open


def test_admission_bounds_inflight_inputs():
    admission = Admission(max_inflight_inputs=10, retry_after_s=2)
    with admission.admit(6):
        with admission.admit(4):
            assert admission.inflight == 10
            with pytest.raises(Overloaded) as info:
                with admission.admit(1):
                    pass
            assert info.value.status == 429 and info.value.headers == {"Retry-After": "2"}
    assert admission.inflight == 0


def test_direct_routes_go_from_the_connection_to_their_handler_counted(monkeypatch):
    """hosting/protocol.py: a POST to a path given to ``serve_directly`` skips the stack below the
    connection but is counted by BentoML's request metrics; any other request, or any request
    before BentoML built its stack (no metrics middleware yet), goes down the whole stack."""
    import asyncio

    from hosting import protocol, routes

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


@pytest.mark.parametrize("tracing", [False, True])
def test_the_gateway_serves_its_hot_routes_directly_only_with_tracing_off(monkeypatch, tracing):
    """With EMBED_TRACING=1 the hot routes keep BentoML's OpenTelemetry middleware (their spans)."""
    from gateway.edge import DIRECT, Edge
    from hosting import protocol

    monkeypatch.setattr(protocol, "_direct", {})
    monkeypatch.setattr("gateway.edge.settings", lambda: Settings(tracing=tracing))
    edge = Edge(None, ApiKeys(()), v1=object())
    assert protocol._direct == ({} if tracing else {path: edge for path in DIRECT})
