"""Which variant of a served name answers a request, and changing that while the server runs.

Each served name has variants (``models/registry.py: RouteSpec``; a name without a ``routing``
entry has one, ``default``), each a registry model that its engine's runner loaded at start. A
request goes to:

1. the variant named by its ``X-Embedding-Variant`` header (400 ``variant_not_found`` when the
   name has no such variant);
2. else, when it has a ``user`` (OpenAI's field), the variant its point falls in
   (``gateway/assignment.py``: one BLAKE2b hash and a bisect; the same on every replica);
3. else the default variant.

``LiveRoute`` is an immutable snapshot per served name; ``RoutingTable.route`` hands out the current
one, and a change builds new snapshots and swaps the table's reference: a request keeps the
variant it was given, every variant stays loaded, so nothing in flight fails.

Changes (``RoutingTable.change``, from ``POST /v1/admin/routing``): weights (the layout is
rebalanced, moving only the callers that have to move), the default variant, shadow traffic
(``gateway/shadow.py``), or a reset to the profile's settings. Only the variants the runners
loaded can be named; another one needs a rolling restart, and the error says which.

Sharing between replicas: with ``EMBED_ROUTING_FILE`` set, the changes (the admin overrides of
the profile: per model default, weights, layout and shadow) live in that JSON file, with a
revision number. A change is made under an exclusive ``flock`` on ``<file>.lock``, reading the
file first (so a change made on another replica is the base), and written atomically (a temporary
file renamed over it). Every gateway worker reads the file every ``WATCH_S`` seconds (open and
read, so NFS's close-to-open consistency applies) and applies a newer revision; at start it
applies the file before serving. Kubernetes: the gateway pods share the file on a ReadWriteMany
volume (``deploy/k8s``), so a change made through any replica reaches all of them within about
``WATCH_S``. Without the file, changes live in the one gateway worker's memory until it stops.
"""

from __future__ import annotations

import asyncio
import bisect
import datetime
import fcntl
import json
import logging
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from gateway import assignment
from gateway.errors import ApiError, InvalidRequest, ModelNotFound
from models.registry import ModelSpec, Pooling, Registry, Served

logger = logging.getLogger(__name__)

VARIANT_HEADER = "x-embedding-variant"
WATCH_S = 1.0
FILE_FORMAT = 1


class Conflict(ApiError):
    """The change was made against an older revision of the routing (optimistic concurrency)."""

    status = 409
    type = "invalid_request_error"
    code = "conflict"


@dataclass(frozen=True)
class Target:
    """A variant as the gateway sends to it: its name, the registry model that runs it (``spec``),
    that model's store version and content (for the admin view), its preprocessor and its runner's
    client."""

    name: str
    spec: ModelSpec
    store_tag: str
    content: str
    preprocessor: Any  # gateway.preprocess.TextPreprocessor
    runner: Any  # gateway.runner_client.RunnerClient


@dataclass(frozen=True)
class LiveRoute:
    """One served name's routing at one moment (immutable)."""

    model: str
    targets: Mapping[str, Target]  # in profile order
    weights: Mapping[str, float]
    layout: assignment.Layout
    default: Target
    shadow: Target | None
    fraction: float  # of the requests answered by another variant that the shadow also gets
    source: str  # "profile" or "admin"
    seed: Any
    owners: tuple[Target, ...]  # layout.owners as targets

    def choose(self, forced: str | None, user: str | None) -> Target:
        """The variant of a request: the forced one, the caller's, or the default."""
        if forced is not None:
            target = self.targets.get(forced)
            if target is None:
                raise InvalidRequest(
                    f"{VARIANT_HEADER}: {forced[:64]!r} is not a variant of {self.model} (its variants: "
                    f"{', '.join(self.targets)}).", code="variant_not_found")
            return target
        if user and len(self.owners) > 1:  # one owner: every user gets it, no hash needed
            return self.owners[bisect.bisect_right(self.layout.ends, assignment.point(self.seed, user))]
        return self.owners[0] if user else self.default

    def state(self) -> dict[str, Any]:
        """The override form (what the routing file holds for a changed model)."""
        return {"default": self.default.name, "weights": dict(self.weights), "layout": self.layout.to_json(),
                "shadow": {"variant": self.shadow.name, "fraction": self.fraction} if self.shadow else None}

    def describe(self) -> dict[str, Any]:
        """What ``GET /v1/admin/routing`` shows for this served name."""
        share = self.layout.share()
        return {
            "source": self.source,
            "default": self.default.name,
            "shadow": {"variant": self.shadow.name, "fraction": self.fraction} if self.shadow else None,
            "variants": [{"name": t.name, "model": t.spec.name, "engine": t.spec.engine.value,
                          "store_tag": t.store_tag, "content": t.content, "weight": self.weights[t.name],
                          "share": round(share.get(t.name, 0) / assignment.SPACE, 6)} for t in self.targets.values()],
            "layout": self.layout.to_json(),
        }


class ShadowChange(BaseModel):
    model_config = ConfigDict(extra="forbid")
    variant: str
    fraction: float = Field(gt=0, le=1)


class RoutingChange(BaseModel):
    """``POST /v1/admin/routing``: change one served name's routing. Fields left out stay as they
    are; ``weights`` names some or all variants (the others keep theirs); ``shadow: null`` turns
    shadow traffic off; ``reset`` returns to the profile's settings (alone); ``revision``: refuse
    (409) unless the routing is still at this revision."""

    model_config = ConfigDict(extra="forbid")
    model: str
    weights: dict[str, float] | None = None
    default: str | None = None
    shadow: ShadowChange | None = None
    reset: bool = False
    revision: int | None = None


class RoutingTable:
    def __init__(self, served: Served, targets: Mapping[str, Mapping[str, Target]], path: Path | None = None,
                 registry: Registry | None = None) -> None:
        """``targets``: per served name, its variants' targets in profile order. ``path``: the
        routing file shared by the replicas (None: changes stay in this worker). ``registry``: to
        name the runner a variant that is not loaded would need."""
        self.served = served
        self.targets = targets
        self.path = path
        self.registry = registry
        self.revision = 0
        self.overrides: dict[str, dict[str, Any]] = {}
        self.routes: dict[str, LiveRoute] = {name: self._route(name, None) for name in targets}
        self._read: bytes | None = None
        self._changing = asyncio.Lock()
        if path is not None:
            self.apply_file(self._read_file())

    def route(self, model: str) -> LiveRoute:
        return self.routes[model]

    def state(self) -> dict[str, Any]:
        return {"revision": self.revision, "file": str(self.path) if self.path else None,
                "models": {name: route.describe() for name, route in self.routes.items()}}

    # ---- building routes ----

    def _route(self, model: str, override: dict[str, Any] | None) -> LiveRoute:
        """``model``'s route from the profile, or from a (validated) override."""
        targets = self.targets[model]
        profile = self.served.routes[model]
        if override is None:
            weights = {v.name: v.weight for v in profile.variants}
            layout = assignment.from_weights(weights)
            default, shadow = profile.default, profile.shadow
            shadow_target = (shadow.variant, shadow.fraction) if shadow else None
        else:
            weights = {name: float(override["weights"].get(name, 0.0)) for name in targets}
            layout = assignment.Layout.from_json(override["layout"], list(targets))
            default = override["default"]
            shadow_target = (override["shadow"]["variant"], override["shadow"]["fraction"]) if override["shadow"] \
                else None
        return LiveRoute(model=model, targets=targets, weights=weights, layout=layout, default=targets[default],
                         shadow=targets[shadow_target[0]] if shadow_target else None,
                         fraction=shadow_target[1] if shadow_target else 0.0,
                         source="profile" if override is None else "admin", seed=assignment.seed(model),
                         owners=tuple(targets[name] for name in layout.owners))

    def _check_override(self, model: str, override: Any) -> None:
        """``ValueError`` unless ``override`` is a valid routing of ``model`` over its loaded variants."""
        if not isinstance(override, dict) or set(override) != {"default", "weights", "layout", "shadow"}:
            raise ValueError("expected default, weights, layout and shadow")
        loaded = self.targets[model]
        named = {override["default"], *override["weights"], *(s["variant"] for s in [override["shadow"]] if s)}
        if missing := sorted(str(n) for n in named - set(loaded)):
            raise ValueError(self._not_loaded(model, missing))
        if any(not isinstance(w, (int, float)) or w < 0 for w in override["weights"].values()):
            raise ValueError("weights are numbers >= 0")
        assignment.Layout.from_json(override["layout"], list(loaded))
        shadow = override["shadow"]
        fraction = shadow.get("fraction") if isinstance(shadow, dict) else None
        if shadow is not None and not (isinstance(fraction, (int, float)) and 0 < fraction <= 1):
            raise ValueError("shadow.fraction is in (0, 1]")

    def _not_loaded(self, model: str, names: list[str]) -> str:
        loaded = ", ".join(self.targets[model])
        where = f"profiles.{self.served.profile}.routing.{model}.variants"
        runners = sorted({spec.engine.value for name in names
                          if self.registry and (spec := self.registry.models.get(name)) is not None})
        roll = " and ".join(f"deployment/embedding-{engine}-runner" for engine in runners or
                            sorted({t.spec.engine.value for t in self.targets[model].values()}))
        return (f"variant(s) {', '.join(names)} of {model} are not loaded (the runners loaded {loaded} at start). "
                f"A new variant needs a rolling restart: add it to {where} in the registry, then restart the "
                f"runners and after them the gateways (Kubernetes: `kubectl rollout restart {roll}`, then "
                "`kubectl rollout restart deployment/embedding-gateway`; one machine: restart `bentoml serve`)")

    # ---- applying ----

    def _apply(self, revision: int, overrides: dict[str, Any], why: str) -> None:
        """Take ``overrides`` (model -> override) at ``revision``: each valid one replaces the
        profile's routing of its model; an invalid one (a variant this replica has not loaded, as
        during a rolling restart) is logged, the profile's routing kept, and the override kept for
        the replicas that can apply it."""
        valid = {}
        for model, override in overrides.items():
            if model not in self.targets:
                logger.warning("routing %s: model %s is not served by profile %s; ignored", why, model,
                               self.served.profile)
                continue
            try:
                self._check_override(model, override)
            except (ValueError, KeyError, TypeError) as exc:
                logger.error("routing %s (revision %d): the routing of %s is not applied: %s", why, revision, model,
                             exc)
                continue
            valid[model] = override
        routes = {name: self._route(name, valid.get(name)) for name in self.targets}
        for name, route in routes.items():
            if route.state() != self.routes[name].state() or route.source != self.routes[name].source:
                logger.info("routing of %s changed (%s, revision %d): default %s, weights %s, shadow %s", name, why,
                            revision, route.default.name, dict(route.weights),
                            f"{route.shadow.name} x {route.fraction:g}" if route.shadow else "off")
        self.revision, self.overrides, self.routes = revision, dict(overrides), routes

    def apply_file(self, content: bytes | None) -> bool:
        """Apply the routing file's ``content`` when it is new and of a newer revision; True if applied."""
        if content is None or content == self._read:
            return False
        self._read = content
        try:
            data = json.loads(content)
            revision, overrides = int(data["revision"]), dict(data["models"])
            if data.get("format") != FILE_FORMAT:
                raise ValueError(f"format {data.get('format')!r}, expected {FILE_FORMAT}")
        except (ValueError, KeyError, TypeError) as exc:
            logger.error("routing file %s is not valid (%s); keeping revision %d", self.path, exc, self.revision)
            return False
        if revision <= self.revision:
            return False
        self._apply(revision, overrides, f"from {self.path}")
        return True

    def _read_file(self) -> bytes | None:
        try:
            return self.path.read_bytes()
        except FileNotFoundError:
            return None

    async def watch(self) -> None:
        """Forever: apply the routing file's changes (made through another replica or worker)."""
        while True:
            await asyncio.sleep(WATCH_S)
            try:
                self.apply_file(await asyncio.to_thread(self._read_file))
            except OSError as exc:
                logger.error("routing file %s cannot be read: %s", self.path, exc)

    # ---- changing ----

    def _changed(self, change: RoutingChange, spec: ModelSpec) -> dict[str, Any] | None:
        """The new override of ``spec`` for ``change`` (None: reset to the profile); ``InvalidRequest``
        naming what is wrong."""
        route = self.routes[spec.name]
        if change.reset:
            if change.weights is not None or change.default is not None or "shadow" in change.model_fields_set:
                raise InvalidRequest("'reset' goes alone: it returns the model to the profile's routing.",
                                     param="reset")
            return None
        named = [*(change.weights or {}), *([change.default] if change.default else []),
                 *([change.shadow.variant] if change.shadow else [])]
        if missing := [name for name in dict.fromkeys(named) if name not in route.targets]:
            raise InvalidRequest(self._not_loaded(spec.name, missing) + ".", code="variant_not_loaded")
        state = route.state()
        if change.weights is not None:
            if any(w < 0 for w in change.weights.values()):
                raise InvalidRequest("'weights' are numbers >= 0.", param="weights")
            weights = {**route.weights, **change.weights}
            if sum(weights.values()) <= 0:
                raise InvalidRequest("The weights would add up to 0: some variant must take the callers.",
                                     param="weights")
            state["weights"] = weights
            state["layout"] = assignment.rebalance(route.layout, weights).to_json()
        if change.default is not None:
            state["default"] = change.default
        if "shadow" in change.model_fields_set:
            if change.shadow is not None and spec.pooling is Pooling.MULTI:
                raise InvalidRequest("Shadow comparison is defined for pooled vectors, not multi-vector models.",
                                     param="shadow")
            state["shadow"] = change.shadow.model_dump() if change.shadow else None
        return state

    async def change(self, change: RoutingChange) -> dict[str, Any]:
        """Apply ``change`` here and, with a routing file, for every replica; returns the new state."""
        spec = self.served.find(change.model)
        if spec is None:
            raise ModelNotFound(f"The model {change.model!r} is not served here.", param="model")
        async with self._changing:
            lock = await asyncio.to_thread(self._lock) if self.path else None
            try:
                if self.path:
                    self.apply_file(await asyncio.to_thread(self._read_file))  # another replica's change first
                if change.revision is not None and change.revision != self.revision:
                    raise Conflict(f"The routing is at revision {self.revision}, not {change.revision}; read it "
                                   "again (GET /v1/admin/routing) and retry.", param="revision")
                override = self._changed(change, spec)
                overrides = {name: value for name, value in self.overrides.items() if name != spec.name}
                if override is not None:
                    overrides[spec.name] = override
                revision = self.revision + 1
                if self.path:
                    await asyncio.to_thread(self._write, revision, overrides)
                self._apply(revision, overrides, "by the admin endpoint")
            finally:
                if lock is not None:
                    await asyncio.to_thread(os.close, lock)
        return self.state()

    def _lock(self) -> int:
        """An exclusive flock on ``<file>.lock`` (released when its descriptor is closed)."""
        descriptor = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        return descriptor

    def _write(self, revision: int, overrides: dict[str, Any]) -> None:
        body = json.dumps({"format": FILE_FORMAT, "revision": revision,
                           "updated_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                           "models": overrides}, indent=1).encode()
        with tempfile.NamedTemporaryFile("wb", dir=self.path.parent, prefix=f".{self.path.name}.",
                                         delete=False) as tmp:
            tmp.write(body)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp.name, self.path)
        self._read = body


ROUTING_FILE_VARIABLE = "EMBED_ROUTING_FILE"


def routing_file() -> Path | None:
    """``EMBED_ROUTING_FILE``: the routing file shared by the gateway replicas (and workers), or None."""
    value = os.environ.get(ROUTING_FILE_VARIABLE, "").strip()
    return Path(value) if value else None

