"""The registry's checks across sections: what no single model of ``models/schema.py`` can see.

Every served name and alias is unique; each profile names known models; each variant's model
exists and answers like the served name; each profile's ORT runner lists the providers its models
use. ``check_registry`` raises ``ValueError`` with the path of the offending entry
(``profiles.gpu.routing.m.variants.b.model: ...``); ``models/registry.py`` runs it on every file it
loads, after the schema has validated each section.
"""

from __future__ import annotations

from models.schema import (
    Engine,
    Pooling,
    ProfileSpec,
    ProviderSpec,
    Registry,
    RouteSpec,
    RunnerSpec,
    check_vision_providers,
    profile_units,
)


def check_registry(registry: Registry) -> None:
    """Names unique across models and aliases, each profile's models, variants and ORT providers."""
    seen: dict[str, str] = {}
    for spec in registry.models.values():
        for alias in (spec.name, *spec.aliases):
            if alias in seen:
                raise ValueError(f"name {alias!r} is used by {seen[alias]!r} and {spec.name!r}")
            seen[alias] = spec.name
    for pname, profile in registry.profiles.items():
        for model in profile.models:
            if model not in registry.models:
                raise ValueError(f"profiles.{pname}.models: unknown model {model!r}")
        for model, route in profile.routing.items():
            check_route(registry, f"profiles.{pname}.routing.{model}", profile, model, route)
        units = {name: registry.models[name] for name in profile_units(profile)}
        ort_models = [spec for spec in units.values() if spec.engine is Engine.ORT]
        if not ort_models:
            continue
        runner = profile.runners.get(Engine.ORT, RunnerSpec())
        if runner.wants_gpu and runner.providers is None:
            raise ValueError(f"profiles.{pname}.runners.ort.providers: list the GPU providers of its ort models "
                             f"({', '.join(m.name for m in ort_models)}): tensorrt and/or cuda")
        listed = runner.providers or ("cpu",)
        for spec in ort_models:
            own = [p.name for p in spec.ort.providers or ()]
            if extra := [p for p in own if p not in listed]:
                raise ValueError(f"profiles.{pname}: model {spec.name!r} lists provider(s) {', '.join(extra)}, "
                                 f"which the profile's runners.ort.providers ({', '.join(listed)}) does not")
            if spec.vision is not None and spec.ort.providers is None:
                check_vision_providers(tuple(ProviderSpec(name=p) for p in listed))


def check_route(registry: Registry, where: str, profile: ProfileSpec, model: str, route: RouteSpec) -> None:
    """The variants of served name ``model`` exist and answer like it: the same dimensions,
    pooled or multi-vector alike, normalised alike, the same matryoshka range, vision alike."""
    if model not in profile.models:
        raise ValueError(f"{where}: {model!r} is not one of the profile's models")
    served_spec = registry.models[model]
    for name, variant in route.variants.items():
        unit = variant.model or model
        if unit not in registry.models:
            raise ValueError(f"{where}.variants.{name}.model: unknown model {unit!r}")
        spec = registry.models[unit]
        differs = [field for field, a, b in (
            ("dimensions", spec.dimensions, served_spec.dimensions),
            ("pooling (multi-vector or not)", spec.pooling is Pooling.MULTI, served_spec.pooling is Pooling.MULTI),
            ("normalize", spec.normalize, served_spec.normalize),
            ("matryoshka", spec.matryoshka, served_spec.matryoshka),
            ("vision", spec.vision is None, served_spec.vision is None)) if a != b]
        if differs:
            raise ValueError(f"{where}.variants.{name}: model {unit!r} differs from {model!r} in "
                             f"{', '.join(differs)}; a variant must answer like the served model")
    if route.shadow is not None and served_spec.pooling is Pooling.MULTI:
        raise ValueError(f"{where}.shadow: shadow comparison is defined for pooled vectors, not multi-vector "
                         "models")
