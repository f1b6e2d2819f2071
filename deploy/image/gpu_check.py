"""Checks run inside the GPU image, without a GPU (deploy/image/check_gpu.sh runs this there).

    python gpu_check.py REPO     REPO: this repository, mounted read-only in the container

1. vLLM, torch and ONNX Runtime import; ONNX Runtime lists the CUDA and TensorRT providers.
2. Every shared library that ONNX Runtime's providers and vLLM's compiled extensions need resolves
   (``ldd``, under the ``LD_LIBRARY_PATH`` the image sets), except the driver's ``libcuda.so.1``
   (the host's) and, where TensorRT is not installed, TensorRT's own libraries; and the libraries
   ONNX Runtime's CUDA provider opens only when it runs (cuDNN, cuFFT, NVRTC) are on that path.
3. The TensorRT libraries the provider needs are the major version requirements-tensorrt.txt records,
   and the image says whether it has them (``embedding-image.json``, written by the build's TensorRT
   step) as it is.
4. The installed distributions equal requirements-gpu.lock (``gpu_lock.py check``; TensorRT's
   libraries, installed in a step of their own, are the one package beyond it).
5. This checkout's provider check (``runners/ort/providers.py``) with the image's onnxruntime-gpu, on
   the image's packed all-MiniLM-L6-v2: CUDA refused naming the missing driver library (no GPU
   here); TensorRT refused, with an optimisation profile, naming the missing driver where it is
   installed and saying the image was built without it where not; the CPU session loads and runs.

Prints one line per check and exits 1 if any failed.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

DRIVER = {"libcuda.so.1"}  # mounted from the host by the NVIDIA container toolkit
# opened with dlopen by ONNX Runtime's CUDA provider (not NEEDED, so ldd does not see them)
OPENED_AT_RUN_TIME = ("libcudnn.so.9", "libcufft.so.12", "libnvrtc.so.13", "libcurand.so.10")
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
    sys.path.insert(0, str(repo))
    from runners.ort.providers import image_info

    info = image_info()
    report(bool(info) and bool(info.get("tensorrt")) == tensorrt_installed,
           f"image info {info}: TensorRT {'installed' if tensorrt_installed else 'not installed'}")
    site = Path(onnxruntime.__file__).parents[1]
    capi = site / "onnxruntime/capi"
    libraries = sorted(capi.glob("*.so*")) + sorted(Path(vllm.__file__).parent.rglob("*.so"))
    for library in libraries:
        allowed = {name: "the host driver's" for name in DRIVER}
        if not tensorrt_installed and library.name == "libonnxruntime_providers_tensorrt.so":
            allowed |= {name: "TensorRT not installed" for name in needed(library) if TENSORRT.fullmatch(name)}
        missing = unresolved(library)
        reasons = sorted({allowed[name] for name in missing if name in allowed})
        report(missing <= set(allowed), f"ldd {library.relative_to(site)}: " + (
            f"not found: {', '.join(sorted(missing))}" + (f" ({'; '.join(reasons)})" if missing <= set(allowed) else "")
            if missing else "all resolve"))
    path = [Path(folder) for folder in os.environ.get("LD_LIBRARY_PATH", "").split(":") if folder]
    found = {name: next((str(d / name) for d in path if (d / name).exists()), None) for name in OPENED_AT_RUN_TIME}
    report(all(found.values()), "opened at run time by the CUDA provider: " + ", ".join(
        f"{name} {'in ' + str(Path(where).parent.relative_to(site)) if where else 'NOT on LD_LIBRARY_PATH'}"
        for name, where in found.items()))

    record = (repo / "requirements-tensorrt.txt").read_text()
    recorded = set(re.search(r"links (libnvinfer\S+) (libnvonnxparser\S+)", record).groups())
    trt_needs = {name for name in needed(capi / "libonnxruntime_providers_tensorrt.so") if TENSORRT.fullmatch(name)}
    pin = re.search(r"^tensorrt-cu13-libs==(\d+)\.", record, re.M).group(1)
    report(recorded <= trt_needs and all(name.endswith(f".so.{pin}") for name in trt_needs),
           f"TensorRT provider needs {', '.join(sorted(trt_needs))}; requirements-tensorrt.txt records "
           f"{', '.join(sorted(recorded))} and pins TensorRT {pin}.x; TensorRT installed: {tensorrt_installed}")

    lock = subprocess.run([sys.executable, str(repo / "deploy/image/gpu_lock.py"), "check",
                           str(repo / "requirements-gpu.lock")], capture_output=True, text=True)
    extra = re.search(r"not in the lock: (.*)$", lock.stdout.strip(), re.M)
    beyond = {name for name in (extra.group(1).split(", ") if extra else []) if name != "nothing"}
    report(lock.returncode == 0 and beyond <= ({"tensorrt-cu13-libs"} if tensorrt_installed else set()),
           "versions: " + (lock.stdout.strip().splitlines() or ["(no output)"])[-1])
    if lock.returncode:
        print(lock.stdout + lock.stderr)
    provider_check(repo, tensorrt_installed)
    print(f"{len(failures)} check(s) failed" if failures else "all checks passed")
    return 1 if failures else 0


def provider_check(repo: Path, tensorrt_installed: bool) -> None:
    import numpy as np

    from models.registry import served
    from models.schema import ProviderSpec
    from runners.ort.engine import text_profile
    from runners.ort.providers import EngineSource, ProviderError, create_session

    spec = served("cpu").find("all-MiniLM-L6-v2")
    graph = str(next(Path(os.environ["BENTO_PATH"], "models", spec.store_tag).glob("*/model.onnx")))
    expected = {"cuda": "libcuda.so.1",
                "tensorrt": "libcuda.so.1" if tensorrt_installed else "built without TensorRT (IMAGE_TENSORRT=0)"}
    for name, reason in expected.items():
        listed = spec.model_copy(update={"ort": spec.ort.model_copy(update={"providers": (ProviderSpec(name=name),)})})
        profile = text_profile(listed, True) if name == "tensorrt" else None
        try:
            create_session(graph, listed, profile, engines=EngineSource("sha256:check", "model.onnx"))
            report(False, f"provider check: {name} alone was not refused without a GPU")
        except ProviderError as exc:
            report(reason in str(exc), f"provider check: {name} refused: {str(exc)[:200]}...")
    session = create_session(graph, spec)
    ids = np.array([[101, 7592, 2088, 102]], dtype=np.int64)  # [CLS] hello world [SEP]
    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    out = session.run(None, {i.name: feed[i.name] for i in session.get_inputs()})
    report(session.get_providers() == ["CPUExecutionProvider"] and out[0].shape[-1] == 384,
           f"provider check: cpu as listed runs {spec.store_tag} on {session.get_providers()}: {out[0].shape}")


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
