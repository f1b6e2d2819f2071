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

TensorRT, never built while serving:

- every TensorRT session has an explicit optimisation profile (``create_session(..., profile=...)``:
  the graph's ``trt_profile_{min,opt,max}_shapes``, ONNX Runtime's ``name:d0xd1,...`` strings), so
  TensorRT builds one engine for the whole range at session creation, not at a first request or a
  larger shape; a TensorRT session without one is refused;
- its engines live in a folder named by their key (``runners/ort/engine_cache.py``: TensorRT
  version, GPU compute capability, ONNX Runtime version, the store entry's content, the build
  settings) under the registry's ``trt_engine_cache_path`` (and timing cache path), resolved against
  ``settings().cache_dir`` (``EMBED_CACHE_DIR``); the engine cache is always on;
- ``engines.build`` (``python -m runners.ort.preflight --build``: ``make serve``, the image's
  entrypoint, the Kubernetes init container) builds a missing folder under a lock; a runner only
  loads one, and refuses to start, naming that command, where it is missing;
- ``caps`` (``models/memory_plan.py: ort_caps``) bound the memory the providers take from the card:
  the CUDA provider's ``gpu_mem_limit`` and ``arena_extend_strategy``, TensorRT's workspace;
- TensorRT's libraries come from the ``tensorrt_libs`` package (``requirements-tensorrt.txt``), loaded
  before the session (``preload_tensorrt``); an image built without TensorRT (``IMAGE_TENSORRT=0``,
  ``image_info()``) refuses a TensorRT model saying so.
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
import logging
import shutil
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from core.settings import settings
from models.schema import CACHE_PATH_OPTIONS, GPU_PROVIDERS, ModelSpec, ProviderSpec
from models.store import sha256_of
from runners.ort import engine_cache

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
TENSORRT_LIBRARIES = ("libnvinfer.so.10", "libnvinfer_plugin.so.10", "libnvonnxparser.so.10")  # in tensorrt_libs
FIXES = {
    "tensorrt": "install TensorRT 10 (requirements-tensorrt.txt: `make serve` installs it for a GPU profile, and the "
                "GPU image has it unless built with IMAGE_TENSORRT=0)",
    "cuda": "run on a host with an NVIDIA driver >= 580 (it provides libcuda.so.1; in a container the NVIDIA "
            "container toolkit mounts it) and onnxruntime-gpu with its CUDA 13 libraries (requirements-gpu.txt; "
            "the GPU image)",
    "cpu": "use an onnxruntime build with the CPU provider",
}


class ProviderError(RuntimeError):
    """A session cannot run where the registry says: a provider missing, failed or idle, nodes left
    to the CPU, or TensorRT engines not built. The message names the model, the provider and the fix."""


@dataclass(frozen=True)
class EngineSource:
    """Where a TensorRT session's engines come from: ``content``, the store entry's content digest,
    and ``graph``, the graph's path in the entry, name them; ``build``: build missing engines (the
    preflight's ``--build``) instead of refusing them."""

    content: str
    graph: str
    build: bool = False


def image_info() -> dict:
    """What the image this runs in says about itself (``images.py`` writes it at build time:
    ``{"variant": "gpu", "tensorrt": "10.16.1.11" | null, ...}``), or ``{}`` outside an image.
    ``EMBED_IMAGE_INFO`` names another file."""
    path = settings().image_info or Path(sys.prefix) / "embedding-image.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def preload_tensorrt() -> None:
    """Load TensorRT's libraries from the ``tensorrt_libs`` package (PyPI/NVIDIA wheels put them there,
    on no library path) so that the TensorRT provider's own ``libnvinfer.so.10`` finds them loaded."""
    found = importlib.util.find_spec("tensorrt_libs")
    for folder in (found.submodule_search_locations or []) if found else []:
        for name in TENSORRT_LIBRARIES:
            if (Path(folder) / name).is_file():
                ctypes.CDLL(str(Path(folder) / name), mode=ctypes.RTLD_GLOBAL)


def _option_value(value: str | int | float | bool) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def shape_string(shapes: Shapes) -> str:
    """``{"input_ids": (1, 8)}`` -> ``"input_ids:1x8"`` (TensorRT EP profile syntax)."""
    return ",".join(f"{name}:{'x'.join(str(d) for d in dims)}" for name, dims in shapes.items())


def provider_arguments(
    specs: Sequence[ProviderSpec], profile: tuple[Shapes, Shapes, Shapes] | None = None,
    caps: Mapping[str, Mapping[str, str]] | None = None,
) -> list[tuple[str, dict[str, str]]]:
    """(ONNX Runtime provider name, options) for every listed provider, in order.

    ``profile``: (min, opt, max) input shapes of the graph; given, TensorRT gets them as its
    optimisation profile (one engine for the whole range instead of one per shape). ``caps``:
    per provider name, options that bound its memory (they replace the registry's). TensorRT's engine
    cache is always on; its cache options are the base folders (absolute under ``settings().cache_dir``)
    that ``create_session`` puts the engine's key folder in."""
    arguments = []
    for spec in specs:
        options = {key: _option_value(value) for key, value in spec.options.items()}
        options.update((caps or {}).get(spec.name, {}))
        if spec.name == "tensorrt":
            options["trt_engine_cache_enable"] = "1"
            options.setdefault("trt_engine_cache_path", "tensorrt")
            if options.get("trt_timing_cache_enable") == "1":  # unset, ONNX Runtime writes it to the working directory
                options.setdefault("trt_timing_cache_path", options["trt_engine_cache_path"])
            for key in CACHE_PATH_OPTIONS:
                if key in options:
                    options[key] = str(settings().cache_dir / options[key])  # an absolute option stays as it is
            if profile is not None:
                for key, shapes in zip(("min", "opt", "max"), profile, strict=True):
                    options[f"trt_profile_{key}_shapes"] = shape_string(shapes)
        arguments.append((ORT_PROVIDER_NAMES[spec.name], options))
    return arguments


def engine_key(options: Mapping[str, str], content: str) -> engine_cache.EngineKey:
    """The key of the engine TensorRT builds with ``options`` for ``content`` on this host's first
    visible GPU (``runners/gpu_probe.py``; ``GpuUnavailable`` without one)."""
    import onnxruntime as ort

    from runners.gpu_probe import cuda_driver, tensorrt_version

    _, devices = cuda_driver()
    settings = {k: v for k, v in options.items() if k not in CACHE_PATH_OPTIONS}
    return engine_cache.EngineKey(tensorrt_version(), devices[0].sm, ort.__version__, content,
                                  engine_cache.settings_text(settings))


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


def create_session(path: str, spec: ModelSpec, profile: tuple[Shapes, Shapes, Shapes] | None = None, *,
                   caps: Mapping[str, Mapping[str, str]] | None = None, engines: EngineSource | None = None):
    """An ``onnxruntime.InferenceSession`` for the graph at ``path``, with ``spec.ort``'s session
    settings, on ``spec.ort.providers`` (TensorRT profile from ``profile``, its engines as ``engines``
    says, memory bounded by ``caps``), checked as the module docstring says. Raises ``ProviderError``;
    ONNX Runtime's own errors (a bad graph) pass through."""
    import onnxruntime as ort

    specs = listed_providers(spec)
    listed = [s.name for s in specs]
    if "tensorrt" in listed and profile is None:
        raise ProviderError(f"model {spec.name!r}: a TensorRT session needs an optimisation profile (min/opt/max "
                            "shapes), else TensorRT builds at the first request and again for every larger shape")
    if any(name in GPU_PROVIDERS for name in listed) and hasattr(ort, "preload_dlls"):
        ort.preload_dlls()  # CUDA and cuDNN from the nvidia-* wheels, where the library path lacks them
    if "tensorrt" in listed:
        preload_tensorrt()
    available = ort.get_available_providers()
    usable = []
    for provider in specs:  # what is known to fail is refused before a (possibly large) graph loads
        problem = None
        if provider.name == "tensorrt" and image_info() and not image_info().get("tensorrt"):
            problem = ("this image was built without TensorRT (IMAGE_TENSORRT=0); build it with TensorRT (`make image "
                       "IMAGE_VARIANT=gpu`, the default, needs NVIDIA's package index) or serve a profile whose models "
                       "do not list tensorrt")
        elif ORT_PROVIDER_NAMES[provider.name] not in available:
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
    arguments = provider_arguments(usable, profile, caps)
    session = _with_engines(path, spec, arguments, engines)
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


def _session(path: str, spec: ModelSpec, arguments: list[tuple[str, dict[str, str]]]):
    import onnxruntime as ort

    return ort.InferenceSession(
        path,
        sess_options=session_options(spec),
        providers=[name for name, _ in arguments],
        provider_options=[options for _, options in arguments],
        enable_fallback=0,  # no retry on other providers, at creation or in run()
    )


def _with_engines(path: str, spec: ModelSpec, arguments: list[tuple[str, dict[str, str]]],
                  engines: EngineSource | None):
    """The session; with TensorRT, on the engines of its key folder: loaded when built, built first
    (locked, atomically) with ``engines.build``, else ``ProviderError``."""
    from runners.gpu_probe import GpuUnavailable

    trt = next((options for name, options in arguments if name == ORT_PROVIDER_NAMES["tensorrt"]), None)
    if trt is None:
        return _session(path, spec, arguments)
    if engines is None:
        raise ValueError(f"model {spec.name}: a TensorRT session needs its EngineSource (the store entry's content)")
    bases = {option: Path(trt[option]) for option in CACHE_PATH_OPTIONS if option in trt}
    # an INT8 calibration table is read from the engine cache folder: it goes with the engine, keyed by its content
    table = bases["trt_engine_cache_path"] / trt.get("trt_int8_calibration_table_name", "")
    table = table if trt.get("trt_int8_enable") == "1" and table.is_file() else None
    content = f"{engines.content}:{engines.graph}" + (f":{sha256_of(table)}" if table else "")
    try:
        key = engine_key(trt, content)
    except GpuUnavailable as exc:
        raise ProviderError(f"model {spec.name!r}: TensorRT is listed but {exc}") from None
    folder = bases["trt_engine_cache_path"] / key.folder_name()
    graph = engines.graph

    def at(where: Path) -> None:
        """Both caches into ``where`` (the key folder, or the build's temporary one); a timing cache
        kept apart goes into its own key folder."""
        for option, base in bases.items():
            trt[option] = str(where if base == bases["trt_engine_cache_path"] else base / key.folder_name())
            Path(trt[option]).mkdir(parents=True, exist_ok=True)
        if table is not None and not (where / table.name).exists():
            shutil.copy2(table, where / table.name)

    if engine_cache.is_built(folder):
        at(folder)
        before = engine_cache.engine_files(folder)
        session = _session(path, spec, arguments)
        if new := engine_cache.engine_files(folder) - before:
            raise ProviderError(f"model {spec.name!r}: TensorRT built {', '.join(sorted(new))} while loading {graph} "
                                f"from {folder}: its cached engine did not match the session (a setting the key "
                                "misses); delete the folder and build again (python -m runners.ort.preflight --build)")
        logger.info("model %s: %s: TensorRT engine loaded from %s", spec.name, graph, folder)
        return session
    if not engines.build:
        raise ProviderError(
            f"model {spec.name!r}: the TensorRT engine of {graph} is not built for this host ({folder} is missing: "
            f"TensorRT {key.tensorrt}, {key.sm}, ONNX Runtime {key.onnxruntime}); runners never build while serving. "
            "Build it first: `python -m runners.ort.preflight --build` (what `make serve`, the image's entrypoint "
            "and the Kubernetes init container run)")
    with engine_cache.build(folder, key) as tmp:
        if tmp is None:  # another builder finished it while this one waited for the lock
            return _with_engines(path, spec, arguments, EngineSource(engines.content, graph, build=False))
        at(tmp)
        print(f"building the TensorRT engine of model {spec.name} ({graph}; TensorRT {key.tensorrt}, {key.sm}, "
              f"workspace {int(trt.get('trt_max_workspace_size', 0)) / 2**30:.2f} GiB) into {folder} ...",
              file=sys.stderr, flush=True)
        started = time.monotonic()
        session = _session(path, spec, arguments)
        print(f"built the TensorRT engine of model {spec.name} ({graph}) in {time.monotonic() - started:.0f} s",
              file=sys.stderr, flush=True)
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
