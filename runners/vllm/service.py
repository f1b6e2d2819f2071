"""The vLLM runner: a BentoML service serving every ``engine: vllm`` model of the profile.

Same wire contract as the ONNX Runtime runner (``core/wire.py``): ``embed`` takes one binary
call of jobs (served model, variant, token ids) and returns one float32 vector per job, in order; a
job runs on the engine of its variant's registry model (one per model the profile's variants name,
all started at start-up).
There is no batcher here: every job goes to its model's ``AsyncLLM`` at once, and vLLM's own
scheduler batches the jobs of all concurrent calls (continuous batching, packed sequences).

Lifetime: one engine per model, created in the ``on_startup`` hook (vLLM spawns its engine
core as a child process, which must not happen at import) and stopped in ``on_shutdown``.
``__is_ready__`` is false until every engine is up, so the gateway's ``/readyz`` (which probes
this service) waits for the engines. An engine that fails to start is logged and leaves the
runner not ready, so the server never reports ready with a model missing. An engine whose core
process dies later fails its jobs as ``unavailable`` (the gateway answers 503 + Retry-After),
is restarted in the background, and the runner is not ready until it is back; the other
models' engines keep serving.

Every job is checked first and a worker holds at most ``max_queued_inputs`` inputs
(``runners/guard.py``). On SIGTERM the runner reports not ready and keeps serving until its
callers are done (``hosting/drain.py``); only then are the engines stopped.

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
from core.wire import JobError, JobFailure, Result
from hosting import drain
from hosting.metrics import serve_metrics_port
from models.registry import served
from models.schema import Engine
from models.topology import runner_models
from runners.guard import (
    CallBody,
    EngineDown,
    Item,
    JobChecker,
    Key,
    ModelLimits,
    QueueLimit,
    answer,
    input_schema_once,
)
from runners.metrics import runner_metrics
from runners.service_options import runner_service_options

logger = logging.getLogger(__name__)

with refusing_to_start("vllm runner"):
    SERVED = served()
    MODELS = runner_models(SERVED, Engine.VLLM)  # the vllm models of the profile's variants, or EMBED_RUNNER_MODELS


# one worker: one set of engines per runner; a second worker would load every model again
@bentoml.service(**runner_service_options(SERVED, Engine.VLLM, "vllm_runner", workers=1, traced=("/embed",)))
class VllmRunner:
    def __init__(self) -> None:
        from models import configure_logging
        from models.store import open_entry, runner_files
        from runners.gpu_metrics import start_gpu_sampler
        from runners.vllm.engine import VllmEngine

        configure_logging()
        start_gpu_sampler("vllm")
        self.engines = {}  # registry model -> its engine
        limits, entries = [], {}
        for spec in MODELS:
            entries[spec.name] = entry = open_entry(spec, required=runner_files(spec), verify=False)
            self.engines[spec.name] = VllmEngine(spec, entry)
            limits.append(ModelLimits.of(spec, entry))
        self.checker = JobChecker(limits, SERVED.routes.values())
        for (model, variant), limit in self.checker.targets.items():
            entry = entries[limit.spec.name]
            runner_metrics().model_info.labels("vllm", model, variant, entry.tag, entry.content_label, "vllm").set(1)
        self.queue = QueueLimit(SERVED.runner(Engine.VLLM).max_queued_inputs)

    @bentoml.on_startup
    def start_engines(self) -> None:
        from runners.vllm.engine import record_processes, stop_orphaned_engines

        drain.install(drain.runner_done())
        serve_metrics_port()
        stop_orphaned_engines()  # a previous worker's, if it was killed: their memory is needed now
        for name, engine in self.engines.items():
            try:
                engine.start()
            except Exception:  # logged; the runner stays not ready (see the module docstring)
                logger.exception("vllm engine for %s failed to start; the runner will not become ready", name)
        engines = list(self.engines.values())
        record_processes(engines)
        for engine in engines:
            engine.on_restart = lambda: record_processes(engines)

    @bentoml.on_shutdown
    def stop_engines(self) -> None:
        for engine in self.engines.values():
            engine.shutdown()

    def __is_ready__(self) -> bool:
        return not drain.draining() and all(engine.ready for engine in self.engines.values())

    @bentoml.api
    async def embed(self, call: CallBody, /) -> CallBody:
        return await answer(call, self.checker, self.queue, self._run)

    async def _run(self, items: list[Item]) -> list[Result]:
        """Checked ``items`` to their variants' engines at once: one result per item, in order; the
        items of a variant whose engine is down or failed get that engine's ``JobError``."""
        metrics = runner_metrics()
        started = time.time()
        by_key: dict[Key, list[int]] = defaultdict(list)
        for index, (key, _, sent_at) in enumerate(items):
            by_key[key].append(index)
            metrics.queue_wait_seconds.labels(*key).observe(max(0.0, started - sent_at))
        results: list = [None] * len(items)  # each filled below

        async def run(key: Key, indices: list[int]) -> None:
            begin = time.perf_counter()
            unit = self.checker.unit(key)
            try:
                vectors = await self.engines[unit].embed([items[i][1].tolist() for i in indices])
            except EngineDown as down:
                results_of_key = [JobError(JobFailure.UNAVAILABLE, str(down))] * len(indices)
            except Exception as exc:
                logger.exception("vllm engine for %s failed on %d inputs", unit, len(indices))
                results_of_key = [JobError(JobFailure.ENGINE, f"{type(exc).__name__}: {exc}")] * len(indices)
            else:
                metrics.engine_seconds.labels(*key).observe(time.perf_counter() - begin)
                metrics.batch_size.labels(*key).observe(len(indices))
                metrics.batch_tokens.labels(*key).observe(sum(len(items[i][1]) for i in indices))
                results_of_key = list(vectors)
            for index, result in zip(indices, results_of_key, strict=True):
                results[index] = result

        await asyncio.gather(*(run(key, indices) for key, indices in by_key.items()))
        return results


input_schema_once(VllmRunner)
