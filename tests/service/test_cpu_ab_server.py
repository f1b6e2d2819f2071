"""The shipped ``cpu-ab`` profile for real, as ``EMBED_ADMIN_API_KEYS=$ADMIN_KEY make serve
PROFILE=cpu-ab`` serves it: all-MiniLM-L6-v2 with the variants ``onnx`` (ONNX Runtime, weight 9,
the default) and ``vllm`` (vLLM-CPU, weight 1), 5% shadowed to ``vllm``; no API key, so the docs'
examples for this profile run exactly as written. No other module serves this profile: the
examples of docs/api.md that need it (the ``X-Embedding-Variant`` header, the admin endpoint) run
here, and both variants answer with the same model's vectors.
"""

from __future__ import annotations

import subprocess
import sys
import time

import httpx
import numpy as np
import pytest

from tests.support import doc_examples
from tests.support.servers import ROOT, serve_process, wait_ready

pytestmark = pytest.mark.server

ADMIN_KEY = "admin-key-ab"
MODEL = "all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def ab_server(tmp_path_factory):
    subprocess.run([sys.executable, "-m", "export", "ensure", "--profile", "cpu-ab"], cwd=ROOT, check=True)
    log = tmp_path_factory.mktemp("cpu-ab") / "serve.log"
    with serve_process({"EMBED_PROFILE": "cpu-ab", "EMBED_ADMIN_API_KEYS": ADMIN_KEY}, log) as (process, url):
        wait_ready(process, url, log, timeout=300)  # vLLM-CPU starts in under a minute; a failure shows the log
        # /readyz can say 200 while the gateway's own client still holds the vLLM runner down from a
        # probe that got no answer during its load (it answers 503 engine_unavailable until its next
        # recovery probe): a known race, in the closing notes of issue 22; wait until both variants serve
        deadline = time.monotonic() + 60
        while True:
            answers = [httpx.post(f"{url}/v1/embeddings", json={"model": MODEL, "input": "ready?"},
                                  headers={"X-Embedding-Variant": variant}, timeout=30) for variant in ("onnx", "vllm")]
            if all(answer.status_code == 200 for answer in answers):
                break
            assert time.monotonic() < deadline, [answer.text for answer in answers]
            time.sleep(0.5)
        yield url


@pytest.mark.parametrize("example", doc_examples.examples("cpu-ab"), ids=str)
def test_documented_example_runs_as_written(ab_server, example):
    doc_examples.check(example, ab_server, env={"ADMIN_KEY": ADMIN_KEY})


def test_both_variants_answer_the_same_model(ab_server):
    texts = ["The quick brown fox jumps over the lazy dog.", "Embeddings map text to vectors."]
    vectors = {}
    for variant in ("onnx", "vllm"):
        response = httpx.post(f"{ab_server}/v1/embeddings", json={"model": MODEL, "input": texts},
                              headers={"X-Embedding-Variant": variant}, timeout=60)
        assert response.status_code == 200 and response.headers["x-embedding-variant"] == variant, response.text
        vectors[variant] = np.asarray([d["embedding"] for d in response.json()["data"]])
    assert np.sum(vectors["onnx"] * vectors["vllm"], axis=1).min() >= 0.999
