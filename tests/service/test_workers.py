"""Two gateway workers in front of one runner (``EMBED_GATEWAY_WORKERS=2``, service.py): 128 clients
each get exactly the vector of their own text from whichever worker took their connection, with no
error; both workers did work; an admin routing change made through one worker reaches the other
through the server's own routing file."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time

import httpx
import numpy as np
import psutil
import pytest

from tests.service.test_load import CLIENTS, ROUNDS, alone, concurrent_run, distinct_texts
from tests.support.servers import API_KEY, SERVER_ENV, own_bentoml_home, serve_process, wait_ready

pytestmark = pytest.mark.server

ADMIN = {"Authorization": f"Bearer {API_KEY}"}


def gateway_workers(process: subprocess.Popen) -> list[psutil.Process]:
    return [p for p in psutil.Process(process.pid).children(recursive=True)
            if "--service-name" in (args := p.cmdline()) and args[args.index("--service-name") + 1] == "gateway"]


def cpu_seconds(procs: list[psutil.Process]) -> list[float]:
    return [p.cpu_times().user + p.cpu_times().system for p in procs]


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory):
    folder = tmp_path_factory.mktemp("workers")
    env = {**SERVER_ENV, "EMBED_GATEWAY_WORKERS": "2", "BENTOML_HOME": own_bentoml_home(folder / "home")}
    with serve_process(env, folder / "serve.log") as (process, url):
        wait_ready(process, url, folder / "serve.log")
        yield process, url


def test_two_workers_serve_128_clients_their_own_vectors(two_workers):
    process, server = two_workers
    workers = gateway_workers(process)
    assert len(workers) == 2
    url = f"{server}/v1/embeddings"
    texts = distinct_texts(CLIENTS * ROUNDS)
    before = cpu_seconds(workers)
    results = asyncio.run(concurrent_run(url, texts))
    worked = [after - b for after, b in zip(cpu_seconds(workers), before, strict=True)]
    reference = asyncio.run(alone(url, texts))
    assert len(results) == CLIENTS * ROUNDS
    assert [status for status, _, _ in results.values()] == [200] * len(results)
    worst = 1.0
    for _status, group, body in results.values():
        assert [d["index"] for d in body["data"]] == list(range(len(group)))
        for item, j in zip(body["data"], group, strict=True):
            vector = np.array(item["embedding"])
            worst = min(worst, float(vector @ reference[j] / np.linalg.norm(vector) / np.linalg.norm(reference[j])))
    assert worst >= 0.9999, worst
    assert min(worked) > 0.05, worked  # both took connections and did requests' work (idle: about 0.01 s)


def test_a_routing_change_through_one_worker_reaches_the_other(two_workers):
    _, server = two_workers
    state = httpx.get(f"{server}/v1/admin/routing", headers=ADMIN, timeout=10).json()
    assert state["file"] is not None  # the server's own routing file, shared by its workers
    answer = httpx.post(f"{server}/v1/admin/routing", headers=ADMIN, timeout=10,
                        json={"model": "all-MiniLM-L6-v2", "weights": {"default": 3}})
    assert answer.status_code == 200, answer.text
    changed = answer.json()
    deadline = time.monotonic() + 10
    seen: set[int] = set()
    while time.monotonic() < deadline:
        seen = set()
        for _ in range(16):  # a fresh connection each: the kernel hands them to either worker
            with contextlib.closing(httpx.Client(timeout=10)) as client:
                seen.add(client.get(f"{server}/v1/admin/routing", headers=ADMIN).json()["revision"])
        if seen == {changed["revision"]}:
            break
        time.sleep(0.5)
    assert seen == {changed["revision"]}, (seen, changed["revision"])
