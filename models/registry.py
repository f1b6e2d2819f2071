"""The model registry: reading ``registry.yaml``, its lock and the environment's overrides.

One YAML file (``models/registry.yaml`` unless ``EMBED_REGISTRY`` names another) says what is
served, by which engine, with which settings; its shape is ``models/schema.py``, its checks across
sections ``models/checks.py``, and its pins live in ``registry.lock`` beside it.

``load_registry()`` validates the whole file into frozen pydantic objects and raises
``RegistryError`` naming the offending field (``models.foo.pooling: ...``) on a bad file.
``served()`` resolves the active profile (``EMBED_PROFILE``, default ``cpu``) into a
``Served`` object: the models, their alias map and the runner settings. The environment's
overrides (``core/settings.py``) are laid over the file: each gateway limit and server setting by
``EMBED_<FIELD>`` (for example ``EMBED_MAX_BODY_BYTES``, ``EMBED_READ_TIMEOUT_S``), and every
profile's ``gateway_workers`` by ``EMBED_GATEWAY_WORKERS``; an error that an override causes names
the variable.

This module is imported by the BentoML service definitions at import time, so it stays light:
pydantic, pydantic-settings and PyYAML only.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from core.settings import Settings, settings, variable
from models.checks import check_registry
from models.schema import Registry, RegistryError, Served

DEFAULT_REGISTRY = Path(__file__).with_name("registry.yaml")


OVERRIDDEN_SECTIONS = ("gateway", "server")


def _format_validation_error(source: str, error: ValidationError, config: Settings) -> str:
    """One line per error: ``<file>: <field path>: <what>``, or, where an environment override
    is the cause, ``EMBED_<FIELD>=<value>: <what>`` naming the file's field it overrides."""
    lines = []
    for item in error.errors():
        loc = item["loc"]
        where = ".".join(str(part) for part in loc) or "(top level)"
        overrides = config.registry_overrides(str(loc[0])) if loc and loc[0] in OVERRIDDEN_SECTIONS else {}
        if len(loc) > 1 and loc[1] in overrides:
            lines.append(f"{variable(str(loc[1]))}={overrides[loc[1]]!r}: {item['msg']} (it overrides {source}: "
                         f"{where}); change or unset it")
        elif overrides:
            given = ", ".join(f"{variable(name)}={value!r}" for name, value in overrides.items())
            lines.append(f"{source}: {where}: {item['msg']} (with {given} from the environment)")
        else:
            lines.append(f"{source}: {where}: {item['msg']}")
    return "\n".join(lines)


def _env_overrides(data: dict[str, Any], config: Settings) -> dict[str, Any]:
    """The environment's overrides over the file: ``EMBED_<FIELD>`` over the ``gateway`` and
    ``server`` sections, ``EMBED_GATEWAY_WORKERS`` over every profile's ``gateway_workers``."""
    data = dict(data)
    for section in OVERRIDDEN_SECTIONS:
        data[section] = {**dict(data.get(section) or {}), **config.registry_overrides(section)}
    profiles = data.get("profiles")
    if config.gateway_workers is not None and isinstance(profiles, dict):
        data["profiles"] = {name: {**profile, "gateway_workers": config.gateway_workers}
                            if isinstance(profile, dict) else profile for name, profile in profiles.items()}
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
    config = settings()
    try:
        registry = Registry.model_validate(_env_overrides(data, config))
    except ValidationError as exc:
        raise RegistryError(_format_validation_error(source, exc, config)) from None
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
    return settings().registry or DEFAULT_REGISTRY


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
    registry = load_registry()
    name = profile or settings().profile
    if profile is None and name not in registry.profiles:
        raise RegistryError(f"EMBED_PROFILE={name!r}: not a profile of {registry_path()}; set it to one of "
                            f"{', '.join(registry.profiles)}")
    return registry.served(name)
