"""Pins by content: ``python -m export pin`` writes the registry's lock, ``ensure`` reproduces it,
``list`` shows the store against it.

The lock (``models/registry.py: lock_path``, ``registry.lock`` beside the registry) pins each
model by what it is: the sha256 of every file of its store entry and one digest over them
(``models/store.py: content_files``), with the store version, source, revision and exporter
versions as details. It is the one place a pin lives; the registry names no version for a pinned
model. Runners then load the store version holding the pinned content, whatever is the latest.
"""

from __future__ import annotations

import importlib.metadata
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from export import ExportError
from models.registry import LOCK_FORMAT, lock_path, parse_lock
from models.schema import ModelSpec, Registry, Served
from models.store import (
    CONTENT,
    content_difference,
    content_digest,
    content_files,
    entry_content,
    find_pinned,
    store_model,
)

LOCK_HEADER = """\
# Every pinned model by content: the sha256 of each file of its Bento store entry, and one digest
# over them. Written by `python -m export pin`; `python -m export ensure` exports a pinned model the
# store lacks and stops unless the result is this content. Runners serve the store version holding
# it. `version`, `source`, `revision` and `exported_with` are details that explain a difference.
"""
PIN_FIELDS = ("store", "digest", "version", "source", "revision", "exported_with", "files")


def exported_with(metadata: dict[str, Any]) -> dict[str, str]:
    """The library versions an entry was exported (ONNX) or imported (vLLM) with."""
    return dict(metadata.get("exported_with") or metadata.get("imported_with") or {})


def current_versions(recorded: dict[str, str]) -> dict[str, str]:
    """The installed versions of the libraries named in ``recorded``."""
    versions = {}
    for dist in recorded:
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    return versions


def pin_of(spec: ModelSpec, model: Any) -> dict[str, Any]:
    """The lock entry that pins ``spec`` to store entry ``model``'s content, hashed from its files
    now; ``ExportError`` when they differ from what the export recorded (a corrupt entry)."""
    files = content_files(Path(model.path))
    metadata = dict(model.info.metadata)
    recorded = (metadata.get(CONTENT) or {}).get("files")
    if recorded and recorded != files:
        raise ExportError(f"model {spec.name}: store entry {model.tag} is not what was exported ("
                          f"{'; '.join(content_difference(recorded, files))}); delete it with "
                          f"`bentoml models delete {model.tag}` and run `python -m export ensure`")
    return {"store": spec.store_name, "digest": content_digest(files), "version": str(model.tag.version),
            "source": metadata.get("source"), "revision": metadata.get("revision"),
            "exported_with": exported_with(metadata), "files": files}


def write_lock(path: Path, pins: dict[str, dict[str, Any]]) -> None:
    """Write the lock (models sorted by name) atomically: a reader sees the old or the new file."""
    body = yaml.safe_dump({"format": LOCK_FORMAT, "pins": {name: {field: pins[name][field] for field in PIN_FIELDS}
                                                           for name in sorted(pins)}},
                          sort_keys=False, width=120, allow_unicode=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False) as tmp:
        tmp.write(LOCK_HEADER + body)
    os.replace(tmp.name, path)


@dataclass(frozen=True)
class PinResult:
    model: str
    action: str  # "pinned", "moved", "kept", or "failed"
    detail: str


def pin(registry: Registry, served: Served, names: list[str], version: str | None,
        registry_file: Path) -> list[PinResult]:
    """Pin ``names`` (registry models or aliases; none: every model ``served``'s runners load) and
    write the lock beside ``registry_file``. A named model is pinned to ``version`` of its store
    entry, else to what it would serve now unpinned (its ``store_tag``: the latest version); a model
    not named that is pinned already keeps its pin (checked against the store)."""
    path = lock_path(registry_file)
    pins = parse_lock(path.read_text(), str(path)) if path.is_file() else {}
    by_alias = {alias: spec for spec in registry.models.values() for alias in (spec.name, *spec.aliases)}
    targets = [by_alias.get(name) for name in names] if names else list(served.units)
    if unknown := [name for name, spec in zip(names, targets, strict=False) if spec is None]:
        raise ExportError(f"no registry model named {', '.join(unknown)}")
    if version and len(targets) != 1:
        raise ExportError("--version pins one model: name it")
    results = []
    for spec in targets:
        spec = registry.models[spec.name]  # with its pin, outside any profile
        if not names and spec.pin is not None:
            model = find_pinned(spec)
            results.append(PinResult(spec.name, "kept", f"{spec.pin.digest[:19]}... as {model.tag}") if model else
                           PinResult(spec.name, "failed", "pinned content is not in the store: run `python -m "
                                     "export ensure`, or pin what the store has with `python -m export pin "
                                     f"{spec.name}`"))
            continue
        if ":" in spec.store_tag:
            results.append(PinResult(spec.name, "failed", f"store_tag {spec.store_tag!r} names a version: drop it "
                                     "from the registry, then pin (--version keeps that content)"))
            continue
        try:
            model = store_model(spec.model_copy(update={
                "pin": None, "store_tag": f"{spec.store_name}:{version}" if version else spec.store_tag}))
            entry = pin_of(spec, model)
        except (ExportError, RuntimeError) as exc:  # StoreError is a RuntimeError
            results.append(PinResult(spec.name, "failed", str(exc)))
            continue
        before = pins.get(spec.name)
        pins[spec.name] = entry
        if before and before.get("digest") == entry["digest"]:
            results.append(PinResult(spec.name, "kept", f"{entry['digest'][:19]}... as {model.tag}"))
        else:
            moved = f" (was {before['digest'][:19]}...)" if before else ""
            results.append(PinResult(spec.name, "moved" if before else "pinned",
                                     f"{entry['digest'][:19]}... as {model.tag}{moved}"))
    write_lock(path, pins)
    return results


def reproduced(spec: ModelSpec, model: Any) -> str | None:
    """None when store entry ``model`` (a fresh export) holds ``spec``'s pinned content, else what
    differs: the files, and the library versions of the pin against those of this export."""
    actual = entry_content(model)
    if content_digest(actual) == spec.pin.digest:
        return None
    lines = content_difference(spec.pin.files, actual)
    now = exported_with(dict(model.info.metadata))
    pinned = spec.pin.exported_with
    versions = [f"{dist} {pinned.get(dist, '?')} -> {now.get(dist, '?')}" for dist in sorted(set(pinned) | set(now))
                if pinned.get(dist) != now.get(dist)]
    return (f"model {spec.name}: the export is not its pinned content (registry.lock, {spec.pin.digest[:19]}... "
            f"from version {spec.pin.version}): {'; '.join(lines)}. "
            + (f"Library versions differ from the pin's: {', '.join(versions)}. " if versions else
               "Library versions equal the pin's, so the export itself differs (another machine or CPU?). ")
            + f"It is kept as {model.tag}: to serve it, `python -m export pin {spec.name} --version "
            f"{model.tag.version}`")


def describe(metadata: dict[str, Any]) -> str:
    """One line of an entry's provenance and quality: source, revision, precision, parity, quality."""
    parts = [f"source {metadata.get('source')} ({metadata.get('revision')})"]
    if "precision" in metadata:
        parts.append(str(metadata["precision"]))
    if "parity_min_cosine" in metadata:
        parts.append(f"parity min cosine {metadata['parity_min_cosine']:.6f}, max abs err "
                     f"{metadata.get('parity_max_abs_err', float('nan')):.1e}")
    errors = {key: value for key, value in metadata.items() if key.startswith("parity_") and key.endswith("rel_err")}
    if errors:
        parts.append("parity " + ", ".join(f"{key.removeprefix('parity_')} {value:.1e}"
                                           for key, value in errors.items()))
    quality = metadata.get("quality")
    if isinstance(quality, dict):
        scalars = [f"{key} {value}" for key, value in quality.items() if isinstance(value, (int, float, str, bool))]
        parts.append("quality: " + ", ".join(scalars))
    return "; ".join(parts)


def warn_unpinned(specs: tuple[ModelSpec, ...]) -> None:
    for spec in specs:
        if spec.pin is None:
            print(f"warning: model {spec.name} is not pinned: it serves whatever version of {spec.store_tag} the "
                  "store has; pin it with `python -m export pin`", file=sys.stderr, flush=True)
