"""Hostile input against a real ``bentoml serve`` (all-MiniLM-L6-v2 and the tiny random ColQwen2):
the gateway stays responsive while 16 MiB requests are handled, a one-text request is not queued
behind a 2048-input one, instructions are never cut, and images and PDFs that crash, run away or
lie fail only their own request while the image pool replaces its worker.

Timings are medians or generous maxima: CI is a loaded 2-core box. ``MEASURED`` collects what
each test measured; the module prints it as a table at its end (``pytest -s``).
"""

from __future__ import annotations

import base64
import concurrent.futures
import io
import os
import statistics
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest
import yaml
from PIL import Image

from tests.support.hostile_files import lying_page_tree, runaway_pdf
from tests.support.pages import image_part, page
from tests.support.servers import ROOT, bentoml_server

pytestmark = pytest.mark.server

MODEL, VISION = "all-MiniLM-L6-v2", "colqwen2-tiny-random"
TASK_TIMEOUT_S = 3
ENV = {
    "EMBED_IMAGE_TEST_FAULTS": "1",  # the documented test-only switch: ';fault=crash' in a data URL
    "EMBED_IMAGE_TASK_TIMEOUT_S": str(TASK_TIMEOUT_S),
    "EMBED_IMAGE_WORKERS": "2",
    "EMBED_MAX_REQUEST_PIXELS": "3000000",
}
MiB = 2**20
MEASURED: dict[str, str] = {}


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> str:
    registry = yaml.safe_load((ROOT / "models" / "registry.yaml").read_text())
    runners = registry["profiles"]["cpu"]["runners"]
    registry["profiles"] = {"hostile-test": {"models": [MODEL, VISION], "runners": runners}}
    path = tmp_path_factory.mktemp("registry") / "registry.yaml"
    path.write_text(yaml.safe_dump(registry))
    env = {"EMBED_REGISTRY": str(path), "EMBED_PROFILE": "hostile-test", **ENV}
    ensure = subprocess.run([sys.executable, "-m", "export", "ensure"], cwd=ROOT, env={**os.environ, **env},
                            capture_output=True, text=True, timeout=600)
    assert ensure.returncode == 0, ensure.stderr
    with bentoml_server(env, path.parent / "serve.log") as url:
        yield url


@pytest.fixture(scope="module", autouse=True)
def measurements_table():
    """Prints what the tests measured, as a table for docs/runbook.md (``pytest -s``)."""
    yield
    print("\n| Failure mode | Measured |\n|---|---|")
    for name, value in MEASURED.items():
        print(f"| {name} | {value} |")


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server, timeout=120) as client:
        yield client


def post(http, body: dict | bytes, path: str = "/v1/embeddings") -> httpx.Response:
    if isinstance(body, bytes):
        return http.post(path, content=body, headers={"Content-Type": "application/json"})
    return http.post(path, json=body)


class Prober:
    """GETs ``paths`` one after another from a thread of its own, recording each latency, until stopped."""

    def __init__(self, base_url: str, paths=("/livez", "/metrics")) -> None:
        self.latencies: dict[str, list[float]] = {p: [] for p in paths}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(base_url, paths), daemon=True)

    def _run(self, base_url: str, paths) -> None:
        with httpx.Client(base_url=base_url, timeout=30) as client:
            while not self._stop.is_set():
                for path in paths:
                    started = time.perf_counter()
                    assert client.get(path).status_code == 200
                    self.latencies[path].append(time.perf_counter() - started)
                time.sleep(0.01)

    def __enter__(self) -> Prober:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def ms(values: list[float], q: float = 0.5) -> float:
    return 1000 * float(np.quantile(values, q))


# ---- the event loop stays free ----

HOSTILE_BODIES = {  # name: (body, expected status)
    "one 16 MiB string": (b'{"model":"%s","input":"%s"}' % (MODEL.encode(), b"hello world " * (16 * MiB // 12 - 8)),
                          200),
    "2048 texts of 8 KiB": (b'{"model":"%s","input":[%s]}' % (MODEL.encode(), b",".join(
        [b'"' + b"the quick brown fox " * 409 + b'"'] * 2048)), 400),  # 524,288 tokens: over 300,000
    "3.3M token ids": (b'{"model":"%s","input":[101,%s102]}' % (MODEL.encode(), b"2000," * 3_300_000), 400),
    "4M one-character strings": (b'{"model":"%s","input":[%s"x"]}' % (MODEL.encode(), b'"x",' * (4 * MiB - 16)), 400),
}


@pytest.mark.parametrize("name", list(HOSTILE_BODIES))
def test_livez_and_metrics_answer_while_a_16_mib_request_is_handled(server, http, name):
    body, status = HOSTILE_BODIES[name]
    assert 15 * MiB < len(body) <= 16 * MiB
    with Prober(server) as prober:
        time.sleep(0.2)
        started = time.perf_counter()
        response = post(http, body)
        handled_s = time.perf_counter() - started
        time.sleep(0.1)
    assert response.status_code == status, response.text[:300]
    livez, metrics = prober.latencies["/livez"], prober.latencies["/metrics"]
    MEASURED[f"/livez under {name} (handled in {handled_s:.2f} s)"] = (
        f"median {ms(livez):.1f} ms, max {ms(livez, 1):.0f} ms; /metrics median {ms(metrics):.1f} ms "
        f"({len(livez)} probes)")
    assert ms(livez) < 100 and ms(metrics) < 100, MEASURED


def test_a_one_text_request_waits_for_about_one_engine_call_not_for_a_2048_input_request(server, http):
    """Fair queueing (gateway/runner_client.py): the large request's 16 calls of 128 inputs are
    shared round-robin with the one-text request, which goes out in the next call formed."""
    texts = [f"sentence number {i} about embeddings and queues" for i in range(2048)]
    one = {"model": MODEL, "input": "a single short text"}
    alone = []
    for _ in range(5):
        started = time.perf_counter()
        assert post(http, one).status_code == 200
        alone.append(time.perf_counter() - started)
    waits, large_s = [], []
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        for _ in range(3):
            started = time.perf_counter()
            large = pool.submit(post, http, {"model": MODEL, "input": texts})
            time.sleep(0.5)  # the large request is parsed, tokenized and its calls are out
            sent = time.perf_counter()
            assert post(http, one).status_code == 200
            waits.append(time.perf_counter() - sent)
            assert large.result().status_code == 200
            large_s.append(time.perf_counter() - started)
    per_call = statistics.median(large_s) / 16  # 2048 inputs in calls of 128 (the cpu profile's max_batch_size)
    wait = statistics.median(waits)
    MEASURED["one-text request alone"] = f"median {1000 * statistics.median(alone):.0f} ms"
    MEASURED["one-text request behind a 2048-input one"] = (
        f"median {1000 * wait:.0f} ms = {wait / per_call:.1f} engine calls of 128 inputs "
        f"(the 2048-input request took {statistics.median(large_s):.1f} s, {1000 * per_call:.0f} ms per call)")
    assert wait < 4 * per_call and wait < statistics.median(large_s) / 3, MEASURED


# ---- instructions are never cut ----

def cosine(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_a_long_instruction_keeps_each_input_its_own_text(http):
    instruction = "Represent the following passage for retrieval by a search engine: " * 18  # ~200 tokens
    body = post(http, {"model": MODEL, "instruction": instruction,
                       "input": ["apples and pears " * 40, "the stock market crashed " * 40]}).json()
    first, second = (item["embedding"] for item in body["data"])
    assert body["usage"]["prompt_tokens"] == 2 * 256 and cosine(first, second) < 0.99  # today's main: 1.0
    too_long = post(http, {"model": MODEL, "instruction": "word " * 254, "input": ["apples"]})
    assert too_long.status_code == 400 and too_long.json()["error"]["param"] == "instruction"


def test_the_request_token_limit_is_checked_after_truncation(http):
    over = post(http, {"model": MODEL, "input": ["word " * 300] * 1200})  # 1200 x 256 = 307,200 tokens
    assert over.status_code == 400 and over.json()["error"]["code"] == "max_tokens_per_request"


# ---- images and PDFs in isolated workers ----

def png_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def metric(http, name: str) -> float:
    total = 0.0
    for line in http.get("/metrics").text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.split()[-1])
    return total


def test_a_worker_crash_fails_only_its_request_and_the_pool_recovers(http):
    crash = {"type": "image_url", "image_url": {"url": png_url(page((1, 2, 3))).replace(
        "data:image/png;", "data:image/png;fault=crash;")}}
    good = [{"model": VISION, "input": [image_part(page((10 * i, 40, 90))), "and a query"]} for i in range(8)]
    starts_before = metric(http, "embedding_image_worker_start_seconds_count")
    with concurrent.futures.ThreadPoolExecutor(9) as pool:
        crashed = pool.submit(post, http, {"model": VISION, "input": [crash]})
        others = list(pool.map(lambda b: post(http, b), good))
    error = crashed.result()
    assert error.status_code == 422 and error.json()["error"]["code"] == "image_unprocessable"
    assert "SIGSEGV" in error.json()["error"]["message"] and error.json()["error"]["param"] == "input[0]"
    assert [r.status_code for r in others] == [200] * 8
    answered = time.monotonic()
    while metric(http, "embedding_image_worker_start_seconds_count") < starts_before + 1:
        assert time.monotonic() - answered < 30, "the crashed worker was not replaced"
        time.sleep(0.05)
    replaced_after = time.monotonic() - answered
    text = http.get("/metrics").text
    assert 'embedding_image_worker_exits_total{reason="crash"}' in text
    start_s = metric(http, "embedding_image_worker_start_seconds_sum") / metric(
        http, "embedding_image_worker_start_seconds_count")
    MEASURED["image worker crash: replacement ready"] = (
        f"{replaced_after:.2f} s after the 422 (a worker starts in {start_s:.2f} s on average)")
    assert post(http, good[0]).status_code == 200


def test_a_runaway_page_fails_at_its_deadline_while_others_are_served(http):
    runaway = {"type": "file", "file": {"file_data": "data:application/pdf;base64," + base64.b64encode(
        runaway_pdf()).decode()}}
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        started = time.perf_counter()
        slow = pool.submit(post, http, {"model": VISION, "input": [runaway]})
        time.sleep(0.3)
        quick_started = time.perf_counter()
        quick = post(http, {"model": VISION, "input": [image_part(page((5, 5, 5)))]})
        quick_s = time.perf_counter() - quick_started
        error = slow.result()
        slow_s = time.perf_counter() - started
    assert quick.status_code == 200
    assert error.status_code == 422 and f"longer than {TASK_TIMEOUT_S} s" in error.json()["error"]["message"]
    assert slow_s < TASK_TIMEOUT_S + 10
    MEASURED["runaway PDF page (10 s to render)"] = (
        f"422 after {slow_s:.1f} s (deadline {TASK_TIMEOUT_S} s); an image request meanwhile took {quick_s:.2f} s")


@pytest.mark.parametrize(
    "inputs, status, param, code",
    [
        ([{"type": "file", "file": {"file_data": "data:application/pdf;base64,"
                                    + base64.b64encode(lying_page_tree()).decode()}}], 400, "input[0]", "invalid_file"),
        ([{"type": "image_url", "image_url": {"url": png_url(Image.new("L", (1, 2_000_000)))}}], 400, "input[0]",
         "image_too_large"),
        ([{"type": "image_url", "image_url": {"url": png_url(Image.new("RGB", (1000, 1000)))}}] * 4, 400, "input",
         "image_too_large"),  # 4 Mpx in all: over the server's 3 Mpx per request
    ],
    ids=["page-tree-claims-3-holds-1", "1x2000000-png", "request-pixels"],
)
def test_lying_and_oversized_images_are_400s(http, inputs, status, param, code):
    response = post(http, {"model": VISION, "input": inputs})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert (error["param"], error["code"]) == (param, code), error


def test_a_sixteen_bit_grayscale_png_embeds_as_the_image_it_shows(http):
    ramp = np.tile(np.linspace(0, 65535, 168).astype(np.uint16), (224, 1))
    sixteen = {"type": "image_url", "image_url": {"url": png_url(Image.fromarray(ramp))}}
    eight = {"type": "image_url", "image_url": {"url": png_url(Image.fromarray((ramp >> 8).astype(np.uint8)))}}
    white = {"type": "image_url", "image_url": {"url": png_url(Image.new("L", (168, 224), 255))}}
    a, b, c = (np.asarray(d["embedding"]) for d in post(http, {"model": VISION, "input": [sixteen, eight, white]})
               .json()["data"])
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert not np.allclose(a, c, atol=1e-3)
