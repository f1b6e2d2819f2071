"""The model registry: reading ``registry.yaml``, its lock and the environment's overrides.

One YAML file (``models/registry.yaml`` unless ``EMBED_REGISTRY`` names another) says what is
served, by which engine, with which settings; its shape is ``models/schema.py``, its checks across
sections ``models/checks.py``, and its pins live in ``registry.lock`` beside it.

``load_registry()`` validates the whole file into frozen pydantic objects and raises
``RegistryError`` naming the offending field (``models.foo.pooling: ...``) on a bad file.
``served()`` resolves the active profile (``EMBED_PROFILE``, default ``cpu``) into a
``Served`` object: the models, their alias map and the runner settings. Gateway limits can be
and server settings can be overridden by environment variables ``EMBED_<FIELD>`` (for example
``EMBED_MAX_BODY_BYTES``, ``EMBED_READ_TIMEOUT_S``).

This module is imported by the BentoML service definitions at import time, so it stays light:
pydantic and PyYAML only.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from models.checks import check_registry
from models.schema import GatewaySpec, Registry, RegistryError, Served, ServerSpec

DEFAULT_REGISTRY = Path(__file__).with_name("registry.yaml")
DEFAULT_PROFILE = "cpu"


def cache_dir() -> Path:
    """Where runners keep caches they build (TensorRT engines and timing caches):
    ``EMBED_CACHE_DIR``, default ``~/.cache/embedding-platform``. Always absolute."""
    return Path(os.environ.get("EMBED_CACHE_DIR") or "~/.cache/embedding-platform").expanduser().resolve()


def _format_validation_error(source: str, error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "(top level)"
        lines.append(f"{source}: {where}: {item['msg']}")
    return "\n".join(lines)


def _env_overrides(data: dict[str, Any]) -> dict[str, Any]:
    """``EMBED_<FIELD>`` from the environment over the file's ``gateway`` and ``server`` sections."""
    data = dict(data)
    for section, spec in (("gateway", GatewaySpec), ("server", ServerSpec)):
        values = dict(data.get(section) or {})
        for field in spec.model_fields:
            value = os.environ.get(f"EMBED_{field.upper()}")
            if value is not None:
                values[field] = value
        data[section] = values
    return data


def parse_registry(text: str, source: str = "registry", lock: str | None = None,
                   lock_source: str = "registry.lock") -> Registry:
    """Validate registry YAML text and its lock's (``lock``: the pins, or None); raises
    ``RegistryError`` naming the bad field."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RegistryError(f"{source}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise RegistryError(f"{source}: expected a mapping with 'models' and 'profiles'")
    models = data.get("models")
    if isinstance(models, dict):
        for name, value in models.items():
            if isinstance(value, dict) and "pin" in value:
                raise RegistryError(f"{source}: models.{name}.pin: pins live in {lock_source} beside the registry, "
                                    "written by `python -m export pin`")
        pins = parse_lock(lock, lock_source) if lock is not None else {}
        if unknown := sorted(set(pins) - set(models)):
            raise RegistryError(f"{lock_source}: pins {', '.join(unknown)}, which {source} does not have; delete "
                                "the entry or pin again (`python -m export pin`)")
        data = {**data, "models": {name: {**value, "pin": pins[name]} if name in pins and isinstance(value, dict)
                                   else value for name, value in models.items()}}
    try:
        registry = Registry.model_validate(_env_overrides(data))
    except ValidationError as exc:
        raise RegistryError(_format_validation_error(source, exc)) from None
    try:
        check_registry(registry)
    except ValueError as exc:
        raise RegistryError(f"{source}: (top level): Value error, {exc}") from None
    return registry


LOCK_FORMAT = 1


def parse_lock(text: str, source: str = "registry.lock") -> dict[str, dict[str, Any]]:
    """The pins of a lock file's text (model name -> ``Pin`` fields); ``RegistryError`` when it is
    not a lock. The fields themselves are checked with the model (``ModelSpec.pin``)."""
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise RegistryError(f"{source}: not valid YAML: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != LOCK_FORMAT or not isinstance(data.get("pins") or {}, dict):
        raise RegistryError(f"{source}: not a registry lock (format {LOCK_FORMAT} with a `pins` mapping); write it "
                            "with `python -m export pin`")
    return dict(data.get("pins") or {})


def registry_path() -> Path:
    """The registry file: ``EMBED_REGISTRY``, else ``models/registry.yaml``."""
    return Path(os.environ.get("EMBED_REGISTRY") or DEFAULT_REGISTRY)


def lock_path(registry: str | os.PathLike[str] | None = None) -> Path:
    """The registry's lock, beside it: ``registry.yaml`` -> ``registry.lock``."""
    return Path(registry or registry_path()).with_suffix(".lock")


def load_registry(path: str | os.PathLike[str] | None = None) -> Registry:
    """The registry file (``registry_path()`` unless ``path``) with the pins of its lock, if any."""
    path = Path(path or registry_path())
    try:
        text = path.read_text()
    except OSError as exc:
        raise RegistryError(f"cannot read registry {path}: {exc.strerror}") from None
    lock = lock_path(path)
    try:
        lock_text = lock.read_text() if lock.is_file() else None
    except OSError as exc:
        raise RegistryError(f"cannot read registry lock {lock}: {exc.strerror}") from None
    return parse_registry(text, str(path), lock_text, str(lock))


@functools.cache
def served(profile: str | None = None) -> Served:
    """The active profile (``EMBED_PROFILE``, default ``cpu``) of the configured registry."""
    return load_registry().served(profile or os.environ.get("EMBED_PROFILE") or DEFAULT_PROFILE)
