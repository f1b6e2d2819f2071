"""Which variant of a served name answers a request, and changing that while the server runs.

Each served name has variants (``models/schema.py: RouteSpec``; a name without a ``routing``
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

One parser and one check for the admin endpoint and the routing file: both bodies go through
``gateway/parsing.py: parse_request`` (bounded work, strict JSON types: a string, a boolean or
``null`` is never a number) into the field types below, and every routing this worker applies,
from either, passes ``RoutingTable.checked``: weights finite, from 0 to ``MAX_WEIGHT``, adding up
to more than 0; default, weights, shadow and layout naming loaded variants only; a layout that
covers the callers in the weights' shares. A rejected change is a 4xx naming its field and changes
nothing, here or in the file.

Sharing between replicas: with ``EMBED_ROUTING_FILE`` set, the changes (the admin overrides of
the profile: per model default, weights, layout and shadow) live in that JSON file, with a
revision number. A change is made under an exclusive ``flock`` on ``<file>.lock``, reading the
file first (so a change made on another replica is the base), and written atomically (a temporary
file renamed over it). Every gateway worker reads the file every ``WATCH_S`` seconds (open and
read, so NFS's close-to-open consistency applies) and applies a newer revision; at start it
applies the file before serving. Kubernetes: the gateway pods share the file on a ReadWriteMany
volume (``deploy/k8s``), so a change made through any replica reaches all of them within about
``WATCH_S``. Without the file, changes live in the one gateway worker's memory until it stops.

A file this worker cannot use changes nothing here: one that is not a routing file at all (not
JSON, another format, a revision that is not a count) is ignored whole; a model's override that
fails the check (a variant this replica has not loaded, as during a rolling restart before it is
restarted, or a hand-edited value out of range) leaves that model's routing as it was on this
replica, the last good one, while the other models' overrides apply. Each is logged once (error),
counted in ``embedding_routing_reload_errors_total{reason}`` (``unreadable``, ``invalid``,
``not_applied``, and ``internal`` for any other failure of the watcher, which logs it with its
traceback and goes on), shown in ``GET /v1/admin/routing`` (``not_applied``) and, per model, in
the gauge ``embedding_routing_override_not_applied{model}``. The override stays in the file for the
replicas that can apply it; this replica applies it once restarted with the variant (at start it
has no earlier routing than the profile's). Here, such a model can only be reset: a change based on
this replica's older routing would undo the newer one (409).
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
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from core.errors import ApiError, InvalidRequest, ModelNotFound
from core.settings import settings
from gateway import assignment
from gateway.metrics import gateway_metrics
from gateway.parsing import BodyLimits, parse_request, validate
from models.schema import ModelSpec, Pooling, Registry, Served

logger = logging.getLogger(__name__)

VARIANT_HEADER = "x-embedding-variant"
WATCH_S = 1.0
FILE_FORMAT = 1
FILE_MAX_BYTES = 1024 * 1024  # a routing file holds a few overrides of a few kB each
FILE_LIMITS = BodyLimits(max_inputs=0, max_token_ids=0, max_values=100_000)
MAX_WEIGHT = 1_000_000  # weights are relative: 1e6 to 1e-300 is any split anyone needs, and no sum overflows

Weight = Annotated[float, Field(strict=True, ge=0, le=MAX_WEIGHT, allow_inf_nan=False)]
Fraction = Annotated[float, Field(strict=True, gt=0, le=1)]
VariantName = Annotated[StrictStr, Field(min_length=1)]
Revision = Annotated[StrictInt, Field(ge=0, lt=2**63)]


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


class Shadow(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    variant: VariantName
    fraction: Fraction


class RoutingChange(BaseModel):
    """``POST /v1/admin/routing``: change one served name's routing. Fields left out stay as they
    are; ``weights`` names some or all variants (the others keep theirs); ``shadow: null`` turns
    shadow traffic off; ``reset`` returns to the profile's settings (alone); ``revision``: refuse
    (409) unless the routing is still at this revision."""

    model_config = ConfigDict(extra="forbid")
    model: StrictStr
    weights: dict[VariantName, Weight] = None  # not nullable: null is a 400 (a default is not validated)
    default: VariantName = None
    shadow: Shadow | None = None
    reset: StrictBool = False
    revision: Revision | None = None


class Override(BaseModel):
    """One served name's routing as changed through the admin endpoint: what the routing file holds
    per model. Every key is required (``shadow`` may be null); ``layout`` is ``[[end, variant], ...]``
    (``gateway/assignment.py``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    default: VariantName
    weights: dict[VariantName, Weight]
    layout: list[tuple[StrictInt, VariantName]]
    shadow: Shadow | None


class RoutingFile(BaseModel):
    """The routing file: the overrides at one revision. Each model's override is checked on its own
    (``RoutingTable.checked``), so one this replica cannot apply leaves the others applied."""

    model_config = ConfigDict(extra="forbid")
    format: Literal[1]
    revision: Revision
    updated_at: StrictStr | None = None
    models: dict[StrictStr, Any]


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
        self.overrides: dict[str, Any] = {}  # the file's overrides as read, applied here or not (passed on)
        self.not_applied: dict[str, str] = {}  # model -> why its override in the file is not applied here
        self.routes: dict[str, LiveRoute] = {name: self._route(name, None) for name in targets}
        self._read: bytes | None = None
        self._changing = asyncio.Lock()
        self._metrics = gateway_metrics()
        for name in targets:
            self._metrics.routing_not_applied.labels(name).set(0)
        if path is not None:
            self.apply_file(self._read_file())

    def route(self, model: str) -> LiveRoute:
        return self.routes[model]

    def state(self) -> dict[str, Any]:
        return {"revision": self.revision, "file": str(self.path) if self.path else None,
                "models": {name: route.describe() for name, route in self.routes.items()},
                "not_applied": dict(self.not_applied)}

    # ---- building and checking routes ----

    def _route(self, model: str, override: Override | None) -> LiveRoute:
        """``model``'s route from the profile, or from an override that passed ``checked``."""
        targets = self.targets[model]
        profile = self.served.routes[model]
        if override is None:
            weights = {v.name: v.weight for v in profile.variants}
            layout = assignment.from_weights(weights)
            default, shadow = profile.default, profile.shadow
        else:
            weights = {name: override.weights.get(name, 0.0) for name in targets}
            layout = assignment.Layout.from_json(override.layout, list(targets))
            default, shadow = override.default, override.shadow
        return LiveRoute(model=model, targets=targets, weights=weights, layout=layout, default=targets[default],
                         shadow=targets[shadow.variant] if shadow else None,
                         fraction=shadow.fraction if shadow else 0.0,
                         source="profile" if override is None else "admin", seed=assignment.seed(model),
                         owners=tuple(targets[name] for name in layout.owners))

    def checked(self, model: str, data: Any) -> Override:
        """``data`` (plain JSON values) as a routing of ``model`` that this worker can apply: the one
        check of the admin endpoint's changes and of the routing file's overrides. ``InvalidRequest``
        naming the field otherwise (``variant_not_loaded`` for a name the runners did not load)."""
        override = validate(Override, data)
        self._require_loaded(model, "default", [override.default])
        self._require_loaded(model, "weights", list(override.weights))
        if override.shadow is not None:
            self._require_loaded(model, "shadow", [override.shadow.variant])
            if self.served.find(model).pooling is Pooling.MULTI:
                raise InvalidRequest("Shadow comparison is defined for pooled vectors, not multi-vector models.",
                                     param="shadow")
        _require_callers(override.weights)
        try:
            layout = assignment.Layout.from_json(override.layout, list(self.targets[model]))
        except ValueError as exc:
            raise InvalidRequest(f"Invalid 'layout': {exc}.", param="layout") from None
        if not assignment.in_shares(layout, override.weights):
            raise InvalidRequest("'layout' does not give each variant its share of 'weights'.", param="layout")
        return override

    def _require_loaded(self, model: str, field: str, names: list[str]) -> None:
        if missing := [name for name in dict.fromkeys(names) if name not in self.targets[model]]:
            raise InvalidRequest(self._not_loaded(model, missing) + ".", param=field, code="variant_not_loaded")

    def _not_loaded(self, model: str, names: list[str]) -> str:
        loaded = ", ".join(self.targets[model])
        where = f"profiles.{self.served.profile}.routing.{model}.variants"
        runners = sorted({spec.engine.value for name in names
                          if self.registry and (spec := self.registry.models.get(name)) is not None})
        roll = " and ".join(f"deployment/embedding-{engine}-runner" for engine in runners or
                            sorted({t.spec.engine.value for t in self.targets[model].values()}))
        return (f"variant(s) {', '.join(n[:64] for n in names)} of {model} are not loaded (the runners loaded "
                f"{loaded} at start). A new variant needs a rolling restart: add it to {where} in the registry, then "
                f"restart the runners and after them the gateways (Kubernetes: `kubectl rollout restart {roll}`, then "
                "`kubectl rollout restart deployment/embedding-gateway`; one machine: restart `bentoml serve`)")

    # ---- applying ----

    def _apply(self, revision: int, overrides: dict[str, Any], why: str) -> None:
        """Take ``overrides`` (model -> override, as read) at ``revision``: each that passes
        ``checked`` replaces its model's routing; a model without one gets the profile's; a model
        whose override fails keeps its routing here (the last good one: logged, counted, shown),
        and the override is kept, for the replicas that can apply it."""
        routes, not_applied = {}, {}
        for model in overrides:
            if model not in self.targets:
                logger.warning("routing %s (revision %d): model %s is not served by profile %s; ignored here", why,
                               revision, model[:64], self.served.profile)
        for model in self.targets:
            if model not in overrides:
                routes[model] = self._route(model, None)
                continue
            try:
                routes[model] = self._route(model, self.checked(model, overrides[model]))
            except InvalidRequest as error:
                routes[model] = self.routes[model]
                not_applied[model] = error.message
                logger.error("routing %s (revision %d): the routing of %s is not applied here: %s %s keeps its last "
                             "good routing (%s); the override stays in the file for the replicas that can apply it",
                             why, revision, model, error.message, model, routes[model].source)
                self._metrics.routing_reload_errors.labels("not_applied").inc()
        for name, route in routes.items():
            if route.state() != self.routes[name].state() or route.source != self.routes[name].source:
                logger.info("routing of %s changed (%s, revision %d): default %s, weights %s, shadow %s", name, why,
                            revision, route.default.name, dict(route.weights),
                            f"{route.shadow.name} x {route.fraction:g}" if route.shadow else "off")
            self._metrics.routing_not_applied.labels(name).set(1 if name in not_applied else 0)
        self.revision, self.overrides, self.routes, self.not_applied = revision, dict(overrides), routes, not_applied

    def apply_file(self, content: bytes | None) -> bool:
        """Apply the routing file's ``content`` when it is new and of a newer revision; True if
        applied. A file that is not a valid routing file changes nothing (logged and counted once)."""
        if content is None or content == self._read:
            return False
        self._read = content
        try:
            if len(content) > FILE_MAX_BYTES:
                raise InvalidRequest(f"The file is larger than {FILE_MAX_BYTES} bytes.")
            data = parse_request(content, RoutingFile, FILE_LIMITS)
        except InvalidRequest as error:
            logger.error("routing file %s is not valid (%s); keeping revision %d", self.path, error.message,
                         self.revision)
            self._metrics.routing_reload_errors.labels("invalid").inc()
            return False
        if data.revision <= self.revision:
            if data.revision < self.revision:
                logger.warning("routing file %s is at revision %d, older than this worker's %d; ignored", self.path,
                               data.revision, self.revision)
            return False
        self._apply(data.revision, data.models, f"from {self.path}")
        return True

    def _read_file(self) -> bytes | None:
        """The file's content (at most ``FILE_MAX_BYTES`` + 1 bytes), or None when there is none."""
        try:
            with self.path.open("rb") as file:
                return file.read(FILE_MAX_BYTES + 1)
        except FileNotFoundError:
            return None

    async def watch(self) -> None:
        """Forever: apply the routing file's changes (made through another replica or worker). No
        error ends it: each is logged and counted in ``embedding_routing_reload_errors_total``."""
        while True:
            await asyncio.sleep(WATCH_S)
            try:
                self.apply_file(await asyncio.to_thread(self._read_file))
            except OSError as exc:
                logger.error("routing file %s cannot be read: %s", self.path, exc)
                self._metrics.routing_reload_errors.labels("unreadable").inc()
            except Exception:
                logger.exception("routing file %s: unexpected error; the watcher goes on", self.path)
                self._metrics.routing_reload_errors.labels("internal").inc()

    # ---- changing ----

    def _changed(self, change: RoutingChange, spec: ModelSpec) -> Override | None:
        """The new override of ``spec`` for ``change`` (None: reset to the profile); ``InvalidRequest``
        naming what is wrong."""
        route = self.routes[spec.name]
        if change.reset:
            if change.weights is not None or change.default is not None or "shadow" in change.model_fields_set:
                raise InvalidRequest("'reset' goes alone: it returns the model to the profile's routing.",
                                     param="reset")
            return None
        if spec.name in self.not_applied:
            raise Conflict(
                f"The routing file holds a newer routing of {spec.name} that this replica cannot apply "
                f"({self.not_applied[spec.name]}); change it through a replica that loaded its variants, or reset it "
                "here with {\"reset\": true}.", param="model")
        state = route.state()
        if change.weights is not None:
            self._require_loaded(spec.name, "weights", list(change.weights))
            weights = {**route.weights, **change.weights}
            _require_callers(weights)
            state["weights"] = weights
            state["layout"] = assignment.rebalance(route.layout, weights).to_json()
        if change.default is not None:
            state["default"] = change.default
        if "shadow" in change.model_fields_set:
            state["shadow"] = change.shadow.model_dump() if change.shadow else None
        return self.checked(spec.name, state)

    async def change(self, change: RoutingChange) -> dict[str, Any]:
        """Apply ``change`` here and, with a routing file, for every replica; returns the new state."""
        spec = self.served.find(change.model)
        if spec is None:
            raise ModelNotFound(f"The model {change.model[:64]!r} is not served here.", param="model")
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
                    overrides[spec.name] = override.model_dump(mode="json")
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


def _require_callers(weights: Mapping[str, float]) -> None:
    if sum(weights.values()) <= 0:
        raise InvalidRequest("The weights would add up to 0: some variant must take the callers.", param="weights")


def routing_file() -> Path | None:
    """``EMBED_ROUTING_FILE``: the routing file shared by the gateway replicas (and workers), or None."""
    return settings().routing_file

