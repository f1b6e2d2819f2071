"""ONNX Runtime sessions on exactly the execution providers the registry lists, or a start-up error.

A model's providers (``spec.ort.providers``, resolved from its profile's ``runners.ort.providers``:
``[cpu]``, or TensorRT and/or CUDA on a GPU) go to ONNX Runtime in that priority order, each with
its options (strings: ONNX Runtime parses them). Nothing is dropped and nothing is added. ONNX
Runtime itself would hide three failures, so ``create_session`` checks for each:

1. A provider this onnxruntime build lacks, or whose libraries fail to load (no libnvinfer, no
   cuDNN, no driver), is only a logged warning there; ``session.get_providers()`` tells the truth.
2. The Python wrapper retries a failed session creation or run on other providers ("EP Error ...
   Falling back"): sessions are created with ``enable_fallback=0``, which also turns it off for ``run``.
3. Nodes no listed provider takes run on the CPU provider, which ONNX Runtime always adds. ONNX
   Runtime records which provider got each node (``session.record_ep_graph_assignment_info``); where
   ``cpu`` is not listed, any node on the CPU is an error naming the nodes (what
   ``session.disable_cpu_ep_fallback`` refuses, with the nodes named). Where ``cpu`` is listed after a
   GPU provider, what runs there is logged.

A listed provider that did not load, or the first one that loaded taking no node, is a
``ProviderError`` naming it and the fix, unless the model's entry sets ``ort.provider_fallback``:
then it is a warning and the next listed providers serve the model (``session.get_providers()[0]``,
the runner's ``provider`` label).

TensorRT builds one engine per optimisation profile: ``create_session(..., profile=...)`` adds the
graph's ``trt_profile_{min,opt,max}_shapes`` (ONNX Runtime's ``name:d0xd1,...`` strings) to the
TensorRT options; relative cache folders are resolved against ``cache_dir()`` (``EMBED_CACHE_DIR``).
"""

from __future__ import annotations

import ctypes
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

from models.registry import CACHE_PATH_OPTIONS, GPU_PROVIDERS, ModelSpec, ProviderSpec, cache_dir

logger = logging.getLogger(__name__)

Shapes = Mapping[str, Sequence[int]]  # input name -> dims

ORT_PROVIDER_NAMES = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
# the shared libraries each GPU provider needs besides the driver (readelf -d of onnxruntime-gpu 1.31.1's
# provider libraries); named in the error when the provider does not load
PROVIDER_LIBRARIES = {
    "tensorrt": ("libnvinfer.so.10", "libnvonnxparser.so.10", "libcudnn.so.9", "libcublas.so.13", "libcudart.so.13"),
    "cuda": ("libcuda.so.1", "libcudart.so.13", "libcublas.so.13", "libcublasLt.so.13", "libcurand.so.10"),
}
FIXES = {
    "tensorrt": "install TensorRT 10 (requirements-tensorrt.txt; the GPU image with IMAGE_TENSORRT=1) and put its "
                "site-packages/tensorrt_libs on LD_LIBRARY_PATH",
    "cuda": "run on a host with an NVIDIA driver >= 580 (it provides libcuda.so.1; in a container the NVIDIA "
            "container toolkit mounts it) and onnxruntime-gpu with its CUDA 13 libraries (requirements-gpu.txt; "
            "the GPU image)",
    "cpu": "use an onnxruntime build with the CPU provider",
}


class ProviderError(RuntimeError):
    """A session cannot run where the registry says: a provider missing, failed or idle, or nodes
    left to the CPU. The message names the model, the provider and the fix."""


def _option_value(value: str | int | float | bool) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def shape_string(shapes: Shapes) -> str:
    """``{"input_ids": (1, 8)}`` -> ``"input_ids:1x8"`` (TensorRT EP profile syntax)."""
    return ",".join(f"{name}:{'x'.join(str(d) for d in dims)}" for name, dims in shapes.items())


def provider_arguments(
    specs: Sequence[ProviderSpec], profile: tuple[Shapes, Shapes, Shapes] | None = None
) -> list[tuple[str, dict[str, str]]]:
    """(ONNX Runtime provider name, options) for every listed provider, in order.

    ``profile``: (min, opt, max) input shapes of the graph; given, TensorRT gets them as its
    optimisation profile (one engine for the whole range instead of one per shape). Relative
    TensorRT cache folders become absolute under ``cache_dir()`` (created)."""
    arguments = []
    for spec in specs:
        options = {key: _option_value(value) for key, value in spec.options.items()}
        for key in CACHE_PATH_OPTIONS:
            if key in options:
                folder = cache_dir() / options[key]  # an absolute option stays as it is
                folder.mkdir(parents=True, exist_ok=True)
                options[key] = str(folder)
        if spec.name == "tensorrt" and profile is not None:
            for key, shapes in zip(("min", "opt", "max"), profile, strict=True):
                options[f"trt_profile_{key}_shapes"] = shape_string(shapes)
        arguments.append((ORT_PROVIDER_NAMES[spec.name], options))
    return arguments


def listed_providers(spec: ModelSpec) -> tuple[ProviderSpec, ...]:
    """``spec.ort.providers``; a spec taken outside any profile (``load_registry().models``) that
    lists none runs on the CPU."""
    return spec.ort.providers or (ProviderSpec(name="cpu"),)


def session_options(spec: ModelSpec):
    """``onnxruntime.SessionOptions`` from ``spec.ort``, recording which provider gets each node."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[spec.ort.graph_optimization]
    options.intra_op_num_threads = spec.ort.intra_op_threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spec.ort.allow_spinning else "0")
    options.add_session_config_entry("session.record_ep_graph_assignment_info", "1")
    return options


def create_session(path: str, spec: ModelSpec, profile: tuple[Shapes, Shapes, Shapes] | None = None):
    """An ``onnxruntime.InferenceSession`` for the graph at ``path``, with ``spec.ort``'s session
    settings, on ``spec.ort.providers`` (TensorRT profile from ``profile``), checked as the module
    docstring says. Raises ``ProviderError``; ONNX Runtime's own errors (a bad graph) pass through."""
    import onnxruntime as ort

    specs = listed_providers(spec)
    listed = [s.name for s in specs]
    if any(name in GPU_PROVIDERS for name in listed) and hasattr(ort, "preload_dlls"):
        ort.preload_dlls()  # CUDA and cuDNN from the nvidia-* wheels, where the library path lacks them
    available = ort.get_available_providers()
    usable = []
    for provider in specs:  # what is known to fail is refused before a (possibly large) graph loads
        problem = None
        if ORT_PROVIDER_NAMES[provider.name] not in available:
            problem = (f"this onnxruntime build ({ort.__version__}) has no {ORT_PROVIDER_NAMES[provider.name]} "
                       f"(it offers {', '.join(available)})")
        elif missing := _unloadable_libraries(provider.name):
            problem = f"{ORT_PROVIDER_NAMES[provider.name]} cannot load its libraries: {'; '.join(missing)}"
        if problem:
            _refuse_or_warn(spec, provider.name, problem)
        else:
            usable.append(provider)
    if not usable:
        raise ProviderError(f"model {spec.name!r}: none of its providers ({', '.join(listed)}) can run here")
    arguments = provider_arguments(usable, profile)
    session = ort.InferenceSession(
        path,
        sess_options=session_options(spec),
        providers=[name for name, _ in arguments],
        provider_options=[options for _, options in arguments],
        enable_fallback=0,  # no retry on other providers, at creation or in run()
    )
    loaded = session.get_providers()
    nodes = _nodes_by_provider(session)
    leading = True  # the first listed provider that loads must run part of the graph; later ones take the rest
    for name in (s.name for s in usable):
        provider = ORT_PROVIDER_NAMES[name]
        if provider not in loaded:
            _refuse_or_warn(spec, name, f"{provider} did not load (ONNX Runtime's warning above says why)")
        elif leading and not nodes.get(provider):
            _refuse_or_warn(spec, name, f"{provider} loaded but took no node of {Path(path).name}")
        else:
            leading = False
    if leading:
        raise ProviderError(f"model {spec.name!r}: none of its providers ({', '.join(listed)}) runs {path}")
    served_by = [p for p in loaded if nodes.get(p)]
    on_cpu = nodes.get("CPUExecutionProvider", Counter())
    if on_cpu and "cpu" not in listed:
        raise ProviderError(
            f"model {spec.name!r}: {sum(on_cpu.values())} node(s) of {path} would run on the CPU, which its "
            f"providers ({', '.join(listed)}) do not list: {_op_counts(on_cpu)}. ONNX Runtime keeps small shape "
            "computations on the CPU beside the CUDA provider by design; if that is all these are, list cpu last "
            "(the model's ort.providers and its profile's runners.ort.providers); otherwise the listed providers "
            "lack these operators: change the graph or the providers"
        )
    summary = ", ".join(f"{p} {sum(nodes[p].values())}" for p in served_by)
    logger.info("model %s: %s on %s (nodes per provider: %s)", spec.name, Path(path).name, loaded[0], summary)
    if on_cpu and len(listed) > 1:
        logger.info("model %s: on the CPU (listed) in %s: %s", spec.name, Path(path).name, _op_counts(on_cpu))
    return session


def _refuse_or_warn(spec: ModelSpec, name: str, problem: str) -> None:
    message = f"model {spec.name!r}: provider {name} is listed but {problem}. Fix: {FIXES[name]}"
    if spec.ort.provider_fallback:
        logger.warning("%s; ort.provider_fallback: the next listed provider serves the model", message)
        return
    raise ProviderError(f"{message}; or remove {name} from the model's providers (or set ort.provider_fallback: "
                        "true to let the next listed one serve it)")


def _nodes_by_provider(session) -> dict[str, Counter]:
    """``{provider: Counter(op_type)}`` of the nodes ONNX Runtime assigned to each provider."""
    counts: dict[str, Counter] = {}
    for subgraph in session.get_provider_graph_assignment_info():
        counts.setdefault(subgraph.ep_name, Counter()).update(node.op_type for node in subgraph.get_nodes())
    return counts


def _op_counts(counter: Counter) -> str:
    return ", ".join(f"{op} x{n}" for op, n in counter.most_common())


def _unloadable_libraries(name: str) -> list[str]:
    """dlopen's error for each shared library of provider ``name`` this process cannot load."""
    failed = []
    for library in PROVIDER_LIBRARIES.get(name, ()):
        try:
            ctypes.CDLL(library)
        except OSError as exc:
            failed.append(str(exc))
    return failed
