"""Checks run inside the GPU image, without a GPU (deploy/image/check_gpu.sh runs this there).

    python gpu_check.py REPO     REPO: this repository, mounted read-only in the container

1. vLLM, torch and ONNX Runtime import; ONNX Runtime lists the CUDA and TensorRT providers.
2. Every shared library that ONNX Runtime's providers and vLLM's compiled extensions need resolves
   (``ldd``, under the ``LD_LIBRARY_PATH`` the image sets), except the driver's ``libcuda.so.1``
   (the host's) and, where TensorRT is not installed, TensorRT's own libraries.
3. The TensorRT libraries the provider needs are the major version requirements-tensorrt.txt records.
4. The installed distributions equal requirements-gpu.lock (``gpu_lock.py check``).

Prints one line per check and exits 1 if any failed.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

DRIVER = {"libcuda.so.1"}  # mounted from the host by the NVIDIA container toolkit
TENSORRT = re.compile(r"libnv(infer|infer_plugin|onnxparser)\.so\.\d+")
failures: list[str] = []


def report(ok: bool, line: str) -> None:
    print(("ok   " if ok else "FAIL ") + line, flush=True)
    if not ok:
        failures.append(line)


def unresolved(library: Path) -> set[str]:
    """The sonames ``ldd`` cannot find for ``library``."""
    out = subprocess.run(["ldd", str(library)], capture_output=True, text=True, check=True).stdout
    return {line.split("=>")[0].strip() for line in out.splitlines() if "not found" in line}


def needed(library: Path) -> set[str]:
    out = subprocess.run(["readelf", "-d", str(library)], capture_output=True, text=True, check=True).stdout
    return set(re.findall(r"\(NEEDED\)\s+Shared library: \[([^]]+)\]", out))


def main(repo: Path) -> int:
    import onnxruntime
    import torch
    import vllm

    providers = onnxruntime.get_available_providers()
    report("CUDAExecutionProvider" in providers and "TensorrtExecutionProvider" in providers,
           f"imports: vllm {vllm.__version__}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
           f"onnxruntime {onnxruntime.__version__}; providers {', '.join(providers)}")
    tensorrt_installed = importlib.util.find_spec("tensorrt_libs") is not None
    site = Path(onnxruntime.__file__).parents[1]
    capi = site / "onnxruntime/capi"
    libraries = sorted(capi.glob("*.so*")) + sorted(Path(vllm.__file__).parent.rglob("*.so"))
    for library in libraries:
        allowed = set(DRIVER)
        if not tensorrt_installed and library.name == "libonnxruntime_providers_tensorrt.so":
            allowed |= {name for name in needed(library) if TENSORRT.fullmatch(name)}
        missing = unresolved(library)
        name = library.relative_to(site)
        report(missing <= allowed, f"ldd {name}: " + (
            f"not found: {', '.join(sorted(missing))}" + (" (allowed: the driver's / TensorRT not installed)"
                                                          if missing and missing <= allowed else "")
            if missing else "all resolve"))

    record = (repo / "requirements-tensorrt.txt").read_text()
    recorded = set(re.search(r"links (libnvinfer\S+) (libnvonnxparser\S+)", record).groups())
    trt_needs = {name for name in needed(capi / "libonnxruntime_providers_tensorrt.so") if TENSORRT.fullmatch(name)}
    pin = re.search(r"^tensorrt-cu13==(\d+)\.", record, re.M).group(1)
    report(recorded <= trt_needs and all(name.endswith(f".so.{pin}") for name in trt_needs),
           f"TensorRT provider needs {', '.join(sorted(trt_needs))}; requirements-tensorrt.txt records "
           f"{', '.join(sorted(recorded))} and pins TensorRT {pin}.x; TensorRT installed: {tensorrt_installed}")

    lock = subprocess.run([sys.executable, str(repo / "deploy/image/gpu_lock.py"), "check",
                           str(repo / "requirements-gpu.lock")], capture_output=True, text=True)
    report(lock.returncode == 0, "versions: " + (lock.stdout.strip().splitlines() or ["(no output)"])[-1])
    if lock.returncode:
        print(lock.stdout + lock.stderr)
    print(f"{len(failures)} check(s) failed" if failures else "all checks passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
