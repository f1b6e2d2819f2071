"""The one benchmark harness: the text sets, servers (started, waited for, stopped with their
process tree), free ports, the wrk driver, CPU-time sampling, results files, the machine's name.
Scripts under ``bench/`` compose these; the process-tree stop and the free port are the project's
shared ones (``deploy/processes.py``).

Units everywhere: seconds for durations, milliseconds for latencies (``*_ms``), throughput as
requests/s, inputs/s and tokens/s, where tokens are the model's tokens of each input after
truncation at its ``max_tokens`` (the tokens the engine computes, padding excluded).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import psutil

import corpora
from deploy.processes import free_port, stop_tree

ROOT = Path(__file__).resolve().parent.parent
DATASET = corpora.SAMPLE_QUERIES
WRK_SCRIPT = ROOT / "bench" / "wrk" / "bodies.lua"
MODEL = "all-MiniLM-L6-v2"
MAX_TOKENS = 256


def load_sets(path: Path = DATASET) -> dict[str, list[str]]:
    """Texts of ``sample_queries.jsonl`` by set name (query, p32, p128, p512, mixed)."""
    sets: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        sets.setdefault(row["set"], []).append(row["text"])
    return sets


def machine() -> dict[str, str | int]:
    """CPU model, core count, memory and OS of this machine, for the report."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    flags = ""
    with contextlib.suppress(OSError):
        flags = Path("/proc/cpuinfo").read_text()
    return {
        "cpu": cpu,
        "cores": os.cpu_count() or 0,
        "memory_gib": round(psutil.virtual_memory().total / 2**30),
        "vnni": "yes" if re.search(r"\b(avx512_vnni|avx_vnni)\b", flags) else "no",
        "gpu": "none",
        "os": platform.platform(),
        "python": platform.python_version(),
    }


def own_home(path: Path) -> str:
    """A ``BENTOML_HOME`` of its own for one more ``bentoml serve`` beside others: its own
    ``prometheus_multiproc_dir`` (which every serve empties at start), and ``models`` a link to the
    current home's model store, so the same models are found."""
    from bentoml._internal.configuration.containers import BentoMLContainer

    store = Path(BentoMLContainer.model_store_dir.get())
    path.mkdir(parents=True, exist_ok=True)
    link = path / "models"
    if link.is_symlink() and link.resolve() != store.resolve():
        link.unlink()
    if not link.is_symlink():
        link.symlink_to(store, target_is_directory=True)
    return str(path)


@contextlib.contextmanager
def server(argv: list[str], ready_url: str, log: Path, env: dict[str, str] | None = None,
           timeout: float = 240, cwd: Path = ROOT) -> Iterator[subprocess.Popen]:
    """Run ``argv`` in ``cwd`` until the block ends; yields once ``ready_url`` answers 200.
    Raises ``RuntimeError`` naming the log when it exits or is not ready within ``timeout`` s.
    SIGTERM to this script then ends it as Ctrl-C does, so the server is stopped on the way out
    (Python's own SIGTERM exits at once and would leave BentoML's circus and workers running)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        process = subprocess.Popen(argv, cwd=cwd, env={**os.environ, **(env or {})}, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{argv[0]} exited with {process.returncode}; see {log}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(ready_url, timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"not ready after {timeout:.0f} s; see {log}")
            time.sleep(0.5)
        yield process
    finally:
        stop_tree(process.pid)  # SIGTERM to the whole tree (BentoML's workers run in sessions of their own)
        process.wait()


def bentoml_argv(target: str, port: int) -> list[str]:
    """``bentoml serve target`` on ``127.0.0.1:port`` with this Python."""
    return [sys.executable, "-m", "bentoml", "serve", target, "--port", str(port), "--host", "127.0.0.1"]


@contextlib.contextmanager
def bentoml_serve(env: dict[str, str], log: Path, target: str = "service:Gateway",
                  timeout: float = 240) -> Iterator[str]:
    """``bentoml serve target`` on a free port with ``env`` until the block ends; yields its base
    URL once ``/readyz`` answers 200 (``server``'s errors otherwise)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with server(bentoml_argv(target, port), f"{url}/readyz", log, env=env, timeout=timeout):
        yield url


def cpu_seconds(procs: list[psutil.Process]) -> float:
    """User + system CPU seconds the processes ``procs`` have used so far (one that has exited counts 0)."""
    total = 0.0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


def write_json(path: Path, data) -> None:
    """Write ``data`` as indented JSON to ``path`` (its folder made), through a temporary file, so
    an interrupted run leaves the previous file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(path)


@dataclass
class LoadResult:
    """One wrk run: ``requests`` answered in ``seconds``, latency percentiles over answered
    requests, responses by HTTP status, socket errors and timeouts, and wrk's own CPU seconds."""

    requests: int
    seconds: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    socket_errors: int
    timeouts: int
    status: dict[str, int] = field(default_factory=dict)
    client_cpu_s: float = 0.0

    @property
    def ok(self) -> int:
        return sum(n for code, n in self.status.items() if code.startswith("2"))

    @property
    def ok_per_s(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    @property
    def failed(self) -> int:
        """Requests without a 2xx answer: other statuses, socket errors and timeouts."""
        return self.requests - self.ok + self.socket_errors + self.timeouts

    def to_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok, "ok_per_s": self.ok_per_s}


def write_bodies(path: Path, texts: list[str], per_request: int, model: str, count: int = 256) -> None:
    """``count`` request bodies of ``per_request`` consecutive texts each (cycling ``texts``),
    one JSON object per line, for ``bench/wrk/bodies.lua``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(count):
        chunk = [texts[(i * per_request + j) % len(texts)] for j in range(per_request)]
        lines.append(json.dumps({"model": model, "input": chunk[0] if per_request == 1 else chunk}))
    path.write_text("\n".join(lines) + "\n")


def wrk(url: str, bodies: Path, clients: int, seconds: float, timeout_s: float = 60) -> LoadResult:
    """Drive ``url`` with ``clients`` connections for ``seconds`` (one wrk thread: it needs a
    fraction of a core, and the server gets the rest). Returns the result with wrk's CPU time."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(
        ["wrk", "-t1", f"-c{clients}", f"-d{max(1, round(seconds))}s", "--timeout", f"{timeout_s:.0f}s",
         "-s", str(WRK_SCRIPT), url],
        capture_output=True, text=True, env={**os.environ, "BODIES": str(bodies)}, timeout=seconds + timeout_s + 30,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    line = next((row for row in out.stdout.splitlines() if row.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result: {out.stdout[-500:]} {out.stderr[-500:]}")
    data = json.loads(line.removeprefix("RESULT "))
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return LoadResult(**data, client_cpu_s=round(cpu, 3))


def metric_value(base_url: str, name: str) -> float | None:
    """Sum of a Prometheus metric's samples on ``base_url``/metrics, or None when absent."""
    with contextlib.suppress(httpx.HTTPError):
        text = httpx.get(f"{base_url}/metrics", timeout=5).text
        values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                  if line.startswith(name) and not line.startswith("#")]
        return sum(values) if values else None
    return None


def drain(base_url: str, gauge: str | None, limit_s: float = 60) -> float:
    """Wait until the server has no admitted work left (requests wrk abandoned at its deadline
    are still computed): poll ``gauge`` until 0, or without one wait ``1 s``. Returns the wait."""
    started = time.monotonic()
    if gauge is None:
        time.sleep(1)
        return 1.0
    while time.monotonic() - started < limit_s:
        value = metric_value(base_url, gauge)
        if value is None or value <= 0:
            break
        time.sleep(0.25)
    return time.monotonic() - started


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)
