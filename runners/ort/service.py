"""The ONNX Runtime runner: a BentoML service serving every ``engine: ort`` model of the profile.

Two APIs take calls of the binary wire format (``core/wire.py``: jobs of served model,
variant, token ids or image) and answer one float32 vector (or a job's error) per job:

- ``embed``: one call's body in, its answer's body out; continuous batching (``runners/batcher.py``),
  the default;
- ``embed_adaptive``: BentoML's batchable API with adaptive batching (``batching.mode: adaptive``),
  a list of calls (one job each: BentoML's batches count list items) in, their answers out.

Both check every job first (``runners/guard.py``: a job for a model this runner does not serve,
or with bad ids or a bad image, fails alone) and bound what a worker holds (503 past
``max_queued_inputs``). Then they group a batch's jobs by served model and variant, and the engine
of the variant's registry model cuts them into length-sorted, token-budgeted sub-batches. Every
registry model of the profile's variants is loaded at start (one engine each).

On SIGTERM the runner reports not ready and keeps serving until its callers are done
(``hosting/drain.py``).

Start-up loads every model as ``python -m runners.ort.preflight`` does (``load_engine``). A model
that cannot load (a store entry or an execution provider not as the registry says) is logged with
its fix and leaves the runner not ready (``__is_ready__``), so the server never reports ready with
a model missing or running elsewhere than configured.

Service settings (connections, tracing, logging) are the runners' shared ones
(``runners/service_options.py``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict

import bentoml

from core.settings import refusing_to_start
from hosting import drain
from hosting.metrics import serve_metrics_port
from models.registry import served
from models.schema import Engine
from models.topology import runner_models
from runners.guard import (
    CallBody,
    Item,
    JobChecker,
    Key,
    ModelLimits,
    QueueLimit,
    answer,
    answer_each,
    input_schema_once,
)
from runners.metrics import runner_metrics
from runners.ort.engine import EmbeddingEngine
from runners.service_options import runner_service_options

logger = logging.getLogger(__name__)

with refusing_to_start("ort runner"):
    SERVED = served()
    SETTINGS = SERVED.runner(Engine.ORT)
    MODELS = runner_models(SERVED, Engine.ORT)  # the ort models of the profile's variants, or EMBED_RUNNER_MODELS


@bentoml.service(**runner_service_options(
    SERVED, Engine.ORT, "ort_runner", workers=SETTINGS.workers, traced=("/embed", "/embed_adaptive")
))
class OrtRunner:
    def __init__(self) -> None:
        from models import configure_logging
        from runners.batcher import ContinuousBatcher
        from runners.gpu_metrics import start_gpu_sampler
        from runners.ort.preflight import LOAD_ERRORS, load_engine

        configure_logging()
        start_gpu_sampler("ort")
        self.engines: dict[str, EmbeddingEngine] = {}  # registry model -> its engine
        limits, entries = [], {}
        self.failed: list[str] = []
        for spec in MODELS:
            try:
                engine, entries[spec.name] = load_engine(spec)
            except LOAD_ERRORS as exc:  # logged; the runner stays not ready (see the module docstring)
                logger.error("ort runner cannot serve model %s and will not become ready: %s", spec.name, exc)
                self.failed.append(spec.name)
                continue
            self.engines[spec.name] = engine
            limits.append(ModelLimits.of(spec, entries[spec.name]))
        self.checker = JobChecker(limits, SERVED.routes.values())
        for (model, variant), limit in self.checker.targets.items():
            entry = entries[limit.spec.name]
            runner_metrics().model_info.labels("ort", model, variant, entry.tag, entry.content_label,
                                               self.engines[limit.spec.name].provider).set(1)
        self.queue = QueueLimit(SETTINGS.max_queued_inputs)
        self.batcher = ContinuousBatcher(self._run, SETTINGS.batching.max_batch_size)

    @bentoml.on_startup
    def drain_on_sigterm(self) -> None:
        """Drain on SIGTERM; serve metrics on their own port when configured (as the entry service)."""
        drain.install(drain.runner_done())
        serve_metrics_port()

    def __is_ready__(self) -> bool:
        return not self.failed and not drain.draining()

    def _run(self, items: list[Item]) -> list:
        """One engine pass over checked ``items`` (any mix of models and variants): vectors in item order."""
        started = time.time()
        queue_wait = runner_metrics().queue_wait_seconds
        by_key: dict[Key, list[int]] = defaultdict(list)
        for index, (key, _, sent_at) in enumerate(items):
            by_key[key].append(index)
            queue_wait.labels(*key).observe(max(0.0, started - sent_at))
        results: list = [None] * len(items)
        for key, indices in by_key.items():
            vectors = self.engines[self.checker.unit(key)].embed([items[i][1] for i in indices], key)
            for index, vector in zip(indices, vectors, strict=True):
                results[index] = vector
        return results

    @bentoml.api
    async def embed(self, call: CallBody, /) -> CallBody:
        return await answer(call, self.checker, self.queue, self.batcher.submit)

    @bentoml.api(
        batchable=True,
        max_batch_size=SETTINGS.batching.max_batch_size,
        max_latency_ms=SETTINGS.batching.max_latency_ms,
    )
    async def embed_adaptive(self, calls: list[bytes]) -> list[bytes]:
        return await answer_each(calls, self.checker, self.queue, self._run_in_thread)

    async def _run_in_thread(self, items: list[Item]) -> list:
        return await asyncio.to_thread(self._run, items)


input_schema_once(OrtRunner)
