"""Loading the ONNX Runtime runner's engines, checking that they load, and building TensorRT engines
before anything serves.

``load_engine(spec)`` is what the runner does per model at start-up: on a GPU profile, check first
that the card has the runner's share free (``runners/gpu_check.py``; once per process, every model
refused while it is short), then open and check the store entry, then create the engine's sessions on
the registry's providers (``runners/ort/providers.py``) with the memory caps of the runner's share
(``models/memory_plan.py: ort_caps``) and TensorRT engines loaded from their cache: a runner never
builds one.

    python -m runners.ort.preflight [--profile NAME]            # load every ort model as the runner does
    python -m runners.ort.preflight [--profile NAME] --build    # the same for the TensorRT models, building

The check (``make serve`` on a CPU profile runs it after ``export ensure`` and before ``bentoml
serve``) prints each model's provider and exits 1 with the message when a store entry, a provider or
the card is not what the registry says. ``--build`` does so for the models with a TensorRT provider
only (nothing to do, in a second, for a profile without), building each missing engine on the way
(one line when it starts and one when it is done; minutes for a large graph) into the key folder of
its cache: ``make serve`` on a GPU profile, the image's entrypoint and the Kubernetes init container
run it, so that no engine is built while serving. Each model's sessions are freed before the next
loads.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from models.schema import Engine, ModelSpec, RegistryError, Served
from models.store import StoreEntry, StoreError
from runners.gpu_check import GpuMemoryShort, memory_problem
from runners.ort.providers import ProviderError

if TYPE_CHECKING:
    from runners.ort.colqwen2 import ColQwen2Engine
    from runners.ort.engine import OrtEngine

LOAD_ERRORS = (StoreError, ProviderError, GpuMemoryShort)  # what a runner reports as "cannot serve", with the fix


@functools.cache
def _card_problem(served: Served) -> str | None:
    """The ORT runner's free-memory check, once per process and profile (before its first model loads)."""
    return memory_problem(served, Engine.ORT.value)


def entry_content(entry: StoreEntry) -> str:
    """The entry's content digest as the export recorded it (computed from its files for an older entry)."""
    from models.store import CONTENT, content_digest, content_files

    return (entry.metadata.get(CONTENT) or {}).get("digest") or content_digest(content_files(entry.path))


def session_factory(spec: ModelSpec, entry: StoreEntry, served: Served, build: bool):
    """``create_session(path, spec, profile)`` for ``entry``'s graphs: ``served``'s memory caps, and
    TensorRT engines from their cache (built first with ``build``)."""
    from models.memory_plan import ort_caps
    from runners.ort import providers

    caps = ort_caps(served, spec)
    content = entry_content(entry) if any(p.name == "tensorrt" for p in providers.listed_providers(spec)) else ""

    def create(path: str, model: ModelSpec, profile=None):
        graph = Path(path).relative_to(entry.path).as_posix()
        return providers.create_session(path, model, profile, caps=caps,
                                        engines=providers.EngineSource(content, graph, build))

    return create


def load_engine(spec: ModelSpec, served: Served | None = None,
                build: bool = False) -> tuple[OrtEngine | ColQwen2Engine, StoreEntry]:
    """The engine serving ``spec`` (sessions created and checked) and its store entry; raises one of
    ``LOAD_ERRORS``. ``served``: the profile (default: the active one); ``build``: build missing
    TensorRT engines (the preflight's ``--build``) instead of refusing them."""
    from models.registry import served as active
    from models.store import open_entry, runner_files
    from runners.ort.colqwen2 import ColQwen2Engine
    from runners.ort.engine import OrtEngine

    served = served or active()
    if problem := _card_problem(served):
        raise GpuMemoryShort(problem)
    entry = open_entry(spec, required=runner_files(spec))
    create = session_factory(spec, entry, served, build)
    return (ColQwen2Engine if spec.vision is not None else OrtEngine)(spec, entry, create), entry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runners.ort.preflight", description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", help="registry profile (default: EMBED_PROFILE, else cpu)")
    parser.add_argument("--build", action="store_true", help="the models with TensorRT only, building the engines "
                        "that are missing")
    args = parser.parse_args(argv)
    from models import configure_logging
    from models.registry import served

    configure_logging()
    try:
        profile = served(args.profile) if args.profile else served()
    except RegistryError as exc:
        print(f"preflight: {exc}", file=sys.stderr)
        return 1
    specs = profile.for_engine(Engine.ORT)
    if args.build:
        specs = tuple(s for s in specs if any(p.name == "tensorrt" for p in s.ort.providers or ()))
        print(f"preflight: profile {profile.profile}: TensorRT engines of "
              + (", ".join(s.name for s in specs) if specs else "no model (nothing to build)"), file=sys.stderr,
              flush=True)
    failed = 0
    for number, spec in enumerate(specs, 1):
        started = time.monotonic()
        try:
            engine, entry = load_engine(spec, profile, build=args.build)
        except LOAD_ERRORS as exc:
            print(f"preflight: FAILED {exc}", file=sys.stderr)
            failed += 1
            continue
        print(f"preflight: [{number}/{len(specs)}] model {spec.name} ({entry.tag}) loads on {engine.provider} "
              f"({time.monotonic() - started:.1f} s)", file=sys.stderr, flush=True)
        del engine  # its sessions' memory is free before the next model loads
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
