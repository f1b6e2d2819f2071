"""Loading the ONNX Runtime runner's engines, and checking that they load before serving.

``load_engine(spec)`` is what the runner does per model at start-up: open and check the store entry,
then create the engine's sessions on the registry's providers (``runners/ort/providers.py``).

    python -m runners.ort.preflight [--profile NAME]

loads every ``engine: ort`` model of the profile exactly so (``make serve`` runs it after ``export
ensure`` and before ``bentoml serve``), prints each model's provider and exits 1 with the message
when a store entry or a provider is not what the registry says. On a GPU it also builds the TensorRT
engines into their cache before the other runners start, so the runner itself only loads them.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from models.registry import Engine, ModelSpec, RegistryError
from models.store import StoreEntry, StoreError
from runners.ort.providers import ProviderError

if TYPE_CHECKING:
    from runners.ort.colqwen2 import ColQwen2Engine
    from runners.ort.engine import OrtEngine

LOAD_ERRORS = (StoreError, ProviderError)  # what a runner reports as "cannot serve", with the fix


def load_engine(spec: ModelSpec) -> tuple[OrtEngine | ColQwen2Engine, StoreEntry]:
    """The engine serving ``spec`` (sessions created and checked) and its store entry; raises one of
    ``LOAD_ERRORS``."""
    from models.store import open_entry, runner_files
    from runners.ort.colqwen2 import ColQwen2Engine
    from runners.ort.engine import OrtEngine

    entry = open_entry(spec, required=runner_files(spec))
    return (ColQwen2Engine if spec.vision is not None else OrtEngine)(spec, entry), entry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runners.ort.preflight", description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", help="registry profile (default: EMBED_PROFILE, else cpu)")
    args = parser.parse_args(argv)
    from models import configure_logging
    from models.registry import served

    configure_logging()
    try:
        profile = served(args.profile) if args.profile else served()
    except RegistryError as exc:
        print(f"preflight: {exc}", file=sys.stderr)
        return 1
    failed = 0
    for spec in profile.for_engine(Engine.ORT):
        try:
            engine, entry = load_engine(spec)
        except LOAD_ERRORS as exc:
            print(f"preflight: FAILED {exc}", file=sys.stderr)
            failed += 1
            continue
        print(f"preflight: model {spec.name} ({entry.tag}) loads on {engine.provider}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
