"""The start check of a GPU process: is its share of the card free?

Each process of a GPU profile (the ORT runner, each vLLM engine) may use its share of the card the
profile is planned for (``Served.gpu_memory_shares()`` x ``gpu.memory_bytes``; the memory plan,
``models/memory_plan.py``, sizes them). Before it loads anything it compares that with the free
memory of the first GPU it sees (NVML, ``CUDA_VISIBLE_DEVICES`` applied), and stops with the plan's
numbers when the card has less: a desktop, another server or a leftover process holds the rest, and
loading would fail later, or starve a process that started first, with a bare CUDA out-of-memory.
vLLM checks its own share the same way (``gpu_memory_utilization``), after its engine core started,
in other words; this says why and what the plan expected.
"""

from __future__ import annotations

import logging

from models.schema import Served

logger = logging.getLogger(__name__)
GIB = 1 << 30


class GpuMemoryShort(RuntimeError):
    """The card has less free memory than this process's share of the plan; the message has the numbers."""


def free_memory(nvml=None) -> tuple[int, int, int]:
    """(NVML index, free bytes, total bytes) of the first GPU this process sees (``CUDA_VISIBLE_DEVICES``
    applied); ``nvml.NVMLError`` without a driver, ``LookupError`` when every GPU is hidden."""
    if nvml is None:
        import pynvml as nvml
    from runners.gpu_metrics import visible_devices

    nvml.nvmlInit()
    devices = visible_devices(nvml)
    if not devices:
        raise LookupError("CUDA_VISIBLE_DEVICES hides every GPU")
    memory = nvml.nvmlDeviceGetMemoryInfo(devices[0])
    return nvml.nvmlDeviceGetIndex(devices[0]), memory.free, memory.total


def memory_problem(served: Served, key: str, nvml=None) -> str | None:
    """Why process ``key`` (``"ort"``, ``"vllm:<model>"``) of ``served`` cannot start on the card, or
    None. Nothing to check (None) where the profile plans no card or gives ``key`` no share.
    ``nvml``: the ``pynvml`` module (a stand-in in tests)."""
    share = served.gpu_memory_shares().get(key)
    if served.gpu is None or not share:
        return None
    if nvml is None:
        import pynvml as nvml
    who = "the ort runner" if key == "ort" else f"the vllm engine of {key.removeprefix('vllm:')}"
    try:
        index, free, total = free_memory(nvml)
    except (nvml.NVMLError, LookupError) as exc:
        return (f"{who}: profile {served.profile} needs an NVIDIA GPU ({served.gpu.name}) but NVML cannot see one "
                f"({exc}); install the NVIDIA driver (>= 580) or serve a CPU profile")
    need = share * served.gpu.memory_bytes
    logger.info("%s: %.2f GiB free on GPU %s, its share is %.2f GiB", who, free / GIB, index, need / GIB)
    if free >= need:
        return None
    card = served.gpu.memory_bytes / GIB
    return (f"{who}: GPU {index} has {free / GIB:.2f} GiB free of "
            f"{total / GIB:.2f} (NVML); profile {served.profile} gives it {share:g} of the planned "
            f"{served.gpu.name}'s {card:.2f} GiB = {need / GIB:.2f} GiB{_planned(served, key)}. "
            f"Other processes hold {(total - free) / GIB:.2f} GiB (nvidia-smi lists them: a desktop, "
            "another server, an engine left running): stop them, or lower the shares (docs/models.md, memory plan)")


def _planned(served: Served, key: str) -> str:
    """`` (its plan: ...)`` from the memory plan, or nothing when the plan cannot be made."""
    from models.memory_plan import gib, plan

    try:
        process = plan(served.profile).process(key)
    except (ValueError, KeyError):
        return ""
    if process is None:
        return ""
    building = f", {gib(process.peak)} GiB while TensorRT builds" if process.build_extra else ""
    return f" (its plan: {gib(process.steady)} GiB{building})"


def require_free_memory(key: str, served: Served | None = None) -> None:
    """``GpuMemoryShort`` when ``memory_problem`` finds one (``served``: the active profile)."""
    if served is None:
        from models.registry import served as active

        served = active()
    if problem := memory_problem(served, key):
        raise GpuMemoryShort(problem)
