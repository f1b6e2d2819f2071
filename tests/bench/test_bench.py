"""The benchmark suite's short mode (what CI runs of ``make bench``), the locustfile, and the text
sets (the int8 quality gate's arithmetic and retrieval set: tests/export/test_int8.py).

The short mode drives the shared test server with ``wrk`` (installed by ``make test`` through
``make bench-tools``), measures the bare engine in-process, and writes the report with its PNG
plots into a temporary folder: every part of ``make bench`` but the peers and the long cells.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import corpora
from bench.common import load_sets
from tests.support.servers import API_KEY, ROOT, own_bentoml_home

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run(argv: list[str], timeout: float, **env: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, **env})
    assert result.returncode == 0, (f"{argv} exited {result.returncode}:\n{result.stdout[-2000:]}\n"
                                    f"{result.stderr[-3000:]}")
    return result


@pytest.mark.server
def test_short_matrix_and_report(server: str, tmp_path: Path) -> None:
    matrix = tmp_path / "matrix.json"
    run(["-m", "bench.scripts.benchmark_matrix", "--short", "--url", server, "--out", str(matrix)], 240,
        EMBED_API_KEY=API_KEY)
    data = json.loads(matrix.read_text())

    assert data["machine"]["cores"] >= 1 and data["machine"]["cpu"]
    bare = [r for r in data["bare"] if r["precision"] == "fp32"]
    assert {(r["set"], r["batch"]) for r in bare} == {("p32", 1), ("p32", 8)}
    assert all(r["inputs_per_s"] > 0 and r["tokens_per_s"] == pytest.approx(32 * r["inputs_per_s"], rel=0.01)
               for r in bare)

    headline = data["headline"]
    assert {(r["server"], r["clients"]) for r in headline} == {("platform fp32", 1), ("platform fp32", 16)}
    cells = headline + data["matrix"]
    assert len(data["matrix"]) == 4  # p32 x (1, 8 inputs) x (1, 16 clients)
    for row in cells:
        assert "error" not in row, row
        assert row["ok"] > 0 and set(row["status"]) == {"200"}, row  # every answer a 200
        assert row["socket_errors"] == 0 and row["timeouts"] == 0
        assert 0 < row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"]
        assert row["client_cpu_s"] > 0  # wrk's own CPU is measured
        assert row["inputs_per_s"] == pytest.approx(row["ok_per_s"] * row["inputs"])
    assert data["servers"]["vllm"]["status"].startswith("not measured")

    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\nhand-written history stays.\n")
    run(["-m", "bench.report", "--matrix", str(matrix), "--tuning", str(tmp_path / "absent.json"),
         "--doc", str(doc), "--images", str(tmp_path / "img")], 120)
    text = doc.read_text()
    assert text.startswith("# Benchmarks\n\nhand-written history stays.")
    assert "<!-- bench:begin -->" in text and "<!-- bench:end -->" in text
    assert "### Targets" in text and "| platform fp32 | 16 |" in text
    assert data["machine"]["cpu"] in text
    pngs = sorted((tmp_path / "img").glob("*.png"))
    assert {p.name for p in pngs} >= {"bench-throughput.png", "bench-latency.png", "bench-side-by-side.png"}
    assert all(p.read_bytes()[:8] == PNG_MAGIC for p in pngs)
    for png in pngs:
        assert f"(img/{png.name})" in text


@pytest.mark.server
def test_overhead_short_run_and_its_report(tmp_path: Path) -> None:
    """bench/scripts/overhead.py, null suite, on servers of its own: the platform (1 and 2 gateway
    workers) beside the lean and naive references on the null-cost model (built and registered here
    as make bench does), CPU per request of every process by role, the py-spy profile by stage, and
    the report's section."""
    home = own_bentoml_home(tmp_path / "home")  # the test store, with the null-cost model added
    run(["-m", "bench.null_model"], 120)
    run(["-m", "export", "ensure", "--profile", "bench-null"], 240, BENTOML_HOME=home)
    out = tmp_path / "overhead.json"
    run(["-m", "bench.scripts.overhead", "--suites", "null", "--rounds", "1", "--seconds", "1", "--clients", "1,8",
         "--servers", "platform,platform-2w,naive,lean", "--profile-seconds", "2", "--label", "short",
         "--out", str(out)], 600, BENTOML_HOME=home)
    null = json.loads(out.read_text())["short"]["null"]
    summary = null["summary"]
    assert summary["errors"] == 0 and not null.get("not_measured")
    servers = summary["servers"]
    assert set(servers) == {"platform", "platform-2w", "naive", "lean"}
    for name, by_clients in servers.items():
        assert set(by_clients) == {"1", "8"}
        for cell in by_clients.values():
            assert cell["ok_per_s"] > 0 and 0 < cell["p50_ms"] <= cell["p99_ms"] and cell["cpu_ms_total"] > 0
            roles = cell["cpu_ms"]
            if name.startswith("platform"):  # every process of the platform, by role
                assert set(roles) == {"gateway", "ort_runner", "supervisor"}
                assert roles["gateway"] > 0 and roles["ort_runner"] > 0
            else:
                assert set(roles) == {"server"}
    assert summary["platform_over_lean_64"] is None and summary["platform_2w_over_1w_64"] is None  # no 64 here
    workers = null["profile"]["workers"]
    assert set(workers) == {"gateway", "ort_runner"} and all(w["samples"] > 0 for w in workers.values())
    assert "ONNX Runtime session.run" not in workers["gateway"]["stages"]
    doc = tmp_path / "benchmarks.md"
    run(["-m", "bench.report", "--matrix", str(tmp_path / "absent.json"), "--tuning", str(tmp_path / "absent.json"),
         "--overhead", str(out), "--doc", str(doc), "--images", str(tmp_path / "img")], 120)
    text = doc.read_text()
    assert "### The front's cost" in text and "Run `short`" in text and "| lean: raw ASGI" in text
    assert "the platform, 2 gateway workers" in text and "Busiest frames, `short`, gateway:" in text


def test_a_profile_that_py_spy_cannot_take_is_reported_not_hidden(tmp_path: Path, monkeypatch) -> None:
    """overhead.py: py-spy failing on a worker (here: a process that has exited) leaves that worker's
    profile out with py-spy's reason, in the JSON and in the report."""
    from types import SimpleNamespace

    from bench import report
    from bench.scripts import overhead

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    monkeypatch.setattr(overhead, "measure", lambda *args: {"ok_per_s": 1.0, "p50_ms": 1.0})
    srv = SimpleNamespace(workers=lambda role: [SimpleNamespace(pid=gone.pid)])
    profile = overhead.profile(None, srv, 1, tmp_path)
    assert profile["workers"] == {} and set(profile["errors"]) == {"gateway", "ort_runner"}
    assert all(error.startswith("py-spy exited ") and len(error) > len("py-spy exited 1: ")
               for error in profile["errors"].values())
    text = report.overhead_section({"short": {"null": {"summary": {}, "rounds": [], "profile": profile}}})
    assert "No profile of gateway in `short`: py-spy exited" in text


def test_a_bench_script_stopped_with_sigterm_stops_its_server(tmp_path: Path) -> None:
    """bench/common.py: server(): a SIGTERM to the script unwinds it, and the server is stopped."""
    import signal
    import time

    import psutil

    from deploy.processes import free_port
    port = free_port()
    script = (f"from pathlib import Path; import sys, time; from bench.common import server\n"
              f"with server([sys.executable, '-m', 'http.server', '{port}', '--bind', '127.0.0.1'], "
              f"'http://127.0.0.1:{port}/', Path({str(tmp_path / 'http.log')!r})) as p:\n"
              f"    print(p.pid, flush=True); time.sleep(120)\n")
    bench = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    child = psutil.Process(int(bench.stdout.readline()))
    bench.send_signal(signal.SIGTERM)
    assert bench.wait(timeout=60) == 128 + signal.SIGTERM
    deadline = time.monotonic() + 30
    while child.is_running() and child.status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE


@pytest.mark.server
def test_locustfile_headless(server: str, tmp_path: Path) -> None:
    run(["-m", "locust", "-f", "bench/locustfile.py", "--headless", "-u", "4", "-r", "4", "-t", "4s",
         "--host", server, "--csv", str(tmp_path / "locust"), "--only-summary"], 120,
        EMBED_API_KEY=API_KEY, EMBED_INPUTS="3", EMBED_SET="p32")
    rows = {row["Name"]: row for row in csv.DictReader((tmp_path / "locust_stats.csv").open())}
    stats = rows["/v1/embeddings x3"]
    assert int(stats["Request Count"]) > 0
    assert int(stats["Failure Count"]) == 0


def test_datasets_have_the_promised_shape() -> None:
    sets = load_sets()
    assert {name: len(texts) for name, texts in sets.items()} == {
        "query": 512, "p32": 512, "p128": 512, "p512": 512, "mixed": 512}
    rows = [json.loads(line) for line in corpora.SAMPLE_QUERIES.read_text().splitlines()]
    tokens = {name: [r["tokens"] for r in rows if r["set"] == name] for name in sets}
    assert set(tokens["p32"]) == {32} and set(tokens["p128"]) == {128} and set(tokens["p512"]) == {512}
    assert min(tokens["mixed"]) >= 8 and max(tokens["mixed"]) <= 256


def test_the_report_skips_a_run_measured_without_py_spy():
    """``--profile-seconds 0`` leaves the registry profile's name where py-spy's profile would be."""
    from bench.report import profile_section

    assert profile_section({"quick": {"null": {"profile": "bench-null"}}}) == []
