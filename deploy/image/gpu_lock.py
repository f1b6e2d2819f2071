"""The GPU image's lock: requirements-gpu.txt resolved for the image's platform, every package pinned.

    python deploy/image/gpu_lock.py write    # `make lock-gpu`: resolve and (re)write requirements-gpu.lock
    python deploy/image/gpu_lock.py check    # inside the image (`make image-check`): installed == lock

``write`` asks pip for the resolution only (``pip install --dry-run --report``, nothing is installed)
for the GPU image's platform, not this machine's: CPython 3.11 on Linux x86_64 with glibc 2.36
(Debian bookworm, the image's base: manylinux_2_17 ... manylinux_2_36 wheels), binary wheels only.
pip runs isolated from this machine's configuration (its local indexes and the CPU torch build
it prefers), against PyPI. The CUDA user-space libraries come in as nvidia-* wheels.
``check`` compares the distributions installed beside it with the lock and exits 1 on a difference.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements-gpu.lock"
REQUIREMENTS = ROOT / "requirements-gpu.txt"
GLIBC_MINOR = 36  # Debian bookworm's glibc 2.36 (deploy/image/base.sh)
PYTHON = "3.11"


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: Path = LOCK) -> dict[str, str]:
    """``{normalized name: version}`` of a lock file's ``name==version`` lines."""
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[normalize(name)] = version
    return pins


def resolve(requirements: Path) -> dict[str, str]:
    """pip's resolution of ``requirements`` for the image's platform: ``{name: version}``."""
    platforms = [f"--platform=manylinux_2_{minor}_x86_64" for minor in range(GLIBC_MINOR, 16, -1)]
    with tempfile.TemporaryDirectory(prefix="gpu-lock-") as tmp:
        report = Path(tmp) / "report.json"
        command = [
            sys.executable, "-m", "pip", "install", "--isolated", "--dry-run", "--ignore-installed", "--quiet",
            "--report", str(report), "--target", str(Path(tmp) / "target"), "--only-binary=:all:",
            "--implementation=cp", f"--python-version={PYTHON}", "--abi=cp311", "--abi=abi3", "--abi=none",
            *platforms, "--platform=manylinux2014_x86_64", "--platform=linux_x86_64",
            "--index-url=https://pypi.org/simple", "-r", str(requirements),
        ]
        env = {**os.environ, "PIP_CONFIG_FILE": os.devnull}
        for key in ("PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL", "PIP_CONSTRAINT", "PIP_INDEX_URL"):
            env.pop(key, None)
        subprocess.run(command, check=True, env=env)
        installs = json.loads(report.read_text())["install"]
    return {normalize(item["metadata"]["name"]): item["metadata"]["version"] for item in installs}


def write() -> None:
    pins = resolve(REQUIREMENTS)
    header = (
        f"# requirements-gpu.txt resolved for the GPU image (CPython {PYTHON}, Linux x86_64, glibc 2.{GLIBC_MINOR}, "
        f"wheels only) on {date.today().isoformat()}\n"
        "# by `make lock-gpu` (deploy/image/gpu_lock.py); the GPU image installs exactly these. Do not edit.\n"
    )
    LOCK.write_text(header + "".join(f"{name}=={pins[name]}\n" for name in sorted(pins)))
    print(f"{LOCK.name}: {len(pins)} packages", file=sys.stderr)


def check() -> int:
    locked = read_lock(Path(sys.argv[2]) if len(sys.argv) > 2 else LOCK)
    installed = {normalize(d.metadata["Name"]): d.version for d in importlib.metadata.distributions()}
    problems = [f"{name}: locked {version}, installed {installed.get(name, 'nothing')}"
                for name, version in sorted(locked.items()) if installed.get(name) != version]
    extra = sorted(set(installed) - set(locked))
    for line in problems:
        print(f"FAIL {line}")
    print(f"{len(locked) - len(problems)} of {len(locked)} locked packages installed at the locked version; "
          f"not in the lock: {', '.join(extra) or 'nothing'}")
    return 1 if problems else 0


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in ("write", "check"):
        sys.exit(__doc__)
    sys.exit(write() if sys.argv[1] == "write" else check())
