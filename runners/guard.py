"""What a runner checks before it does any work: it defends itself instead of trusting its caller.

The gateway validates every input before it reaches a runner, but a runner is also reachable on
its own (a Kubernetes Service, a port on the host), and one call carries the inputs of many
requests. So each runner, before batching:

- ``JobChecker.check``: turns one ``Job`` of a call into its target (served model, variant) and
  engine input, or refuses it with ``JobRefused`` (a model or variant this runner does not serve,
  no or too many token ids, ids outside the vocabulary or negative, an image of a size the model
  does not take: sides multiples of 28, area within the registry's ``vision.min_pixels``/
  ``max_pixels``). A refused job gets ``JobError(INVALID, ...)`` and its call-mates run.
- ``QueueLimit``: bounds the inputs a runner worker holds (queued or computing); a call that
  would pass ``RunnerSpec.max_queued_inputs`` is refused whole with 503 at once.
- ``run_jobs``: the two together, with per-job results (``core/wire.py``).
- ``answer``: a call's body to its answer's body, for a runner's ``embed`` API (400 when the body
  is not a well-formed call); ``answer_each`` for BentoML's batchable ``embed_adaptive``.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

import bentoml
import numpy as np
from bentoml.exceptions import BadInput, ServiceUnavailable
from bentoml.validators import ContentType

from core.wire import MEDIA_TYPE, Job, JobError, JobFailure, Result, WireError, pack_results, unpack_call
from models.schema import DEFAULT_VARIANT, ModelSpec, Routing, Variant

if TYPE_CHECKING:
    from models.store import StoreEntry

logger = logging.getLogger(__name__)


# a runner's `embed` API takes and returns one body of the wire format, as raw bytes
CallBody = Annotated[bytes, ContentType(MEDIA_TYPE)]


def input_schema_once(service: bentoml.Service, api: str = "embed") -> None:
    """Keep the JSON schema of ``service``'s root-input ``api`` instead of building it on every call.

    BentoML 1.4.40 (pinned in constraints.txt) reads a root input (``CallBody``) with
    ``IORootModel.model_validate_json``, which builds the input's JSON schema (a pydantic
    ``TypeAdapter``) on every call just to see whether it is a string: 290 us of the 380 us it
    spends per call (docs/benchmarks.md), what a lone request pays in full. This replaces that
    class's ``model_json_schema`` (a private ``_bentoml_sdk`` class, reached through the public
    ``Service.apis``) with the first schema it built, a copy each time; other arguments still
    build it. ``tests/runners/test_guard.py`` checks the schema is kept and the API still reads bodies."""
    spec = service.apis[api].input_spec
    schema = spec.model_json_schema()
    build = spec.model_json_schema

    def kept(*args: object, **kwargs: object) -> dict:
        return copy.deepcopy(schema) if not args and not kwargs else build(*args, **kwargs)

    spec.model_json_schema = kept


class JobRefused(ValueError):
    """This job will not run; the message says why (it goes back to the caller)."""


class EngineDown(RuntimeError):
    """The model's engine cannot run anything now (dead or restarting): its jobs fail as
    ``unavailable``, which the gateway answers with 503 + Retry-After."""


@dataclass(frozen=True)
class ModelLimits:
    """What a valid job for one model looks like."""

    spec: ModelSpec
    vocab_size: int | None  # token ids must be below it (None: not recorded at export)

    @classmethod
    def of(cls, spec: ModelSpec, entry: StoreEntry) -> ModelLimits:
        vocab = entry.settings.get("vocab_size")
        return cls(spec, int(vocab) if vocab else None)


Key = tuple[str, str]  # (served model, variant): what a job runs as (metric labels) and on (its registry model)


class JobChecker:
    def __init__(self, limits: Sequence[ModelLimits], routes: Iterable[Routing] = ()) -> None:
        """``limits``: one per registry model this runner loaded; ``routes``: the profile's served
        names and their variants. A job names a served model and a variant (none: the model's
        configured default) and runs on that variant's registry model when it is loaded here.
        Without ``routes`` each loaded model is served under its own name, as variant ``default``."""
        by_unit = {item.spec.name: item for item in limits}
        routes = list(routes) or [Routing(name, (Variant(DEFAULT_VARIANT, item.spec, 1.0),), DEFAULT_VARIANT, None)
                                  for name, item in by_unit.items()]
        self.targets: dict[Key, ModelLimits] = {
            (route.model, variant.name): by_unit[variant.spec.name]
            for route in routes for variant in route.variants if variant.spec.name in by_unit}
        self.defaults = {route.model: route.default for route in routes}

    def unit(self, key: Key) -> str:
        """The registry model that runs ``key``'s jobs."""
        return self.targets[key].spec.name

    def check(self, job: Job) -> tuple[Key, np.ndarray]:
        """The target of ``job`` and its engine input: int64 ids ``(tokens,)`` or a uint8 ``(height,
        width, 3)`` image; ``JobRefused`` when the job is not one this runner can run."""
        key = (job.model, job.variant or self.defaults.get(job.model, DEFAULT_VARIANT))
        limits = self.targets.get(key)
        if limits is None:
            variants = [variant for model, variant in self.targets if model == job.model]
            if variants:
                raise JobRefused(f"model {job.model!r} has no variant {key[1]!r} on this runner (it has "
                                 f"{', '.join(variants)})")
            served = sorted({model for model, _ in self.targets})
            raise JobRefused(f"model {job.model!r} is not served by this runner (it serves {', '.join(served)})")
        if job.value.ndim == 3:
            return key, self._image(job, limits)
        ids, name = job.value, job.model
        if not len(ids):
            raise JobRefused(f"{name}: a job needs token ids or an image")
        if len(ids) > limits.spec.max_tokens:
            raise JobRefused(f"{name}: {len(ids)} token ids, more than max_tokens {limits.spec.max_tokens}")
        low, high = int(ids.min()), int(ids.max())
        if low < 0:
            raise JobRefused(f"{name}: token id {low} is negative")
        if limits.vocab_size is not None and high >= limits.vocab_size:
            raise JobRefused(f"{name}: token id {high} is outside the vocabulary of {limits.vocab_size}")
        return key, ids.astype(np.int64)

    @staticmethod
    def _image(job: Job, limits: ModelLimits) -> np.ndarray:
        name, vision = job.model, limits.spec.vision
        if vision is None:
            raise JobRefused(f"{name} takes token ids, not images")
        height, width, _ = job.value.shape
        if height % 28 or width % 28 or not vision.min_pixels <= height * width <= vision.max_pixels:
            raise JobRefused(f"{name}: image {height}x{width} is not a size the model takes (sides multiples of 28, "
                             f"{vision.min_pixels} to {vision.max_pixels} pixels)")
        return job.value


class QueueLimit:
    """At most ``max_inputs`` inputs held by this worker at once (one event loop: no lock)."""

    def __init__(self, max_inputs: int) -> None:
        self.max_inputs = max_inputs
        self.held = 0

    @contextmanager
    def hold(self, inputs: int) -> Iterator[None]:
        if self.held + inputs > self.max_inputs:
            raise ServiceUnavailable(
                f"runner queue full: {self.held} inputs held, limit {self.max_inputs} (max_queued_inputs)"
            )
        self.held += inputs
        try:
            yield
        finally:
            self.held -= inputs


Item = tuple[Key, np.ndarray, float]  # ((served model, variant), engine input, sent_at)


async def run_jobs(
    jobs: Sequence[Job],
    checker: JobChecker,
    limit: QueueLimit,
    run: Callable[[list[Item]], Awaitable[Sequence[Result]]],
) -> list[Result]:
    """One result per job, in order: ``run``'s result for the jobs that pass the checks, a
    ``JobError`` for the others and for jobs whose run failed (``EngineDown``: unavailable;
    anything else: an engine fault, logged). Raises ``ServiceUnavailable`` (503) when the call
    does not fit in ``limit``."""
    with limit.hold(len(jobs)):
        results: list = [None] * len(jobs)  # each filled below
        accepted: list[int] = []
        items: list[Item] = []
        for index, job in enumerate(jobs):
            try:
                key, array = checker.check(job)
                items.append((key, array, job.sent_at))
                accepted.append(index)
            except JobRefused as refused:
                results[index] = JobError(JobFailure.INVALID, str(refused))
        if not items:
            return results
        try:
            outputs = await run(items)
        except EngineDown as exc:
            outputs = [JobError(JobFailure.UNAVAILABLE, str(exc))] * len(items)
        except Exception as exc:
            logger.exception("engine call failed for %d inputs", len(items))
            outputs = [JobError(JobFailure.ENGINE, f"{type(exc).__name__}: {exc}")] * len(items)
        for index, output in zip(accepted, outputs, strict=True):
            results[index] = output
        return results


async def answer_each(bodies: Sequence[bytes], checker: JobChecker, limit: QueueLimit,
                      run: Callable[[list[Item]], Awaitable[Sequence[Result]]]) -> list[bytes]:
    """A runner's batchable ``embed_adaptive``: the answers to the calls BentoML's batching merged,
    whose jobs run together; a body that is not a well-formed call gets one ``INVALID`` result (the
    gateway sends one job per call there), and its batch-mates run."""
    calls: list[list[Job] | WireError] = []
    for body in bodies:
        try:
            calls.append(unpack_call(body))
        except WireError as exc:
            calls.append(exc)
    results = iter(await run_jobs([job for call in calls if isinstance(call, list) for job in call], checker, limit,
                                  run))
    return [pack_results([next(results) for _ in call]) if isinstance(call, list)
            else pack_results([JobError(JobFailure.INVALID, f"not an embedding call: {call}")]) for call in calls]


async def answer(body: bytes, checker: JobChecker, limit: QueueLimit,
                 run: Callable[[list[Item]], Awaitable[Sequence[Result]]]) -> bytes:
    """A runner's ``embed``: the answer to the call in ``body`` (``core/wire.py``); ``BadInput``
    (400) when ``body`` is not a well-formed call, ``ServiceUnavailable`` (503) as ``run_jobs``."""
    try:
        jobs = unpack_call(body)
    except WireError as exc:
        raise BadInput(f"not an embedding call: {exc}") from None
    return pack_results(await run_jobs(jobs, checker, limit, run))

