"""Resolve a model source string to a local Hugging Face model folder.

Source strings (the registry's ``source`` field and ``--source``):

- ``package:<python package>``: model files shipped inside an installed package: the folder
  returned by the package's ``get_model_path()``, else ``<package dir>/model``;
- ``hf:<hub id>``: one commit of a hub repository, downloaded with progress and resumable
  (``export/hub.py``; needs the network, or ``HF_ENDPOINT``'s mirror);
- anything else: a local folder.

The folder must contain ``config.json``. Every failure raises ``SourceError``.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from dataclasses import dataclass
from pathlib import Path

from export import ExportError

PACKAGE_PREFIX = "package:"
HUB_PREFIX = "hf:"


class SourceError(ExportError):
    """The source cannot be resolved to a model folder; the message names the source."""


@dataclass(frozen=True)
class Resolved:
    """A resolved source: ``folder`` holds ``config.json`` and the weights.

    ``revision`` identifies what was resolved: ``package:<name>==<version>`` for packages,
    the commit hash for hub snapshots, the caller's ``revision`` (or None) for local folders.
    """

    folder: Path
    revision: str | None


def resolve(source: str, revision: str | None = None) -> Resolved:
    """Resolve ``source``; ``revision`` is a hub branch/tag/commit, a package version that must
    match the installed one, or a free label recorded for a local folder."""
    if source.startswith(PACKAGE_PREFIX):
        resolved = _from_package(source.removeprefix(PACKAGE_PREFIX), revision)
    elif source.startswith(HUB_PREFIX):
        resolved = _from_hub(source.removeprefix(HUB_PREFIX), revision)
    else:
        resolved = Resolved(Path(source).expanduser().resolve(), revision)
        if not resolved.folder.is_dir():
            raise SourceError(
                f"source {source!r}: no such folder (use a folder, "
                f"{PACKAGE_PREFIX}<python package> or {HUB_PREFIX}<hub id>)"
            )
    if not (resolved.folder / "config.json").is_file():
        raise SourceError(
            f"source {source!r}: {resolved.folder} has no config.json (not a Hugging Face model folder)"
        )
    return resolved


def _from_package(name: str, revision: str | None) -> Resolved:
    try:
        module = importlib.import_module(name)
    except ImportError as exc:
        raise SourceError(f"source {PACKAGE_PREFIX}{name}: cannot import {name!r}: {exc}") from None
    get_model_path = getattr(module, "get_model_path", None)
    folder = Path(get_model_path()) if callable(get_model_path) else Path(module.__file__).parent / "model"
    version = _package_version(name, module)
    if revision is not None and revision != version:
        raise SourceError(
            f"source {PACKAGE_PREFIX}{name}: installed version {version} is not the requested {revision}"
        )
    if not folder.is_dir():
        raise SourceError(f"source {PACKAGE_PREFIX}{name}: model folder {folder} does not exist")
    return Resolved(folder.resolve(), f"{PACKAGE_PREFIX}{name}=={version}")


def _package_version(name: str, module: object) -> str:
    """The distribution version of import package ``name`` (``__version__`` as a fallback)."""
    for dist in importlib.metadata.packages_distributions().get(name, ()):
        return importlib.metadata.version(dist)
    return str(getattr(module, "__version__", "unknown"))


def _from_hub(repo_id: str, revision: str | None) -> Resolved:
    from export import hub

    folder, commit = hub.download(repo_id, revision)
    return Resolved(folder, commit)
