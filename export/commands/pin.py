"""``python -m export pin``: pin models by content in the registry's lock (``export/pins.py``)."""

from __future__ import annotations

import argparse
import sys

from export import ExportError


def pin_command(names: list[str], profile: str | None, version: str | None) -> int:
    from export.pins import pin
    from models.registry import RegistryError, load_registry, registry_path, served

    try:
        registry = load_registry()
        results = pin(registry, served(profile), names, version, registry_path())
    except (RegistryError, ExportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for result in results:
        print(f"{result.action}: {result.model} {result.detail}", file=sys.stderr if result.action == "failed"
              else sys.stdout, flush=True)
    return 1 if any(r.action == "failed" for r in results) else 0


def run(args: argparse.Namespace) -> int:
    return pin_command(args.models, args.profile, args.version)
