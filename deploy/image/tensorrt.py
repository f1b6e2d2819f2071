"""TensorRT, installed in a step of its own: into the GPU image (a build step after the lock's
install, images.py) and into `make serve`'s GPU stack (the Makefile's ``.venv-gpu/.installed-tensorrt``).

    python tensorrt.py install [--requirements FILE] [--image-info FILE]
    python tensorrt.py absent --image-info FILE      # an image built with IMAGE_TENSORRT=0

``install`` first asks NVIDIA's package index for TensorRT's libraries (``requirements-tensorrt.txt``
pins them; PyPI has only a stub that downloads from that index) and stops with the reason and what
to do instead when it cannot be reached; then installs exactly the pins, without dependencies (their
CUDA libraries are the lock's), with uv where the image's venv has no pip, else pip; then checks that
the libraries ONNX Runtime's TensorRT provider loads are there. Installed on its own, NVIDIA's index
never takes part in resolving the lock: with uv's default index strategy a package an extra index
lists would be taken from that index only (BentoML's image installs all of a bento's requirements
with one ``uv pip install -r``).

``--image-info`` writes what the image has (``{"variant": "gpu", "tensorrt": "<version>" | null,
"reason": ...}``), which the runner reads to refuse a TensorRT model with the reason
(``runners/ort/providers.py: image_info``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LIBRARIES = ("libnvinfer.so.10", "libnvonnxparser.so.10")  # what ONNX Runtime's TensorRT provider links


def requirements(path: Path) -> tuple[str, dict[str, str]]:
    """(the extra index URL, {package: version}) of requirements-tensorrt.txt."""
    text = path.read_text()
    index = re.search(r"^--extra-index-url (\S+)", text, re.M).group(1)
    return index.rstrip("/"), dict(re.findall(r"^([A-Za-z0-9_.\-]+)==(\S+)", text, re.M))


def reach(index: str, package: str) -> str | None:
    """Why NVIDIA's index cannot list ``package``, or None when it can."""
    url = f"{index}/{package}/"
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return None if response.status == 200 else f"{url} answered {response.status}"
    except (urllib.error.URLError, OSError) as exc:
        return f"{url}: {getattr(exc, 'reason', exc)}"


def install(path: Path, image_info: Path | None) -> int:
    index, pins = requirements(path)
    pinned = ", ".join(f"{name}=={version}" for name, version in pins.items())
    for name in pins:
        if problem := reach(index, name):
            print(f"TensorRT: cannot reach NVIDIA's package index ({problem}). TensorRT's libraries ({pinned}) are "
                  f"published only there (PyPI has a stub that downloads from it), so TensorRT cannot be installed "
                  "here. Reach it (HTTPS_PROXY, a mirror), or go without TensorRT: `make image IMAGE_VARIANT=gpu "
                  "IMAGE_TENSORRT=0` builds an image that refuses TensorRT profiles at start, saying so; or serve a "
                  "profile whose models do not list tensorrt", file=sys.stderr, flush=True)
            return 1
    in_image = bool(os.environ.get("VIRTUAL_ENV")) and shutil.which("uv") and importlib.util.find_spec("pip") is None
    installer = ["uv", "pip", "install"] if in_image else [sys.executable, "-m", "pip", "install", "--quiet"]
    command = [*installer, "--no-deps", "--only-binary", ":all:", "-r", str(path)]
    print(f"TensorRT: installing {pinned} from {index}: {' '.join(command)}", flush=True)
    done = subprocess.run(command, env={**os.environ, "PIP_EXTRA_INDEX_URL": ""})
    if done.returncode:
        print(f"TensorRT: the install failed (exit {done.returncode}); see above", file=sys.stderr)
        return done.returncode
    found = importlib.util.find_spec("tensorrt_libs")
    folder = Path(next(iter(found.submodule_search_locations))) if found else None
    missing = [name for name in LIBRARIES if folder is None or not (folder / name).is_file()]
    if missing:
        listing = sorted(p.name for p in folder.iterdir()) if folder else "no tensorrt_libs package"
        print(f"TensorRT: installed, but {', '.join(missing)} is not in {folder} ({listing}); ONNX Runtime's provider "
              "cannot load it", file=sys.stderr)
        return 1
    print(f"TensorRT: {', '.join(LIBRARIES)} in {folder}", flush=True)
    if image_info:
        write_info(image_info, {"variant": "gpu", "tensorrt": next(iter(pins.values()))})
    return 0


def write_info(path: Path, info: dict) -> None:
    path.write_text(json.dumps(info) + "\n")
    print(f"image info {path}: {json.dumps(info)}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("install", "absent"))
    parser.add_argument("--requirements", type=Path, default=ROOT / "requirements-tensorrt.txt")
    parser.add_argument("--image-info", type=Path)
    args = parser.parse_args(argv)
    if args.command == "absent":
        if not args.image_info:
            parser.error("absent needs --image-info")
        write_info(args.image_info, {"variant": "gpu", "tensorrt": None,
                                     "reason": "built with IMAGE_TENSORRT=0: TensorRT is not installed"})
        return 0
    return install(args.requirements, args.image_info)


if __name__ == "__main__":
    sys.exit(main())
