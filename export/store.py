"""Register exported models in the Bento model store and look them up.

The store is BentoML's own: ``$BENTOML_HOME/models`` (default ``~/bentoml/models``), read
through ``bentoml.models`` so that services find entries with ``bentoml.models.get``.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import bentoml
from bentoml.exceptions import NotFound

from export import ExportError


def check_tag(tag: str) -> None:
    """Raise ``ExportError`` unless ``tag`` is a valid store tag (``name`` or ``name:version``)."""
    try:
        bentoml.Tag.from_taglike(tag)
    except ValueError as exc:
        raise ExportError(f"invalid store name {tag!r}: {exc}") from None


def register(name: str, files_dir: Path, labels: dict[str, str], metadata: dict[str, Any]) -> bentoml.Model:
    """Create store entry ``name`` (``name`` or ``name:version``; a new version when none is
    given) holding a copy of every file under ``files_dir``, with string ``labels`` and
    ``metadata`` of basic Python types. Returns the saved model; raises BentoML's errors."""
    with bentoml.models.create(name, labels=labels, metadata=metadata) as model:
        shutil.copytree(files_dir, model.path, dirs_exist_ok=True)
    return model


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
