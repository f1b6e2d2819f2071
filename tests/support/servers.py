"""Real ``bentoml serve`` processes for the tests: started on a free port, waited for (``/readyz``),
stopped with their whole process tree; the test server's key and environment.

Servers run side by side on the test session's Bento home: each keeps what it writes there (its
metrics directory, its process records) in a folder of its own (``hosting/home.py``).

The session's server (the ``server`` fixture, tests/support/servers.py) runs the ``cpu`` profile from the
Bento store that ``make test`` prepared (``python -m export ensure``), with an API key and an
admission limit small enough that a burst of large requests meets a 429.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from deploy.processes import free_port

ROOT = Path(__file__).resolve().parents[2]
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
