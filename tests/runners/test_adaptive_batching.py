"""The runner's BentoML batchable API (``batching.mode: adaptive``) on a real server: the same
vectors as continuous batching, and no mix-ups under concurrency."""

import asyncio

import numpy as np
import pytest
import yaml

from models.registry import DEFAULT_REGISTRY
from tests.service.test_load import alone, concurrent_run, distinct_texts
from tests.support.servers import SERVER_ENV, bentoml_server

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def adaptive_server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("adaptive")
    registry = yaml.safe_load(DEFAULT_REGISTRY.read_text())
    registry["profiles"]["cpu"]["runners"]["ort"]["batching"]["mode"] = "adaptive"
    (folder / "registry.yaml").write_text(yaml.safe_dump(registry))
    env = {**SERVER_ENV, "EMBED_REGISTRY": str(folder / "registry.yaml")}
    with bentoml_server(env, folder / "serve.log") as url:
        yield url


def test_adaptive_batching_keeps_requests_apart(adaptive_server):
    texts = distinct_texts(256)
    results = asyncio.run(concurrent_run(f"{adaptive_server}/v1/embeddings", texts))
    reference = asyncio.run(alone(f"{adaptive_server}/v1/embeddings", texts))
    assert {status for status, _, _ in results.values()} == {200}
    for _, group, body in results.values():
        for item, j in zip(body["data"], group, strict=True):
            vector = np.array(item["embedding"])
            assert vector @ reference[j] / np.linalg.norm(vector) / np.linalg.norm(reference[j]) >= 0.9999
