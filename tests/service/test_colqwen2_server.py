"""A real ``bentoml serve`` with all-MiniLM-L6-v2 and the tiny random ColQwen2 (ONNX Runtime
runner only): queries, images of four aspect ratios and PDF pages on /v1/embeddings (float and
base64) against the reference (``ColQwen2Processor`` and Qwen2-VL called with input_ids,
pixel_values, image_grid_thw and mm_token_type_ids: M-RoPE positions; ``export/colqwen2.py``),
/v1/rerank (MaxSim and cosine) against references computed from returned vectors, every limit
and bad input as its 400, and concurrent mixed requests coming back unmixed.

The server reads a test registry (the shipped models, a profile of these two, small image
limits) through ``EMBED_REGISTRY``, so it needs neither vLLM nor the ``cpu-all`` profile's
other models; the fixture imports missing models with ``python -m export ensure`` first.
"""

from __future__ import annotations

import base64
import concurrent.futures
import os
import subprocess
import sys

import httpx
import numpy as np
import openai
import pytest
import yaml
from PIL import Image

from tests.support.pages import data_url, image_part, page, pdf_part
from tests.support.servers import ROOT, bentoml_server

pytestmark = pytest.mark.server

MODEL = "colqwen2-tiny-random"
LIMITS = {"EMBED_MAX_IMAGES_PER_REQUEST": "6", "EMBED_MAX_IMAGE_BYTES": "300000", "EMBED_MAX_IMAGE_PIXELS": "4000000"}


def rows(item: dict) -> np.ndarray:
    return np.asarray(item["embedding"], dtype=np.float32)


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> str:
    registry = yaml.safe_load((ROOT / "models" / "registry.yaml").read_text())
    registry["profiles"] = {"vision-test": {"models": ["all-MiniLM-L6-v2", MODEL],
                                            "runners": registry["profiles"]["cpu"]["runners"]}}
    path = tmp_path_factory.mktemp("registry") / "registry.yaml"
    path.write_text(yaml.safe_dump(registry))
    env = {"EMBED_REGISTRY": str(path), "EMBED_PROFILE": "vision-test", **LIMITS}
    ensure = subprocess.run([sys.executable, "-m", "export", "ensure"], cwd=ROOT, env={**os.environ, **env},
                            capture_output=True, text=True, timeout=600)
    assert ensure.returncode == 0, ensure.stderr
    with bentoml_server(env, path.parent / "serve.log") as url:
        yield url


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def reference():
    """The tiny model in PyTorch (same seed as the export) and its ColQwen2Processor."""
    from export.colqwen2 import Loaded, tiny_random

    return Loaded(*tiny_random(), revision="", random_weights=True)


def embed(http, inputs, **extra) -> dict:
    response = http.post("/v1/embeddings", json={"model": MODEL, "input": inputs, **extra})
    assert response.status_code == 200, response.text
    return response.json()


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    return float(np.linalg.norm(actual - expected) / np.linalg.norm(expected))


def render(part: dict, number: int) -> Image.Image:
    """Page ``number`` of a PDF part as the gateway renders it (the registry's pdf_dpi: 72)."""
    import pypdfium2 as pdfium

    document = pdfium.PdfDocument(base64.b64decode(part["file"]["file_data"].split(",", 1)[1]))
    return document[number - 1].render(scale=72 / 72).to_pil().convert("RGB")


def test_served_vectors_equal_the_reference_for_four_aspect_ratios_a_pdf_page_and_queries(http, reference):
    """Pages are resized as ColQwen2Processor does (aspect kept, any size within the registry's
    pixels) and embedded with M-RoPE positions: each served page equals the reference computed
    from the original image (relative error <= 1e-3), in one request of mixed sizes."""
    from export.colqwen2 import reference_pages, reference_queries

    shapes = {"A4 portrait": (595, 842), "A4 landscape": (842, 595), "square": (500, 500), "3:1": (600, 200)}
    originals = [page((250 - 40 * i, 240, 230), size=size, label=name) for i, (name, size) in enumerate(shapes.items())]
    pdf = pdf_part([page((200, 0, 0), size=(595, 842)), page((0, 200, 0), size=(842, 595))], [2])
    queries = ["Which page shows revenue?", "a query that spells <|image_pad|>"]  # the special token stays text
    body = embed(http, [queries[0], *[image_part(o) for o in originals], pdf, queries[1],
                        image_part(originals[0], "WEBP")])
    data = body["data"]
    assert [d["index"] for d in data] == list(range(8))
    assert [d.get("page") for d in data] == [None] * 5 + [2, None, None]
    for item in data:
        matrix = rows(item)
        assert matrix.shape == tuple(item["shape"]) and matrix.shape[1] == 128
        np.testing.assert_allclose(np.linalg.norm(matrix, axis=1), 1.0, atol=1e-5)
    expected = reference_pages(reference, [*originals, render(pdf, 2)])
    served = [rows(d) for d in data[1:6]]
    # resized to 252x168, 168x252, 224x224, 112x364 (aspect kept, not one bucket): 12 prompt tokens + the grid
    assert [m.shape[0] for m in served[:4]] == [12 + 9 * 6, 12 + 6 * 9, 12 + 8 * 8, 12 + 4 * 13]
    for ours, wanted in zip(served, expected, strict=True):
        assert ours.shape == wanted.shape and relative_error(ours, wanted) < 1e-3
    for ours, wanted in zip([rows(data[0]), rows(data[6])], reference_queries(reference, queries), strict=True):
        assert ours.shape == wanted.shape and relative_error(ours, wanted) < 1e-3  # formatted as the processor
    assert rows(data[7]).shape == rows(data[1]).shape  # a lossy WebP of the same page: same size
    tokens = sum(d["shape"][0] for d in data)
    assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}


def test_a_pdf_page_equals_the_same_page_sent_as_png(http):
    part = pdf_part([page((10, 10, 10)), page((120, 200, 40), size=(300, 200))], [2])
    by_pdf, by_png = embed(http, [part, image_part(render(part, 2))])["data"]
    np.testing.assert_allclose(rows(by_pdf), rows(by_png), atol=1e-6)


def test_openai_sdk_base64_and_float_carry_the_same_rows_with_shape(server, http):
    client = openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0)
    texts = ["short", "a much longer query about the tables on page three of the report"]
    packed = client.embeddings.create(model=MODEL, input=texts)  # the SDK asks for base64 and decodes it
    floats = embed(http, texts)["data"]
    for sdk_item, float_item in zip(packed.data, floats, strict=True):
        tokens, dim = sdk_item.model_extra["shape"]
        assert (tokens, dim) == tuple(float_item["shape"]) and dim == 128
        np.testing.assert_allclose(np.reshape(sdk_item.embedding, (tokens, dim)), rows(float_item), atol=1e-6)
    raw = embed(http, [image_part(page((1, 2, 3)))], encoding_format="base64")["data"][0]
    matrix = np.frombuffer(base64.b64decode(raw["embedding"]), dtype="<f4").reshape(raw["shape"])
    assert matrix.shape == (60, 128)


def test_rerank_maxsim_equals_the_reference_from_returned_vectors(http):
    documents = [image_part(page((200, 30, 30))), "revenue table",
                 pdf_part([page((30, 30, 200)), page((5, 5, 5))], [1]),
                 image_part(page((30, 200, 30), size=(224, 168)))]
    query = "where is the revenue table?"
    vectors = [rows(d) for d in embed(http, [query, *documents])["data"]]
    expected = [float((vectors[0].astype(np.float64) @ d.astype(np.float64).T).max(axis=1).sum()) for d in vectors[1:]]
    response = http.post("/v1/rerank", json={"model": MODEL, "query": query, "documents": documents, "top_n": 3})
    assert response.status_code == 200, response.text
    body = response.json()
    order = sorted(range(len(expected)), key=lambda i: -expected[i])[:3]
    assert [r["index"] for r in body["results"]] == order
    np.testing.assert_allclose([r["relevance_score"] for r in body["results"]], [expected[i] for i in order], rtol=1e-5)
    for result in body["results"]:  # each document echoed as sent (a text as {"text": ...})
        sent = documents[result["index"]]
        assert result["document"] == ({"text": sent} if isinstance(sent, str)
                                      else {k: v for k, v in sent.items() if k != "type"})
    assert body["model"] == MODEL and body["usage"]["total_tokens"] == sum(len(v) for v in vectors)
    bare = http.post("/v1/rerank", json={"model": MODEL, "query": query, "documents": documents[:2],
                                         "return_documents": False}).json()
    assert all("document" not in r for r in bare["results"]) and len(bare["results"]) == 2


def test_rerank_of_a_dense_model_is_cosine(http):
    documents = ["A man is eating food.", "A man is riding a horse.", "Stock markets fell sharply."]
    query = "Someone is having a meal."
    vectors = http.post("/v1/embeddings",
                        json={"model": "all-MiniLM-L6-v2", "input": [query, *documents]}).json()["data"]
    v = [np.asarray(d["embedding"], dtype=np.float64) for d in vectors]
    expected = [float(v[0] @ d / np.linalg.norm(v[0]) / np.linalg.norm(d)) for d in v[1:]]
    body = http.post("/v1/rerank", json={"model": "all-MiniLM-L6-v2", "query": query, "documents": documents}).json()
    assert [r["index"] for r in body["results"]] == sorted(range(3), key=lambda i: -expected[i])
    np.testing.assert_allclose([r["relevance_score"] for r in body["results"]],
                               sorted(expected, reverse=True), rtol=1e-5)
    assert body["results"][0]["document"] == {"text": documents[body["results"][0]["index"]]}


def _corrupt_png() -> str:
    return "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 64).decode()


def _bomb() -> str:  # 5000 x 5000 pixels in a few KB: over EMBED_MAX_IMAGE_PIXELS
    return data_url(Image.new("L", (5000, 5000)))


def test_rerank_is_counted_like_embeddings(http):
    def inputs_total() -> float:
        for line in http.get("/metrics").text.splitlines():
            if line.startswith('embedding_inputs_total{model="all-MiniLM-L6-v2",variant="default"}'):
                return float(line.split()[-1])
        return 0.0

    before = inputs_total()
    body = {"model": "all-MiniLM-L6-v2", "query": "q", "documents": ["a", "b"]}
    assert http.post("/v1/rerank", json=body).status_code == 200
    assert inputs_total() == before + 3  # the query and both documents


@pytest.mark.parametrize(
    "path, body, param, code",
    [
        ("/v1/embeddings", {"input": [{"type": "image_url", "image_url": {"url": "https://x.org/a.png"}}]},
         "input[0]", "invalid_request"),
        ("/v1/embeddings",
         {"input": ["q", {"type": "image_url", "image_url": {"url": "data:image/gif;base64,R0lGODlh"}}]},
         "input[1]", "unsupported_media_type"),
        ("/v1/embeddings", {"input": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,***"}}]},
         "input[0]", "invalid_request"),
        ("/v1/embeddings", {"input": [{"type": "image_url", "image_url": {"url": _corrupt_png()}}]}, "input[0]",
         "invalid_image"),
        ("/v1/embeddings", {"input": [{"type": "image_url", "image_url": {"url": _bomb()}}]}, "input[0]",
         "image_too_large"),
        ("/v1/embeddings",
         {"input": [{"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 420_000}}]},
         "input[0]", "image_too_large"),
        ("/v1/embeddings", {"input": [image_part(page((1, 1, 1)))] * 7}, "input", "too_many_images"),
        ("/v1/embeddings", {"input": [pdf_part([page((1, 1, 1))] * 7)]}, "input[0]", "too_many_images"),
        ("/v1/embeddings", {"input": [pdf_part([page((1, 1, 1))] * 6), image_part(page((1, 1, 1)))]}, "input",
         "too_many_images"),
        ("/v1/embeddings", {"input": [pdf_part([page((1, 1, 1))] * 2, [3])]}, "input[0]", "invalid_request"),
        ("/v1/embeddings",
         {"input": [{"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0xLjcKbm9wZQ=="}}]},
         "input[0]", "invalid_file"),
        ("/v1/embeddings", {"input": [{"type": "file", "file": {"file_data": data_url(page((1, 1, 1)))}}]},
         "input[0]", "unsupported_media_type"),
        ("/v1/embeddings", {"input": [[1, 2, 3]]}, "input", "invalid_request"),
        ("/v1/embeddings", {"input": ["q"], "input_type": "document"}, "input_type", "invalid_request"),
        ("/v1/embeddings", {"input": ["q"], "dimensions": 64}, "dimensions", "invalid_request"),
        ("/v1/embeddings", {"model": "all-MiniLM-L6-v2", "input": [image_part(page((1, 1, 1)))]}, "input[0]",
         "invalid_request"),
        ("/v1/rerank", {"query": "q", "documents": [pdf_part([page((1, 1, 1))] * 2)]}, "documents", "invalid_request"),
        ("/v1/rerank", {"query": "q", "documents": [{"type": "video"}]}, "documents", "invalid_request"),
        ("/v1/rerank", {"query": "", "documents": ["a"]}, "query", "invalid_request"),
    ],
    ids=["remote-url", "gif", "bad-base64", "corrupt-png", "pixel-bomb", "too-many-bytes", "too-many-images",
         "too-many-pages", "pages-then-image", "missing-page", "corrupt-pdf", "file-not-pdf", "token-ids",
         "document-text", "dimensions", "image-to-text-model", "rerank-two-pages", "rerank-bad-part",
         "rerank-empty-query"],
)
def test_limits_and_bad_inputs_are_openai_shaped_400s(http, path, body, param, code):
    response = http.post(path, json={"model": MODEL, **body})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param and error["code"] == code
    assert error["message"]


def test_concurrent_mixed_requests_come_back_unmixed(http):
    """24 requests at once (queries, images of many sizes, PDF pages, one corrupt image): each
    answer equals the same request sent alone; the corrupt one alone fails."""
    requests = []
    for i in range(24):
        if i % 4 == 0:
            requests.append([f"query number {i} about page {i % 5}"])
        elif i % 4 == 1:
            requests.append([image_part(page((10 * i, 255 - 10 * i, 40), size=(150 + 20 * i, 400 - 10 * i)))])
        elif i % 4 == 2:
            requests.append([f"mixed {i}", pdf_part([page((i, 2 * i, 3 * i)), page((9 * i, 0, 0))], [2])])
        else:
            requests.append([image_part(page((5 * i, 5 * i, 250)), "JPEG"), f"after image {i}"])
    requests[13] = [{"type": "image_url", "image_url": {"url": _corrupt_png()}}]
    alone = [http.post("/v1/embeddings", json={"model": MODEL, "input": r}) for r in requests]
    with concurrent.futures.ThreadPoolExecutor(24) as pool:
        together = list(pool.map(lambda r: http.post("/v1/embeddings", json={"model": MODEL, "input": r}), requests))
    for i, (a, b) in enumerate(zip(alone, together, strict=True)):
        if i == 13:
            assert a.status_code == b.status_code == 400
            continue
        assert a.status_code == b.status_code == 200, (i, b.text)
        for x, y in zip(a.json()["data"], b.json()["data"], strict=True):
            np.testing.assert_allclose(rows(x), rows(y), atol=1e-5)
