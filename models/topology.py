"""Where the gateway finds each runner: inside the same ``bentoml serve`` (the default) or at a URL.

- Local (``make serve``): ``bentoml serve service:Gateway`` starts the gateway and one runner
  service per engine of the profile, on one machine, talking over local sockets.
- By URL (Kubernetes, compose, several machines): ``EMBED_RUNNER_URL_<ENGINE>`` (for example
  ``EMBED_RUNNER_URL_ORT=http://ort-runner:3000``) makes the gateway reach that engine's runner,
  a separate ``bentoml serve runners.<engine>.service:<Class>``, over HTTP
  (``bentoml.depends(url=...)``), and not start it itself.
- One engine's models split over several runner deployments: the value maps models to URLs,
  ``EMBED_RUNNER_URL_ORT="model-a=http://ort-a:3000 model-b=http://ort-b:3000"``, and each of
  those runners is started with ``EMBED_RUNNER_MODELS`` naming the models it loads.

The gateway keeps one ``RunnerClient`` per route, so an unreachable runner fails (503) only the
requests for its own models. Configuration errors raise ``RegistryError`` at import, before
any service starts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from core.settings import RUNNER_URL_PREFIX, settings
from models.schema import Engine, ModelSpec, RegistryError, Served


@dataclass(frozen=True)
class RunnerRoute:
    key: str  # unique per gateway: the engine (``ort``), or ``ort_1``, ``ort_2``... when split
    engine: Engine
    url: str | None  # None: the runner runs inside this ``bentoml serve``
    models: tuple[str, ...]  # registry models this runner loads (the profile's variants' models)


def url_variable(engine: Engine) -> str:
    return RUNNER_URL_PREFIX + engine.value.upper()


def _check_url(variable: str, url: str) -> str:
    if not url.startswith(("http://", "https://")):
        raise RegistryError(f"{variable}: {url!r} is not an http(s) URL")
    return url.rstrip("/")


def runner_routes(served: Served, urls: Mapping[str, str] | None = None) -> tuple[RunnerRoute, ...]:
    """One route per runner the gateway talks to, in engine order of the profile; ``urls``: engine ->
    ``EMBED_RUNNER_URL_<ENGINE>``'s value (default: the settings')."""
    urls = settings().runner_urls if urls is None else urls
    routes: list[RunnerRoute] = []
    for engine in served.runners:
        names = tuple(m.name for m in served.for_engine(engine))
        variable = url_variable(engine)
        value = urls.get(engine.value, "").strip()
        if not value:
            routes.append(RunnerRoute(engine.value, engine, None, names))
        elif "=" not in value:
            routes.append(RunnerRoute(engine.value, engine, _check_url(variable, value), names))
        else:
            by_url: dict[str, list[str]] = {}
            for item in value.split():
                model, _, url = item.partition("=")
                spec = served.unit(model)
                if spec is None or spec.engine is not engine:
                    raise RegistryError(
                        f"{variable}: {model!r} is not an {engine.value} model of profile {served.profile!r}"
                    )
                by_url.setdefault(_check_url(variable, url), []).append(spec.name)
            if missing := sorted(set(names) - {m for ms in by_url.values() for m in ms}):
                raise RegistryError(f"{variable}: no URL for {', '.join(missing)}")
            routes.extend(
                RunnerRoute(f"{engine.value}_{i}", engine, url, tuple(models))
                for i, (url, models) in enumerate(by_url.items(), 1)
            )
    return tuple(routes)


def runner_models(served: Served, engine: Engine, wanted: tuple[str, ...] | None = None) -> tuple[ModelSpec, ...]:
    """The models one runner process loads: its engine's models of the profile (the registry models
    its variants name), or the subset ``wanted`` (default: ``EMBED_RUNNER_MODELS``'s)."""
    specs = served.for_engine(engine)
    wanted = settings().runner_models if wanted is None else wanted
    if not wanted:
        return specs
    chosen = [served.unit(name) for name in wanted]
    if bad := [name for name, spec in zip(wanted, chosen, strict=True) if spec is None or spec.engine is not engine]:
        raise RegistryError(
            f"EMBED_RUNNER_MODELS: {', '.join(bad)} not {engine.value} models of profile {served.profile!r}"
        )
    return tuple(spec for spec in specs if spec in chosen)
