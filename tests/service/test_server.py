"""The real server (``bentoml serve`` of the gateway and the ORT runner) through the official
OpenAI client and raw HTTP: vectors against sentence-transformers, every error case, health,
metrics and the OpenAPI document."""

import json
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest

from tests.support import doc_examples
from tests.support.servers import API_KEY

pytestmark = pytest.mark.server

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Embeddings map text to vectors.",
    "A much longer passage about serving several embedding models on one GPU node behind a single "
    "OpenAI-compatible endpoint, routed by the model field, with adaptive batching and metrics.",
    "short",
]
GOLDEN = Path(__file__).parent / "golden" / "openapi.json"


def cosine(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key=API_KEY, max_retries=0)


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30) as c:
        yield c


def test_openai_sdk_default_base64_matches_sentence_transformers(client, reference_model):
    response = client.embeddings.create(model="all-MiniLM-L6-v2", input=TEXTS)  # SDK asks for base64
    reference = reference_model.encode(TEXTS, normalize_embeddings=True)
    assert [d.index for d in response.data] == list(range(len(TEXTS)))
    for item, expected in zip(response.data, reference, strict=True):
        assert len(item.embedding) == 384
        assert cosine(item.embedding, expected) >= 0.999
    assert response.model == "all-MiniLM-L6-v2"
    assert response.usage.prompt_tokens == response.usage.total_tokens > len(TEXTS) * 2


def test_openai_sdk_float_equals_base64(client):
    floats = client.embeddings.create(model="all-MiniLM-L6-v2", input=TEXTS, encoding_format="float")
    packed = client.embeddings.create(model="sentence-transformers/all-MiniLM-L6-v2", input=TEXTS)
    for a, b in zip(floats.data, packed.data, strict=True):
        np.testing.assert_allclose(a.embedding, b.embedding, rtol=1e-6, atol=1e-7)
    assert np.isclose(np.linalg.norm(floats.data[0].embedding), 1.0, atol=1e-5)


def test_usage_counts_real_tokens(http, reference_model):
    tokenizer = reference_model.tokenizer
    body = http.post("/v1/embeddings", json={"model": "all-MiniLM-L6-v2", "input": TEXTS}).json()
    expected = sum(len(tokenizer(t)["input_ids"]) for t in TEXTS)
    assert body["usage"] == {"prompt_tokens": expected, "total_tokens": expected}


def test_token_ids_equal_the_text_they_encode(http, reference_model):
    ids = reference_model.tokenizer(TEXTS[0])["input_ids"]
    by_ids = http.post("/v1/embeddings", json={"model": "all-MiniLM-L6-v2", "input": ids}).json()
    by_text = http.post("/v1/embeddings", json={"model": "all-MiniLM-L6-v2", "input": TEXTS[0]}).json()
    assert cosine(by_ids["data"][0]["embedding"], by_text["data"][0]["embedding"]) >= 0.99999


def test_long_input_truncates_at_256_or_is_refused(http):
    text = "token " * 600
    ok = http.post("/v1/embeddings", json={"model": "all-MiniLM-L6-v2", "input": text}).json()
    assert ok["usage"]["prompt_tokens"] == 256
    refused = http.post("/v1/embeddings", json={"model": "all-MiniLM-L6-v2", "input": text, "truncate": False})
    assert refused.status_code == 400 and "256" in refused.json()["error"]["message"]


def error(response, status, code=None):
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    if code:
        assert body["error"]["code"] == code
    return body["error"]


@pytest.mark.parametrize(
    "payload, status, code",
    [
        ({"model": "gpt-4", "input": "x"}, 404, "model_not_found"),
        ({"model": "all-MiniLM-L6-v2", "input": []}, 400, None),
        ({"model": "all-MiniLM-L6-v2", "input": ""}, 400, None),
        ({"model": "all-MiniLM-L6-v2", "input": ["a", ""]}, 400, None),
        ({"model": "all-MiniLM-L6-v2", "input": ["x"] * 2049}, 400, None),
        ({"model": "all-MiniLM-L6-v2", "input": [100257, 3]}, 400, None),  # tiktoken ids
        ({"model": "all-MiniLM-L6-v2", "input": [[9906, 1917]]}, 400, None),  # tiktoken ids inside the vocabulary
        ({"model": "all-MiniLM-L6-v2", "input": [[1], "a"]}, 400, None),
        ({"model": "all-MiniLM-L6-v2", "input": 42}, 400, None),
        ({"model": "all-MiniLM-L6-v2", "input": "x", "dimensions": 128}, 400, None),
        ({"model": "all-MiniLM-L6-v2", "input": "x", "encoding_format": "binary"}, 400, None),
        ({"input": "x"}, 400, None),
    ],
)
def test_bad_requests_get_openai_errors_never_500(http, payload, status, code):
    error(http.post("/v1/embeddings", json=payload), status, code)


def test_malformed_and_oversized_bodies(http):
    error(http.post("/v1/embeddings", content=b'{"model": "all-Mi', headers={"Content-Type": "application/json"}), 400)
    error(http.post("/v1/embeddings", content=b"model=x", headers={"Content-Type": "text/plain"}), 400)
    big = json.dumps({"model": "all-MiniLM-L6-v2", "input": "x" * (17 * 1024 * 1024)})
    error(http.post("/v1/embeddings", content=big, headers={"Content-Type": "application/json"}), 413,
          "payload_too_large")


def test_api_key_is_required_on_v1_only(server):
    payload = {"model": "all-MiniLM-L6-v2", "input": "x"}
    error(httpx.post(f"{server}/v1/embeddings", json=payload), 401, "invalid_api_key")
    error(httpx.get(f"{server}/v1/models", headers={"Authorization": "Bearer nope"}), 401, "invalid_api_key")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server}/v1", api_key="wrong", max_retries=0).embeddings.create(
            model="all-MiniLM-L6-v2", input="x"
        )
    for path in ("/livez", "/readyz", "/metrics"):
        assert httpx.get(f"{server}{path}").status_code == 200


def test_models_endpoint(client):
    models = {m.id: m for m in client.models.list().data}
    card = models["all-MiniLM-L6-v2"].model_dump()
    assert card["dimensions"] == 384 and card["max_tokens"] == 256 and card["engine"] == "ort"
    assert card["aliases"] == ["sentence-transformers/all-MiniLM-L6-v2"]


def test_metrics_have_model_labels(http):
    http.post("/v1/embeddings", json={"model": "all-MiniLM-L6-v2", "input": ["metrics", "please"]})
    http.post("/v1/embeddings", json={"model": "no-such-model", "input": "x"})
    httpx.post(f"{http.base_url}/v1/embeddings", json={"model": "all-MiniLM-L6-v2", "input": "x"})  # no key
    text = httpx.get(f"{http.base_url}/metrics").text
    for line in (
        'embedding_requests_total{model="all-MiniLM-L6-v2",status="200",variant="default"}',
        'embedding_requests_total{model="unknown",status="404",variant="none"}',
        'embedding_requests_total{model="unknown",status="401",variant="none"}',
        'embedding_input_tokens_total{model="all-MiniLM-L6-v2",variant="default"}',
        'embedding_batch_size_bucket{le="1.0",model="all-MiniLM-L6-v2",variant="default"}',
        'embedding_batch_tokens_count{model="all-MiniLM-L6-v2",variant="default"}',
        'embedding_queue_wait_seconds_count{model="all-MiniLM-L6-v2",variant="default"}',
        'embedding_engine_duration_seconds_count{model="all-MiniLM-L6-v2",variant="default"}',
        'embedding_request_duration_seconds_count{model="all-MiniLM-L6-v2",variant="default"}',
        "embedding_inflight_inputs",
    ):
        assert line in text, line
    # BentoML's own metrics stay, the hot route's too (hosting/protocol.py serves it directly)
    assert 'bentoml_service_request_total{endpoint="/v1/embeddings",http_response_code="200"' in text
    assert 'bentoml_service_request_total{endpoint="/v1/embeddings",http_response_code="404"' in text


def test_openapi_matches_the_golden_file(http):
    live = http.get("/v1/openapi.json").json()
    assert live == json.loads(GOLDEN.read_text()), "public contract changed: review it, then run make openapi"


@pytest.mark.parametrize("example", doc_examples.examples("cpu"), ids=str)
def test_documented_example_runs_as_written(server, example):
    """README.md's and docs/api.md's examples for the default profile, each as a reader runs it
    (with the test server's URL and key), answering as the doc shows (tests/support/doc_examples.py)."""
    doc_examples.check(example, server, api_key=API_KEY)
