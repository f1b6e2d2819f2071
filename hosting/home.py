"""What a server writes under the Bento home is its own: one folder per running server.

BentoML 1.4.40 keeps a server's state under ``$BENTOML_HOME`` without any key: every ``bentoml
serve`` empties ``$BENTOML_HOME/prometheus_multiproc_dir`` when it starts (``serve_http`` calls
``bentoml.serving.ensure_prometheus_dir`` before it starts the workers), so a second server on the
same home (``make serve PORT=3961`` beside ``make serve PORT=3960``) wiped the first one's metric
files: its ``/metrics`` lost its history, counted the second's requests, and after the second
stopped reported ``embedding_runner_ready 0`` while ready. The vLLM runner's process record
(``$BENTOML_HOME/run/vllm-processes-1.json``) was shared the same way, and a second server stopped
the first one's live engine cores as a dead worker's leftovers.

``install`` wraps BentoML's ``serve_http`` (the function ``bentoml serve`` calls after importing
the service module): before BentoML prepares anything, the serving process takes
``$BENTOML_HOME/run/<pid>@<host>/`` (``server_dir``; its workers find it in ``EMBED_SERVER_DIR``)
and points BentoML's Prometheus multiprocess directory at ``prometheus/`` inside it, so BentoML
empties that one only. Process records (``record``, ``stop_orphans``) live there too.

A process is stopped only when it is proven to be one a dead worker left: a record names the worker
that wrote it (pid and start time, which together name one process for good) and each process it
started (pid, start time, name); ``stop_orphans`` acts only on records whose worker no longer runs,
and kills only the listed processes whose pid, start time and name all still match. A server
that starts removes the folders of this host's servers that no longer run, stopping their orphans
first (a server that stops cleanly removes its own); a live server's folder, records and processes
are never touched.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import json
import logging
import os
import shutil
import socket
from pathlib import Path
from typing import Any

import psutil

from core.settings import hand_to_workers, settings

logger = logging.getLogger(__name__)

SERVER_FILE = "server.json"  # the serving process: {"pid", "started"}
RECORD_GLOB = "processes-*.json"

Process = tuple[int, float, str]  # pid, start time, name: one process for good


def _run_root() -> Path:
    from bentoml._internal.configuration.containers import BentoMLContainer

    return Path(BentoMLContainer.bentoml_home.get()) / "run"


def _folder_name(pid: int) -> str:
    return f"{pid}@{socket.gethostname().replace('/', '_')}"


def _this_hosts_folders() -> list[Path]:
    return [path for path in _run_root().glob(_folder_name(0).replace("0@", "*@", 1)) if path.is_dir()]


def describe(process: psutil.Process) -> Process:
    return process.pid, process.create_time(), process.name()


def _running(pid: int, started: float, name: str | None = None) -> psutil.Process | None:
    """The process ``pid`` if it is still the one that started at ``started`` (and is named ``name``)."""
    try:
        process = psutil.Process(pid)
        if process.create_time() == started and (name is None or process.name() == name):
            return process
    except psutil.Error:
        pass
    return None


def server_dir() -> Path:
    """This server's folder: ``EMBED_SERVER_DIR`` in its workers (set by the serving process), the
    serving process's own in it; created if missing."""
    folder = settings().server_dir or _run_root() / _folder_name(os.getpid())
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def claim() -> Path:
    """Make this process's server folder the place of its server's state: the folders of this
    host's servers that no longer run are removed (their orphans stopped first), this one is
    created, named in ``EMBED_SERVER_DIR`` for the workers, and BentoML's Prometheus multiprocess
    directory is set inside it. Returns the folder."""
    from bentoml._internal.configuration.containers import BentoMLContainer

    for folder in _this_hosts_folders():
        if not _server_runs(folder):
            stop_orphans(folder)
            shutil.rmtree(folder, ignore_errors=True)
    mine = _run_root() / _folder_name(os.getpid())
    mine.mkdir(parents=True, exist_ok=True)
    pid, started, _ = describe(psutil.Process())
    (mine / SERVER_FILE).write_text(json.dumps({"pid": pid, "started": started}))
    hand_to_workers("server_dir", str(mine))
    BentoMLContainer.prometheus_multiproc_dir.set(str(mine / "prometheus"))
    atexit.register(shutil.rmtree, mine, True)  # a server that stops cleanly leaves nothing behind
    return mine


def _server_runs(folder: Path) -> bool:
    """Whether the server of ``folder`` still runs (a folder without its server file is being
    created, or belongs to a version that wrote none: left alone)."""
    try:
        server = json.loads((folder / SERVER_FILE).read_text())
        return _running(int(server["pid"]), float(server["started"])) is not None
    except FileNotFoundError:
        return True
    except (OSError, ValueError, KeyError, TypeError):
        return False


def record(name: str, processes: list[Process]) -> None:
    """Write down ``processes``, started by this worker, as record ``name`` of this server."""
    path = server_dir() / f"processes-{name}.json"
    owner = describe(psutil.Process())
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"owner": list(owner[:2]), "processes": [list(p) for p in processes]}))
    os.replace(tmp, path)


def stop_orphans(*folders: Path) -> list[int]:
    """Kill the processes recorded in ``folders`` (default: every server folder of this host) by
    workers that no longer run, where pid, start time and name still match; their records are
    removed. Records of live workers are left alone. Returns the pids killed."""
    folders = folders or tuple(_this_hosts_folders())
    stopped: list[int] = []
    for path in (record for folder in folders for record in sorted(folder.glob(RECORD_GLOB))):
        try:
            data = json.loads(path.read_text())
            owner = (int(data["owner"][0]), float(data["owner"][1]))
            processes = [(int(p[0]), float(p[1]), str(p[2])) for p in data["processes"]]
        except (OSError, ValueError, KeyError, TypeError, IndexError):
            logger.warning("process record %s is not readable; removed", path)
            path.unlink(missing_ok=True)
            continue
        if _running(*owner) is not None:
            continue  # a live worker's (of this server or another): not ours to judge
        if killed := stop_processes(processes):
            logger.warning("stopped processes %s that a worker which died left (%s)", killed, path)
        stopped += killed
        path.unlink(missing_ok=True)
    return stopped


def stop_processes(processes: list[Process]) -> list[int]:
    """Kill those of ``processes`` that still run as the same process (pid, start time and name);
    a pid now used by another process is left alone. Returns the pids killed."""
    killed = []
    for pid, started, name in processes:
        process = _running(pid, started, name)
        if process is None:
            continue
        with contextlib.suppress(psutil.Error):
            process.kill()
            process.wait(10)
            killed.append(pid)
    return killed


def _keyed(serve_http: Any) -> Any:
    @functools.wraps(serve_http)
    def serve(*args: Any, **kwargs: Any) -> Any:
        claim()
        return serve_http(*args, **kwargs)

    serve.embedding_keyed = True
    return serve


def install() -> None:
    """Wrap ``serve_http`` where ``bentoml serve`` (``_bentoml_impl.server``) and ``bentoml.serve``
    (``_bentoml_impl.server.serving``) look it up (idempotent)."""
    import _bentoml_impl.server
    import _bentoml_impl.server.serving

    for module in (_bentoml_impl.server, _bentoml_impl.server.serving):
        if not getattr(module.serve_http, "embedding_keyed", False):
            module.serve_http = _keyed(module.serve_http)
