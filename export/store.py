"""Register exported models in the Bento model store and look them up.

The store is BentoML's own: ``$BENTOML_HOME/models`` (default ``~/bentoml/models``), read
through ``bentoml.models`` so that services find entries with ``bentoml.models.get``.

An entry's version is its content's (``models/store.py: content_version``) unless the caller
names one: exporting the same thing twice, here or on another machine, gives the same version,
and the entry records its content (every file's sha256) for pins.
"""

from __future__ import annotations

import importlib.metadata
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import bentoml
from bentoml.exceptions import NotFound

from export import ExportError
from models.store import BENTOML_FILES, CONTENT, content_digest, content_files, content_version, entry_content


def exporter_versions() -> dict[str, str]:
    """The versions that produced an ONNX export (recorded in the store entry's metadata)."""
    return {dist: importlib.metadata.version(dist) for dist in ("torch", "transformers", "onnx", "onnxruntime")}


def check_tag(tag: str) -> None:
    """Raise ``ExportError`` unless ``tag`` is a valid store tag (``name`` or ``name:version``)."""
    try:
        bentoml.Tag.from_taglike(tag)
    except ValueError as exc:
        raise ExportError(f"invalid store name {tag!r}: {exc}") from None


def register(name: str, files_dir: Path, labels: dict[str, str], metadata: dict[str, Any]) -> bentoml.Model:
    """Create store entry ``name`` (``name:version``, or ``name``: then the version is the content's)
    holding a copy of every file under ``files_dir``, with string ``labels`` and ``metadata`` of
    basic Python types plus ``content`` (every file's sha256 and their digest). When that version
    exists already with the same content, nothing is created and it is returned; with other content
    (a version named by hand), ``ExportError``. Raises BentoML's errors otherwise."""
    files = content_files(files_dir)
    digest = content_digest(files)
    tag = name if ":" in name else f"{name}:{content_version(digest)}"
    existing = find(tag)
    if existing is not None:
        if content_digest(entry_content(existing)) != digest:
            raise ExportError(f"store entry {tag} exists with other content; name another version")
        if content_files(Path(existing.path)) != files:
            raise ExportError(f"store entry {tag} should hold this content but its files differ (damaged): delete "
                              f"it with `bentoml models delete {tag}` and export again")
        print(f"{tag} holds this content already ({digest[:19]}...): nothing new registered", file=sys.stderr)
        return existing
    with bentoml.models.create(tag, labels=labels, metadata={**metadata, CONTENT: {"digest": digest, "files": files}}
                               ) as model:
        shutil.copytree(files_dir, model.path, dirs_exist_ok=True)
    return model


def register_again(model: bentoml.Model) -> bentoml.Model:
    """An entry registered before store versions were contents (a random version, no ``content``
    in its metadata), registered again under its content's version with the same labels and
    metadata, so a store made before pins serves, packs and reports as a fresh one would. The old
    entry stays (a bento may name it)."""
    with tempfile.TemporaryDirectory() as folder:
        files = Path(folder) / "files"
        shutil.copytree(model.path, files, ignore=shutil.ignore_patterns(*BENTOML_FILES))
        again = register(model.tag.name, files, dict(model.info.labels), dict(model.info.metadata))
    print(f"{model.tag} was registered before store versions were contents: registered again as {again.tag}",
          file=sys.stderr, flush=True)
    return again


def find(tag: str) -> bentoml.Model | None:
    """The entry for ``tag`` (``name`` means the latest version, ``name:version`` that one),
    or None when the store lacks it."""
    try:
        return bentoml.models.get(tag)
    except NotFound:
        return None


def entries() -> list[bentoml.Model]:
    """Every entry in the store, sorted by tag."""
    return sorted(bentoml.models.list(), key=lambda model: str(model.tag))
