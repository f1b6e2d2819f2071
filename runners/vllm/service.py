"""The vLLM runner: a BentoML service serving every ``engine: vllm`` model of the profile.

Same wire contract as the ONNX Runtime runner (``runners/engine.py``): ``embed`` takes a list of
``EmbedJob`` (model name + token ids) and returns one base64 float32 vector per job, in order.
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

from hosting import drain
from hosting.metrics import serve_metrics_port
from models.registry import Engine, served
from models.topology import runner_models
from runners.engine import EmbedJob, EmbedResults, JobFailure, encode_array, job_error
from runners.guard import EngineDown, Item, JobChecker, ModelLimits, QueueLimit, run_jobs
from runners.metrics import runner_metrics
from runners.service_options import runner_service_options

logger = logging.getLogger(__name__)

SERVED = served()
MODELS = runner_models(SERVED, Engine.VLLM)  # all vllm models, or EMBED_RUNNER_MODELS


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
        self.engines = {}
        limits = []
        for spec in MODELS:
            entry = open_entry(spec, required=runner_files(spec), verify=False)
            self.engines[spec.name] = VllmEngine(spec, entry)
            limits.append(ModelLimits.of(spec, entry))
            runner_metrics().model_info.labels("vllm", spec.name, entry.tag, "vllm").set(1)
        self.checker = JobChecker(limits)
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
    async def embed(self, jobs: list[EmbedJob]) -> EmbedResults:
        return EmbedResults(results=await run_jobs(jobs, self.checker, self.queue, self._run))

    async def _run(self, items: list[Item]) -> list[str]:
        """Checked ``items`` to their models' engines at once: one result per item, in order; the
        items of a model whose engine is down or failed get that model's ``job_error``."""
        metrics = runner_metrics()
        started = time.time()
        by_model: dict[str, list[int]] = defaultdict(list)
        for index, (model, _, sent_at) in enumerate(items):
            by_model[model].append(index)
            metrics.queue_wait_seconds.labels(model).observe(max(0.0, started - sent_at))
        results: list[str] = [""] * len(items)

        async def run(model: str, indices: list[int]) -> None:
            begin = time.perf_counter()
            try:
                vectors = await self.engines[model].embed([items[i][1].tolist() for i in indices])
            except EngineDown as down:
                results_of_model = [job_error(JobFailure.UNAVAILABLE, str(down))] * len(indices)
            except Exception as exc:
                logger.exception("vllm engine for %s failed on %d inputs", model, len(indices))
                results_of_model = [job_error(JobFailure.ENGINE, f"{type(exc).__name__}: {exc}")] * len(indices)
            else:
                metrics.engine_seconds.labels(model).observe(time.perf_counter() - begin)
                metrics.batch_size.labels(model).observe(len(indices))
                metrics.batch_tokens.labels(model).observe(sum(len(items[i][1]) for i in indices))
                results_of_model = [encode_array(vector) for vector in vectors]
            for index, result in zip(indices, results_of_model, strict=True):
                results[index] = result

        await asyncio.gather(*(run(model, indices) for model, indices in by_model.items()))
        return results
