"""The vLLM runner: a BentoML service serving every ``engine: vllm`` model of the profile.

Same wire contract as the ONNX Runtime runner (``runners/engine.py``): ``embed`` takes a list of
``EmbedJob`` (model name + token ids) and returns one base64 float32 vector per job, in order.
There is no batcher here: every job goes to its model's ``AsyncLLM`` at once, and vLLM's own
scheduler batches the jobs of all concurrent calls (continuous batching, packed sequences).

Lifetime: one engine per model, created in the ``on_startup`` hook (vLLM spawns its engine
core as a child process, which must not happen at import) and stopped in ``on_shutdown``.
``__is_ready__`` is false until every engine is up, so the gateway's ``/readyz`` (which probes
this service) waits for the engines. An engine that fails to start is logged and leaves the
runner not ready, so the server never reports ready with a model missing.

Service settings (connections, tracing, logging) are the runners' shared ones
(``runners/service_options.py``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict

import bentoml

from models.registry import Engine, served
from models.topology import runner_models
from runners.engine import EmbedJob, EmbedResults, encode_array
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
        for spec in MODELS:
            entry = open_entry(spec, required=runner_files(spec), verify=False)
            self.engines[spec.name] = VllmEngine(spec, entry)
            runner_metrics().model_info.labels("vllm", spec.name, entry.tag, "vllm").set(1)

    @bentoml.on_startup
    def start_engines(self) -> None:
        for name, engine in self.engines.items():
            try:
                engine.start()
            except Exception:  # logged; the runner stays not ready (see the module docstring)
                logger.exception("vllm engine for %s failed to start; the runner will not become ready", name)

    @bentoml.on_shutdown
    def stop_engines(self) -> None:
        for engine in self.engines.values():
            engine.shutdown()

    def __is_ready__(self) -> bool:
        return all(engine.ready for engine in self.engines.values())

    @bentoml.api
    async def embed(self, jobs: list[EmbedJob]) -> EmbedResults:
        metrics = runner_metrics()
        started = time.time()
        by_model: dict[str, list[int]] = defaultdict(list)
        for index, job in enumerate(jobs):
            by_model[job.model].append(index)
            metrics.queue_wait_seconds.labels(job.model).observe(max(0.0, started - job.sent_at))
        results: list[str] = [""] * len(jobs)

        async def run(model: str, indices: list[int]) -> None:
            begin = time.perf_counter()
            vectors = await self.engines[model].embed([jobs[i].ids for i in indices])
            metrics.engine_seconds.labels(model).observe(time.perf_counter() - begin)
            metrics.batch_size.labels(model).observe(len(indices))
            metrics.batch_tokens.labels(model).observe(sum(len(jobs[i].ids) for i in indices))
            for index, vector in zip(indices, vectors, strict=True):
                results[index] = encode_array(vector)

        await asyncio.gather(*(run(model, indices) for model, indices in by_model.items()))
        return EmbedResults(results=results)
