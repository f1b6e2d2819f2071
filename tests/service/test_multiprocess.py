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

from core.wire import MEDIA_TYPE, Job, JobError, pack_call, unpack_results
from deploy.processes import free_port, stop_tree
from tests.support.servers import API_KEY, ROOT, bentoml_server, serve_process

pytestmark = pytest.mark.server

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Embeddings map text to vectors.", "short"]
MODEL_A, MODEL_B = "all-MiniLM-L6-v2", "minilm-b"
RUNNER_A_METRICS_PORT = free_port()


def split_registry(path) -> str:
    registry = yaml.safe_load((ROOT / "models/registry.yaml").read_text())
    minilm = registry["models"][MODEL_A]
    registry["models"][MODEL_B] = {**minilm, "aliases": [], "description": "all-MiniLM-L6-v2 again, on a second runner"}
    registry["profiles"]["split"] = {
        "models": [MODEL_A, MODEL_B],
        "runners": {"ort": {"resources": {"cpu": "1"}, "batching": {"max_batch_size": 64}, "max_queued_inputs": 300}},
    }
    path.write_text(yaml.safe_dump(registry))
    return str(path)


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    """Runner A (all-MiniLM-L6-v2), runner B (minilm-b) and the gateway: three ``bentoml serve``
    processes on one Bento home. Yields the gateway URL and runner B's process."""
    tmp = tmp_path_factory.mktemp("multiprocess")
    base = {"EMBED_REGISTRY": split_registry(tmp / "registry.yaml"), "EMBED_PROFILE": "split"}
    runner = "runners.ort.service:OrtRunner"
    with (
        bentoml_server({**base, "EMBED_RUNNER_MODELS": MODEL_A, "EMBED_METRICS_PORT": str(RUNNER_A_METRICS_PORT)},
                       tmp / "runner-a.log", runner) as url_a,
        serve_process({**base, "EMBED_RUNNER_MODELS": MODEL_B}, tmp / "runner-b.log", runner) as (process_b, url_b),
    ):
        wait_ready(url_b, process_b, tmp / "runner-b.log")
        gateway_env = {
            **base,
            # as in deploy/k8s: the gateway's /readyz is its own, not "every runner is ready"
            "BENTOML_CONFIG_OPTIONS": "services.gateway.runner_probe.enabled=false",
            "EMBED_API_KEYS": API_KEY,
            "EMBED_RUNNER_URL_ORT": f"{MODEL_A}={url_a} {MODEL_B}={url_b}",
        }
        with bentoml_server(gateway_env, tmp / "gateway.log") as gateway:
            yield gateway, process_b, tmp, url_a


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
    gateway, _, _, _ = layout
    local = embed(server, MODEL_A)
    for model in (MODEL_A, MODEL_B):
        remote = embed(gateway, model)
        assert remote.model == model and remote.usage == local.usage
        np.testing.assert_allclose(
            [d.embedding for d in remote.data], [d.embedding for d in local.data], rtol=0, atol=1e-6
        )
    assert runner_ready(gateway) == {"ort_1": 1.0, "ort_2": 1.0}


def runner_call(runner: str, jobs: list[Job]) -> httpx.Response:
    """A call straight to a runner's ``embed``, in the wire format (core/wire.py)."""
    return httpx.post(f"{runner}/embed", content=pack_call(jobs), headers={"Content-Type": MEDIA_TYPE}, timeout=30)


def job(model: str = MODEL_A, ids: list[int] | None = None) -> Job:
    return Job(model, None, np.asarray([101, 7592, 102] if ids is None else ids), time.time())


def test_a_runner_called_directly_fails_each_bad_job_alone(layout):
    """Anyone who reaches a runner's port (not only the gateway) gets per-job errors: a model the
    runner does not serve, ids outside the vocabulary or negative, too many ids; the good jobs of
    the same call get their vectors."""
    runner = layout[3]
    bad = [job(MODEL_B), job(ids=[101, 30522, 102]), job(ids=[101, -1, 102]), job(ids=[101] * 257)]
    response = runner_call(runner, [job(), *bad, job()])
    assert response.status_code == 200, response.text
    results = unpack_results(response.content)
    assert [isinstance(r, JobError) for r in results] == [False, True, True, True, True, False]
    messages = [r.message for r in results[1:5]]
    assert "not served by this runner" in messages[0] and "outside the vocabulary of 30522" in messages[1]
    assert "negative" in messages[2] and "more than max_tokens 256" in messages[3]
    assert results[0].shape == (384,) and (results[0] == results[5]).all()  # the same input, the same vector
    series = {line.split('model="')[1].split('"')[0] for line in httpx.get(f"{runner}/metrics").text.splitlines()
              if line.startswith("embedding_queue_wait_seconds_count{")}
    assert series == {MODEL_A}  # the unknown model made no series


def test_a_runner_on_its_own_serves_metrics_on_their_own_port(layout):
    text = httpx.get(f"http://127.0.0.1:{RUNNER_A_METRICS_PORT}/metrics", timeout=10).text
    assert any(line.startswith("embedding_model_info{") and f'model="{MODEL_A}"' in line for line in text.splitlines())


def test_a_runner_refuses_a_call_past_its_queue_limit(layout):
    response = runner_call(layout[3], [job()] * 301)  # max_queued_inputs: 300
    assert response.status_code == 503, response.text  # BentoML hides the message of a 5xx
    assert runner_call(layout[3], [job()] * 300).status_code == 200


def test_a_runner_refuses_a_body_that_is_not_a_call(layout):
    response = httpx.post(f"{layout[3]}/embed", content=b"EMBC garbage", headers={"Content-Type": MEDIA_TYPE},
                          timeout=30)
    assert response.status_code == 400 and "not an embedding call" in response.text, response.text


def test_a_runner_on_its_own_refuses_pickle(layout):
    """Over TCP a runner is an entry service: BentoML refuses its pickle media type (code execution)."""
    response = httpx.post(f"{layout[3]}/embed", content=b"\x80\x05N.",
                          headers={"Content-Type": "application/vnd.bentoml+pickle"}, timeout=30)
    assert response.status_code == 415, response.text


def test_stopped_runner_gives_503_for_its_models_only(layout):
    gateway, process_b, tmp, _ = layout
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
