"""What the NVIDIA driver and TensorRT say about this host, read through their C APIs (``ctypes``;
no GPU package needed, so ``make serve`` can ask before it installs anything).

- ``cuda_driver()``: the CUDA version the driver supports (``cuDriverGetVersion``: 13000 for CUDA
  13.0, which needs driver >= 580) and every device CUDA sees (``CUDA_VISIBLE_DEVICES`` applies):
  its name, its memory as CUDA reports it (``cuDeviceTotalMem``: what ``cudaMemGetInfo`` and
  ``torch.cuda.mem_get_info`` give as the total, and what vLLM checks its share against; less than
  nvidia-smi's figure, which counts what the driver and firmware reserve) and its compute capability.
  No context is created: nothing is allocated on the card.
- ``tensorrt_version()``: the version of the ``libnvinfer`` this process loads (``getInferLibVersion``).

Every failure is a ``GpuUnavailable`` whose message says what is missing and how to fix it.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

CUDA_ERRORS = {100: "no CUDA-capable device is detected", 101: "invalid device ordinal",
               3: "not initialized", 999: "unknown error", 804: "forward compatibility was attempted on non "
               "supported hardware", 35: "the driver is older than this CUDA runtime", 34: "stub library"}
ATTRIBUTE_CC_MAJOR, ATTRIBUTE_CC_MINOR = 75, 76  # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR / _MINOR
DRIVER_FIX = ("install an NVIDIA driver that supports CUDA 13 (>= 580; `nvidia-smi` shows it) on a Linux host with an "
              "NVIDIA GPU; in a container, run it with the NVIDIA container toolkit (--gpus all; Kubernetes: the "
              "device plugin and a nvidia.com/gpu limit)")


class GpuUnavailable(RuntimeError):
    """No usable NVIDIA driver, GPU or TensorRT; the message names what and the fix."""


@dataclass(frozen=True)
class CudaDevice:
    index: int  # CUDA's ordinal (after CUDA_VISIBLE_DEVICES)
    name: str
    total_bytes: int  # as CUDA reports it
    compute_capability: tuple[int, int]

    @property
    def sm(self) -> str:
        """``"sm89"`` for compute capability 8.9."""
        return f"sm{self.compute_capability[0]}{self.compute_capability[1]}"


def cuda_version_text(version: int) -> str:
    """13000 -> ``"13.0"`` (``cuDriverGetVersion``'s encoding: 1000 x major + 10 x minor)."""
    return f"{version // 1000}.{version % 1000 // 10}"


def _load(soname: str, what: str) -> ctypes.CDLL:
    try:
        return ctypes.CDLL(soname)
    except OSError as exc:
        raise GpuUnavailable(f"{what}: {soname} cannot be loaded ({exc})") from None


def _check(lib: ctypes.CDLL, call: str, code: int) -> None:
    if code:
        raise GpuUnavailable(f"the NVIDIA driver failed: {call} returned {code} ({CUDA_ERRORS.get(code, 'see CUDA')}); "
                             f"{DRIVER_FIX}")


def cuda_driver() -> tuple[int, list[CudaDevice]]:
    """(the CUDA version the driver supports, the devices CUDA sees); ``GpuUnavailable`` without a
    driver (``libcuda.so.1``) or without a device."""
    lib = _load("libcuda.so.1", f"no NVIDIA driver ({DRIVER_FIX})")
    code = lib.cuInit(0)
    if code:
        raise GpuUnavailable(f"the NVIDIA driver is installed but CUDA cannot start: cuInit returned {code} "
                             f"({CUDA_ERRORS.get(code, 'see CUDA')}); {DRIVER_FIX}")
    version, count = ctypes.c_int(), ctypes.c_int()
    _check(lib, "cuDriverGetVersion", lib.cuDriverGetVersion(ctypes.byref(version)))
    _check(lib, "cuDeviceGetCount", lib.cuDeviceGetCount(ctypes.byref(count)))
    devices = []
    for index in range(count.value):
        device, total = ctypes.c_int(), ctypes.c_size_t()
        major, minor = ctypes.c_int(), ctypes.c_int()
        name = ctypes.create_string_buffer(256)
        _check(lib, "cuDeviceGet", lib.cuDeviceGet(ctypes.byref(device), index))
        _check(lib, "cuDeviceGetName", lib.cuDeviceGetName(name, len(name), device))
        _check(lib, "cuDeviceTotalMem_v2", lib.cuDeviceTotalMem_v2(ctypes.byref(total), device))
        _check(lib, "cuDeviceGetAttribute", lib.cuDeviceGetAttribute(ctypes.byref(major), ATTRIBUTE_CC_MAJOR, device))
        _check(lib, "cuDeviceGetAttribute", lib.cuDeviceGetAttribute(ctypes.byref(minor), ATTRIBUTE_CC_MINOR, device))
        devices.append(CudaDevice(index, name.value.decode(errors="replace"), total.value, (major.value, minor.value)))
    if not devices:
        raise GpuUnavailable(f"the NVIDIA driver sees no GPU (CUDA_VISIBLE_DEVICES hides them all?); {DRIVER_FIX}")
    return version.value, devices


def tensorrt_version() -> str:
    """``"10.16.1"``: the ``libnvinfer.so.10`` this process loads (``GpuUnavailable`` without it)."""
    lib = _load("libnvinfer.so.10", "TensorRT 10 is not installed (requirements-tensorrt.txt)")
    lib.getInferLibVersion.restype = ctypes.c_int32
    version = lib.getInferLibVersion()  # TensorRT 10: major x 10000 + minor x 100 + patch
    return f"{version // 10000}.{version // 100 % 100}.{version % 100}"
