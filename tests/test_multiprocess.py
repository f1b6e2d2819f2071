"""The multi-machine layout on one machine: runners as separate ``bentoml serve`` processes on
their own ports, the gateway reaching them by URL (``EMBED_RUNNER_URL_ORT``, models/topology.py),
driven by the official OpenAI client.

Two runners are needed to show that a stopped runner fails only its own models, and this branch
has one engine (ONNX Runtime). So the test registry serves two models, all-MiniLM-L6-v2 and
``minilm-b`` (the same store entry under another name), from two ORT runner processes, each
loading one of them (``EMBED_RUNNER_MODELS``): the same mechanism that splits one engine's models
over several Kubernetes Deployments. Answers are compared with the one-process layout (the
session's ``server``): the same vectors and usage.
"""

from __future__ import annotations

import contextlib
import time

import httpx
import numpy as np
import openai
import pytest
import yaml

from deploy.stop_tree import stop_tree
from tests.conftest import API_KEY, ROOT, bentoml_server, own_bentoml_home, serve_process

pytestmark = pytest.mark.slow

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Embeddings map text to vectors.", "short"]
MODEL_A, MODEL_B = "all-MiniLM-L6-v2", "minilm-b"


def split_registry(path) -> str:
    registry = yaml.safe_load((ROOT / "models/registry.yaml").read_text())
    minilm = registry["models"][MODEL_A]
    registry["models"][MODEL_B] = {**minilm, "aliases": [], "description": "all-MiniLM-L6-v2 again, on a second runner"}
    registry["profiles"]["split"] = {
        "models": [MODEL_A, MODEL_B],
        "runners": {"ort": {"resources": {"cpu": "1"}, "batching": {"max_batch_size": 64}}},
    }
    path.write_text(yaml.safe_dump(registry))
    return str(path)


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    """Runner A (all-MiniLM-L6-v2), runner B (minilm-b) and the gateway: three ``bentoml serve``
    processes with their own BENTOML_HOME each. Yields the gateway URL and runner B's process."""
    tmp = tmp_path_factory.mktemp("multiprocess")
    base = {"EMBED_REGISTRY": split_registry(tmp / "registry.yaml"), "EMBED_PROFILE": "split"}
    runner = "runners.ort.service:OrtRunner"
    with (
        bentoml_server({**base, "EMBED_RUNNER_MODELS": MODEL_A, "BENTOML_HOME": own_bentoml_home(tmp / "home-a")},
                       tmp / "runner-a.log", runner) as url_a,
        serve_process({**base, "EMBED_RUNNER_MODELS": MODEL_B, "BENTOML_HOME": own_bentoml_home(tmp / "home-b")},
                      tmp / "runner-b.log", runner) as (process_b, url_b),
    ):
        wait_ready(url_b, process_b, tmp / "runner-b.log")
        gateway_env = {
            **base,
            # as in deploy/k8s: the gateway's /readyz is its own, not "every runner is ready"
            "BENTOML_CONFIG_OPTIONS": "services.gateway.runner_probe.enabled=false",
            "BENTOML_HOME": own_bentoml_home(tmp / "home-gateway"),
            "EMBED_API_KEYS": API_KEY,
            "EMBED_RUNNER_URL_ORT": f"{MODEL_A}={url_a} {MODEL_B}={url_b}",
        }
        with bentoml_server(gateway_env, tmp / "gateway.log") as gateway:
            yield gateway, process_b, tmp


def wait_ready(url: str, process, log) -> None:
    deadline = time.monotonic() + 120
    while True:
        assert process.poll() is None, log.read_text()[-3000:]
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                return
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.5)


def embed(url: str, model: str, **kwargs):
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=API_KEY, max_retries=0, timeout=60)
    return client.embeddings.create(model=model, input=TEXTS, encoding_format="float", **kwargs)


def runner_ready(gateway: str) -> dict[str, float]:
    metrics = httpx.get(f"{gateway}/metrics", timeout=10).text
    return {
        line.split('runner="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("embedding_runner_ready{")
    }


def test_gateway_by_url_answers_like_the_one_process_layout(layout, server):
    gateway, _, _ = layout
    local = embed(server, MODEL_A)
    for model in (MODEL_A, MODEL_B):
        remote = embed(gateway, model)
        assert remote.model == model and remote.usage == local.usage
        np.testing.assert_allclose(
            [d.embedding for d in remote.data], [d.embedding for d in local.data], rtol=0, atol=1e-6
        )
    assert runner_ready(gateway) == {"ort_1": 1.0, "ort_2": 1.0}


def test_stopped_runner_gives_503_for_its_models_only(layout):
    gateway, process_b, tmp = layout
    assert not stop_tree(process_b.pid, grace=30), "runner B did not stop"
    with pytest.raises(openai.APIStatusError) as failed:
        embed(gateway, MODEL_B)
    assert failed.value.status_code == 503
    assert int(failed.value.response.headers["retry-after"]) >= 1
    error = failed.value.response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and "ort_2" in error["message"]
    served = embed(gateway, MODEL_A)  # the other runner keeps serving
    assert len(served.data) == len(TEXTS) and len(served.data[0].embedding) == 384
    deadline = time.monotonic() + 20  # the readiness probe runs every 5 s
    while runner_ready(gateway) != {"ort_1": 1.0, "ort_2": 0.0}:
        assert time.monotonic() < deadline, runner_ready(gateway)
        time.sleep(1)
    assert httpx.get(f"{gateway}/readyz", timeout=5).status_code == 200  # still in service
    assert "Traceback" not in (tmp / "gateway.log").read_text()
