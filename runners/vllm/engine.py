"""One vLLM pooling engine (``AsyncLLM``) per ``engine: vllm`` model.

The engine receives token ids only: the gateway has tokenized, applied instructions, truncated
and validated every input (``gateway/preprocess.py``), exactly as for ONNX Runtime, so usage
counts, limits and errors are the same on both paths. vLLM is started with
``skip_tokenizer_init`` and ``TokensPrompt`` inputs; it schedules and batches the inputs itself
(continuous batching, no padding: sequences are packed).

The pooler follows the registry: ``pooling`` (``MEAN``, ``CLS`` or ``LAST``) and ``normalize``
(vLLM's ``use_activation`` for embeddings). The engine always returns the full vector; the
gateway cuts ``dimensions`` (truncate, then re-normalise) for every engine alike.

``AsyncLLM`` runs its engine core (and, on CPU, a worker) in child processes: ``start`` must run
inside the serving process after start-up (a BentoML start hook), never at import, and
``shutdown`` stops those processes.

When the runner's worker itself dies (``kill -9``), its engine cores live on, orphaned, holding
their memory (on a GPU, the memory the new worker's engines need): vLLM does not stop them when
their parent dies, and a killed engine core leaves its own workers behind the same way. So each
engine notes its processes (``processes``: pid, start time and name, which together name one
process for good) when it starts; a restart stops the dead engine's leftovers; and the runner
worker records all of them (``record_processes``) in its server's own folder
(``hosting/home.py``), so that a new worker first stops the ones a worker that died left
(``stop_orphaned_engines``), and a server started again after a crash stops its predecessor's.
Only records whose worker no longer runs are acted on: the engines of a live worker, of this
server or of another server on the same Bento home, are never touched.

When the engine core process dies (killed, out of memory), vLLM marks the engine dead and fails
what it was running. ``embed`` then raises ``EngineDown`` at once (never waits), and
``restart`` replaces the engine with a new one in a worker thread; the runner reports not ready
meanwhile (``runners/vllm/service.py``).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import psutil

from hosting import home
from models.schema import ModelSpec
from models.store import StoreEntry
from runners.guard import EngineDown

logger = logging.getLogger(__name__)


def engine_args(spec: ModelSpec, entry: StoreEntry) -> dict[str, Any]:
    """``vllm.AsyncEngineArgs`` keyword arguments for ``spec`` served from store ``entry``."""
    options = spec.vllm
    args: dict[str, Any] = {
        "model": str(entry.path),
        "served_model_name": spec.name,
        "runner": "pooling",
        "pooler_config": {"pooling_type": spec.pooling.value.upper(), "use_activation": spec.normalize},
        "skip_tokenizer_init": True,  # the gateway sends token ids
        "dtype": options.dtype,
        "max_model_len": spec.max_model_len,
        "gpu_memory_utilization": options.gpu_memory_utilization,
        "max_num_seqs": options.max_num_seqs,
        "enforce_eager": options.enforce_eager,
        "enable_prefix_caching": False,
        "disable_log_stats": True,
        "seed": 0,
    }
    if options.hf_overrides:
        args["hf_overrides"] = dict(options.hf_overrides)
    if options.quantization is not None:
        args["quantization"] = options.quantization
    if options.max_num_batched_tokens is not None:
        args["max_num_batched_tokens"] = options.max_num_batched_tokens
    if options.kv_cache_memory_bytes is not None:
        args["kv_cache_memory_bytes"] = options.kv_cache_memory_bytes
    return args


ENGINE_CORE = "VLLM::EngineCor"  # the process name vLLM gives its engine core (15 characters kept)


def record_processes(engines: list[VllmEngine]) -> None:
    """Write down the vLLM processes of this worker's engines (for ``stop_orphaned_engines``)."""
    from bentoml._internal.context import server_context

    home.record(f"vllm-{server_context.worker_index or 1}", [p for engine in engines for p in engine.processes])


def stop_orphaned_engines() -> list[int]:
    """Kill the recorded vLLM processes of workers on this host that no longer run (of this server,
    or of a server that crashed); returns their pids."""
    stopped = home.stop_orphans()
    if stopped:
        logger.warning("stopped vllm processes %s left by a worker that died", stopped)
    return stopped


class VllmEngine:
    """vLLM ``AsyncLLM`` serving one model; ``embed`` is a coroutine (vLLM is asyncio-native)."""

    _ids = itertools.count()

    def __init__(self, spec: ModelSpec, entry: StoreEntry) -> None:
        self.spec = spec
        self.entry = entry
        self._engine: Any = None
        self._restart: asyncio.Task | None = None
        self.on_restart: Callable[[], None] = lambda: None  # the runner records its processes again
        self.processes: list[home.Process] = []  # its engine core and that core's workers
        self.restarts = 0

    def start(self) -> None:
        """Create the engine: loads the weights, profiles memory, starts the engine core
        process. Blocks for seconds (tiny models on CPU) to minutes (8B on GPU)."""
        from vllm import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        from runners.gpu_check import require_free_memory

        require_free_memory(f"vllm:{self.spec.name}")  # on a GPU profile: its share of the card is free, or why not
        started = time.perf_counter()
        before = {p.pid for p in psutil.Process().children()}
        self._engine = AsyncLLM.from_engine_args(AsyncEngineArgs(**engine_args(self.spec, self.entry)))
        cores = [p for p in psutil.Process().children() if p.pid not in before and p.name().startswith(ENGINE_CORE)]
        self.processes = [home.describe(p) for core in cores for p in (core, *core.children(recursive=True))]
        logger.info("vllm engine for %s ready in %.1f s", self.spec.name, time.perf_counter() - started)

    @property
    def ready(self) -> bool:
        return self._engine is not None and not self._engine.errored

    @property
    def dead(self) -> bool:
        """The engine ran and died (its core process is gone); ``restart`` replaces it."""
        return self._engine is not None and self._engine.errored

    def restart(self) -> asyncio.Task:
        """Replace a dead engine (at most one restart at a time; the same task while one runs).
        The old engine is shut down first, so its processes and memory are gone before the new
        one loads."""
        if self._restart is None or self._restart.done():
            self._restart = asyncio.get_running_loop().create_task(self._replace())
        return self._restart

    async def _replace(self) -> None:
        logger.warning("vllm engine for %s died; restarting it", self.spec.name)
        started = time.perf_counter()
        old, self._engine = self._engine, None
        if old is not None:
            await asyncio.to_thread(old.shutdown)
        # a killed core leaves its workers behind (they log that their parent exited, and stay)
        if stopped := await asyncio.to_thread(home.stop_processes, self.processes):
            logger.warning("stopped the dead vllm engine's processes %s", stopped)
        try:
            await asyncio.to_thread(self.start)
        except Exception:
            logger.exception("vllm engine for %s failed to restart; the runner stays not ready", self.spec.name)
            return
        self.on_restart()
        self.restarts += 1
        logger.warning("vllm engine for %s serves again %.1f s after its restart began",
                       self.spec.name, time.perf_counter() - started)

    async def embed(self, inputs: Sequence[Sequence[int]]) -> list[np.ndarray]:
        """Token ids per input -> float32 ``(dimensions,)`` per input, in input order. All
        inputs go to vLLM at once (it batches them with whatever else is running). Raises
        ``EngineDown`` when the engine is not running or dies meanwhile (and starts its
        restart), vLLM's error for other failures."""
        from vllm.v1.engine.exceptions import EngineDeadError

        if not self.ready:
            if self.dead:
                self.restart()
            state = "restarting" if self._restart else "not running"
            raise EngineDown(f"the vLLM engine for {self.spec.name} is {state}")
        try:
            return list(await asyncio.gather(*(self._one(ids) for ids in inputs)))
        except Exception as exc:
            if isinstance(exc, EngineDeadError) or self.dead:
                self.restart()
                raise EngineDown(f"the vLLM engine for {self.spec.name} died; it is restarting") from exc
            raise

    async def _one(self, ids: Sequence[int]) -> np.ndarray:
        from vllm import PoolingParams
        from vllm.inputs import TokensPrompt

        output = None
        request_id = f"{self.spec.name}-{next(self._ids)}"
        async for update in self._engine.encode(
            TokensPrompt(prompt_token_ids=list(ids)), PoolingParams(task="embed"), request_id=request_id
        ):
            output = update  # a pooling request yields once, when it is finished
        vector = np.asarray(output.outputs.data, dtype=np.float32)
        if vector.shape != (self.spec.dimensions,):
            raise RuntimeError(
                f"{self.spec.name}: vLLM returned shape {vector.shape}, expected ({self.spec.dimensions},)"
            )
        return vector

    def shutdown(self) -> None:
        """Stop the engine core and its workers (idempotent)."""
        if self._engine is not None:
            engine, self._engine = self._engine, None
            engine.shutdown()
