"""The OCI image definitions of the bento: one image with the gateway, every runner, the registry
and the profile's models (``bentoml build`` packs them; ``bentoml containerize`` builds the image).

``EMBED_IMAGE`` picks the variant when ``bentoml build`` imports ``service.py``:

- ``cpu`` (default): Python 3.11 on Debian, ``requirements-serve.txt`` (ONNX Runtime CPU), each
  package and every package it pulls in pinned to ``constraints.txt`` (``locked``), so the image
  runs the versions the tests ran.
- ``gpu``: Python 3.11 on Debian, ``requirements-gpu.lock`` (onnxruntime-gpu, vLLM and torch built
  for CUDA 13, with their CUDA user-space libraries as nvidia-* wheels: only the driver comes from
  the host). Its base is made here (``deploy/image/base.sh NAME gpu``: gcc and Python's headers for
  Triton, and the ``LD_LIBRARY_PATH`` of those libraries); there is no Docker Hub image of it.
  TensorRT (``requirements-tensorrt.txt``, from NVIDIA's index) is installed by a build step of its
  own after the lock (``deploy/image/tensorrt.py``), never in the lock's ``uv pip install``, where
  NVIDIA's index would decide the nvidia-* versions it also carries; the step fails the build, saying
  why, when the index cannot be reached. ``EMBED_IMAGE_TENSORRT=0`` leaves TensorRT out: the image
  then says so (``embedding-image.json`` in its venv) and refuses TensorRT models at start with that
  reason. Default ``1``.

``EMBED_BASE_IMAGE`` replaces the variant's base image, for example the local Debian image that
``make image`` builds where Docker Hub is out of reach (``deploy/image/base.sh``). Only the
image's contents are defined here; nothing is built at import. BentoML's usage tracking is off
in the image (``BENTOML_DO_NOT_TRACK``, a service env of the gateway: ``service.py``).
"""

from __future__ import annotations

import re
from pathlib import Path

from bentoml.images import Image

from core.settings import ConfigError, settings

ROOT = Path(__file__).resolve().parent
# Serving a built bento (`bentoml serve TAG`, the image's entrypoint) imports service.py from the
# bento's src/, beside its bento.yaml: the image was defined when the bento was built (bento.yaml,
# env/docker), and constraints.txt, which `locked` reads, is not packed.
IN_BUILT_BENTO = (ROOT.parent / "bento.yaml").is_file()
GPU_BASE = "localhost/embedding-platform-base-gpu:bookworm"  # deploy/image/base.sh NAME gpu
VARIANTS = {
    # (base image, requirements file); no distro defaults: every package is a wheel, and the gpu
    # base brings its compiler itself
    "cpu": ("python:3.11-slim", "requirements-serve.txt"),
    "gpu": (GPU_BASE, "requirements-gpu.lock"),
}
TENSORRT_REQUIREMENTS = "requirements-tensorrt.txt"
TENSORRT_STEP = "deploy/image/tensorrt.py"  # copied into the build before the install (build_include)
IMAGE_INFO = "$VIRTUAL_ENV/embedding-image.json"  # runners/ort/providers.py: image_info


def image(variant: str | None = None) -> Image:
    """The image of ``variant`` (default ``EMBED_IMAGE``); ``ConfigError`` for a TensorRT choice the
    variant cannot take."""
    config = settings()
    variant = variant or config.image
    if variant not in VARIANTS:
        raise ConfigError(f"image variant {variant!r}: expected one of {', '.join(VARIANTS)}")
    base, requirements = VARIANTS[variant]
    if IN_BUILT_BENTO:
        return Image(base_image=config.base_image or base, python_version="3.11", distro="prebuilt")
    lines = requirement_lines(ROOT / requirements)
    if variant == "cpu":
        lines = locked(lines, ROOT / "constraints.txt")
    tensorrt = variant == "gpu" if config.image_tensorrt is None else config.image_tensorrt
    if tensorrt and variant != "gpu":
        raise ConfigError("EMBED_IMAGE_TENSORRT=1 needs EMBED_IMAGE=gpu (TensorRT runs on the GPU image only): set "
                          "EMBED_IMAGE=gpu or unset EMBED_IMAGE_TENSORRT")
    built = Image(
        base_image=config.base_image or base,
        python_version="3.11",
        distro="prebuilt",  # a distro outside BentoML's table skips its `apt-get install build-essential git`
        lock_python_packages=False,  # pinned here: `locked` (cpu), the lock file (gpu)
    )
    if tensorrt:  # the first step: a build that cannot get TensorRT fails in seconds, not after the lock
        built.run(tensorrt_probe())
    built.python_packages(*lines)
    if variant == "gpu":
        built.build_include(TENSORRT_REQUIREMENTS, TENSORRT_STEP)
        step = (f"install --requirements ./src/{TENSORRT_REQUIREMENTS}" if tensorrt else "absent")
        built.run(f"python ./src/{TENSORRT_STEP} {step} --image-info {IMAGE_INFO}")
    return built


def tensorrt_probe() -> str:
    """A shell command that fails, saying why and what to do, when the build cannot reach the index
    requirements-tensorrt.txt names for its libraries (the base image's own Python, before any venv)."""
    text = (ROOT / TENSORRT_REQUIREMENTS).read_text()
    index = re.search(r"^--extra-index-url (\S+)", text, re.M).group(1).rstrip("/")
    package = re.search(r"^([A-Za-z0-9_.\-]+)==", text, re.M).group(1)
    url = f"{index}/{package}/"
    return (f"python3 -c 'import urllib.request; urllib.request.urlopen(\"{url}\", timeout=30)' || {{ echo \"TensorRT: "
            f"cannot reach NVIDIA's package index ({url}; the error above), where TensorRT's libraries are published "
            "only: build without TensorRT with IMAGE_TENSORRT=0 (an image that refuses TensorRT profiles at start), or "
            "reach the index (a proxy: IMAGE_CA_BUNDLE, HTTPS_PROXY)\" >&2; exit 1; }")


def requirement_lines(path: Path) -> list[str]:
    """The requirements file's entries and options, without comments and blank lines."""
    lines = (line.split(" #", 1)[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def locked(lines: list[str], constraints: Path) -> list[str]:
    """``lines`` (requirements) plus every package they pull in, transitively, each pinned to its
    version in ``constraints``, sorted. Dependencies are read from the installed packages'
    metadata (this environment is what ``constraints.txt`` froze: ``make lock``), with their
    environment markers evaluated here (Linux, CPython 3.11, as in the image). A package missing
    from ``constraints`` is an error naming the fix."""
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins = {canonicalize_name(line.split("==", 1)[0]): line.strip()
            for line in constraints.read_text().splitlines() if "==" in line and not line.startswith("#")}
    wanted = [Requirement(line) for line in lines if not line.startswith("-")]
    found: dict[str, str] = {}
    while wanted:
        requirement = wanted.pop()
        name = canonicalize_name(requirement.name)
        if name in found:
            continue
        if name not in pins:
            raise RuntimeError(f"{requirement.name} (needed by the serving requirements) is not pinned in "
                               f"{constraints.name}: run `make lock`")
        found[name] = pins[name]
        for text in metadata.requires(requirement.name) or ():
            dependency = Requirement(text)
            extras = requirement.extras or {""}
            if dependency.marker is None or any(dependency.marker.evaluate({"extra": e}) for e in extras):
                wanted.append(dependency)
    return [*(line for line in lines if line.startswith("-")), *sorted(found.values(), key=str.lower)]
