"""What a runner checks before it does any work: it defends itself instead of trusting its caller.

The gateway validates every input before it reaches a runner, but a runner is also reachable on
its own (a Kubernetes Service, a port on the host), and one call carries the inputs of many
requests. So each runner, before batching:

- ``JobChecker.check``: turns one ``EmbedJob`` into its target (served model, variant) and engine
  input, or refuses it with ``JobRefused`` (a model or variant this runner does not serve, no or
  too many token ids, ids outside the
  vocabulary or negative, an image of a size the model does not take (sides multiples of 28,
  area within the registry's ``vision.min_pixels``/``max_pixels``) or whose bytes do not match
  its size). A refused job gets ``job_error(INVALID, ...)`` and its call-mates run.
- ``QueueLimit``: bounds the inputs a runner worker holds (queued or computing); a call that
  would pass ``RunnerSpec.max_queued_inputs`` is refused whole with 503 at once.
- ``run_jobs``: the two together, with per-job results (``runners/engine.py``).
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from bentoml.exceptions import ServiceUnavailable

from models.registry import DEFAULT_VARIANT, ModelSpec, Routing, Variant
from runners.engine import EmbedJob, JobFailure, job_error

if TYPE_CHECKING:
    from models.store import StoreEntry

logger = logging.getLogger(__name__)


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

    def check(self, job: EmbedJob) -> tuple[Key, np.ndarray]:
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
        if job.image is not None:
            return key, self._image(job, limits)
        ids, name = job.ids, job.model
        if not ids:
            raise JobRefused(f"{name}: a job needs token ids or an image")
        if len(ids) > limits.spec.max_tokens:
            raise JobRefused(f"{name}: {len(ids)} token ids, more than max_tokens {limits.spec.max_tokens}")
        low, high = min(ids), max(ids)
        if low < 0:
            raise JobRefused(f"{name}: token id {low} is negative")
        if limits.vocab_size is not None and high >= limits.vocab_size:
            raise JobRefused(f"{name}: token id {high} is outside the vocabulary of {limits.vocab_size}")
        return key, np.asarray(ids, dtype=np.int64)

    @staticmethod
    def _image(job: EmbedJob, limits: ModelLimits) -> np.ndarray:
        image, name, vision = job.image, job.model, limits.spec.vision
        if vision is None:
            raise JobRefused(f"{name} takes token ids, not images")
        if job.ids:
            raise JobRefused(f"{name}: a job has token ids or an image, not both")
        area = image.height * image.width
        if image.height <= 0 or image.width <= 0 or image.height % 28 or image.width % 28 or not (
                vision.min_pixels <= area <= vision.max_pixels):
            raise JobRefused(f"{name}: image {image.height}x{image.width} is not a size the model takes (sides "
                             f"multiples of 28, {vision.min_pixels} to {vision.max_pixels} pixels)")
        try:
            pixels = base64.b64decode(image.data, validate=True)
        except (binascii.Error, ValueError):
            raise JobRefused(f"{name}: image data is not base64") from None
        if len(pixels) != image.height * image.width * 3:
            raise JobRefused(f"{name}: image data has {len(pixels)} bytes; {image.height}x{image.width} RGB "
                             f"needs {image.height * image.width * 3}")
        return np.frombuffer(pixels, dtype=np.uint8).reshape(image.height, image.width, 3)


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
    jobs: Sequence[EmbedJob],
    checker: JobChecker,
    limit: QueueLimit,
    run: Callable[[list[Item]], Awaitable[list[str]]],
) -> list[str]:
    """One result string per job, in order: ``run``'s result for the jobs that pass the checks,
    ``job_error`` for the others and for jobs whose run failed (``EngineDown``: unavailable;
    anything else: an engine fault, logged). Raises ``ServiceUnavailable`` (503) when the call
    does not fit in ``limit``."""
    with limit.hold(len(jobs)):
        results = [""] * len(jobs)
        accepted: list[int] = []
        items: list[Item] = []
        for index, job in enumerate(jobs):
            try:
                key, array = checker.check(job)
                items.append((key, array, job.sent_at))
                accepted.append(index)
            except JobRefused as refused:
                results[index] = job_error(JobFailure.INVALID, str(refused))
        if not items:
            return results
        try:
            outputs = await run(items)
        except EngineDown as exc:
            outputs = [job_error(JobFailure.UNAVAILABLE, str(exc))] * len(items)
        except Exception as exc:
            logger.exception("engine call failed for %d inputs", len(items))
            outputs = [job_error(JobFailure.ENGINE, f"{type(exc).__name__}: {exc}")] * len(items)
        for index, output in zip(accepted, outputs, strict=True):
            results[index] = output
        return results
