"""A bounded pool of image worker processes, each with a time and memory budget per part.

Every image or file part of a request is one task (``images.PartTask``), run by one worker
process (``gateway/image_worker.py``) at a time: a worker handles one part, so PDFium never sees
two documents at once in a process. Tasks wait for a free worker in arrival order; more than
``max_waiting`` waiting tasks get 429 with ``Retry-After``, and a task that finds no free worker
within ``2 x task_timeout_s`` gets 503 with ``Retry-After``.

What a bad part costs is bounded, and only its own request fails:

- **time**: a part still running after ``task_timeout_s`` seconds (wall clock) has its worker
  killed (SIGKILL) and gets 422 ``image_unprocessable``;
- **memory**: a worker's address space is capped (``RLIMIT_AS``); a part that needs more gets
  422 ``image_unprocessable`` and that worker exits;
- **crashes**: a worker that dies on a part (a signal in Pillow's or PDFium's C code) fails that
  part alone with 422 ``image_unprocessable``.

Unlike ``concurrent.futures.ProcessPoolExecutor``, which fails every pending future with
``BrokenProcessPool`` when one worker dies, each worker here has its own pipes and its own
watcher: a dead worker is replaced by a fresh one (``embedding_image_worker_start_seconds``
measures how long that takes) while the other workers and the waiting tasks carry on.

The request's budgets across its parts (pages and pixels: ``RequestBudget``) are kept here, in
the gateway: a worker asks before it decodes each image or page, and stops at a refusal. A
request that goes away (a client gone, another part failed) refuses everything its parts ask
next, so their workers come free at the next page instead of rendering the rest.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import signal
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import ApiError, EngineUnavailable, InvalidRequest, Overloaded, Unprocessable
from gateway.image_worker import HEADER, error_from, error_message, frame
from gateway.images import PartTask

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 60
MIN_HEADROOM_BYTES = 64 * 2**20  # address space a worker needs past its start-up to decode anything
WORKER_ENV = {"MALLOC_ARENA_MAX": "2", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


class RequestBudget:
    """Pages (images plus PDF pages) and pixels that one request's parts may still decode."""

    def __init__(self, field: str, max_pages: int, max_pixels: int) -> None:
        self.field = field
        self.max_pages = max_pages
        self.max_pixels = max_pixels
        self.pages = 0
        self.pixels = 0
        self.closed = False

    def admit(self, pages: int, pixels: int, param: str) -> None:
        """Count ``pages`` and ``pixels`` of ``param`` (a part) or raise ``InvalidRequest``."""
        if self.closed:
            raise InvalidRequest("The request has ended.", param=param)
        for used, wanted, limit, what, code in (
            (self.pages, pages, self.max_pages, "images and pages", "too_many_images"),
            (self.pixels, pixels, self.max_pixels, "pixels", "image_too_large"),
        ):
            if used + wanted > limit:
                alone = wanted > limit
                raise InvalidRequest(
                    f"{param if alone else repr(self.field)} {'selects' if alone else 'holds more than'} "
                    f"{wanted if alone else limit} {what}; at most {limit} {what} are allowed per request.",
                    param=param if alone else self.field, code=code,
                )
        self.pages += pages
        self.pixels += pixels


class _Worker:
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.started = time.monotonic()

    @property
    def alive(self) -> bool:
        return self.process.returncode is None

    async def send(self, value: Any) -> None:
        self.process.stdin.write(frame(value))
        await self.process.stdin.drain()

    async def receive(self) -> tuple:
        header = await self.process.stdout.readexactly(HEADER.size)
        return pickle.loads(await self.process.stdout.readexactly(HEADER.unpack(header)[0]))

    def kill(self) -> None:
        if self.alive:
            self.process.kill()

    async def discard(self) -> None:
        """Kill, reap, and close the pipes (asyncio closes its transport only then)."""
        self.kill()
        await self.process.wait()
        self.process.stdin.close()


class ImagePool:
    def __init__(
        self, workers: int, memory_bytes: int, task_timeout_s: float, retry_after_s: int, max_waiting: int
    ) -> None:
        self.workers = workers
        self.memory_bytes = memory_bytes
        self.task_timeout_s = task_timeout_s
        self.retry_after_s = retry_after_s
        self.max_waiting = max_waiting
        self._idle: asyncio.Queue[_Worker] = asyncio.Queue()
        self._all: set[_Worker] = set()
        self._background: set[asyncio.Task] = set()
        self._waiting = 0
        self._closing = False

    async def start(self) -> None:
        """Start every worker; raises ``RuntimeError`` naming the fix when one cannot start."""
        started = time.monotonic()
        await asyncio.gather(*(self._spawn() for _ in range(self.workers)))
        logger.info("image workers: %d processes (started in %.1f s), %d MiB of address space each, %g s per part",
                    self.workers, time.monotonic() - started, self.memory_bytes // 2**20, self.task_timeout_s)

    async def close(self) -> None:
        self._closing = True
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await asyncio.gather(*(worker.discard() for worker in list(self._all)), return_exceptions=True)

    async def run(self, task: PartTask, budget: RequestBudget) -> list[tuple[int | None, np.ndarray]]:
        """The part's pages, in order; the part's own ``ApiError`` otherwise (400, 422, 429, 503)."""
        if self._waiting >= self.max_waiting:
            raise Overloaded(f"{self._waiting} images and files are waiting to be decoded; retry after "
                             f"{self.retry_after_s} s.", self.retry_after_s)
        self._waiting += 1
        try:
            worker = await asyncio.wait_for(self._take(), 2 * self.task_timeout_s)
        except TimeoutError:
            raise EngineUnavailable("No image worker came free in time; retry later.", self.retry_after_s) from None
        finally:
            self._waiting -= 1
        job = asyncio.ensure_future(self._execute(worker, task, budget))
        job.add_done_callback(lambda done: done.cancelled() or done.exception())  # retrieved when nobody waits
        try:
            return await asyncio.shield(job)  # a cancelled request lets its worker finish or stop cleanly
        except asyncio.CancelledError:
            budget.closed = True
            raise

    async def _take(self) -> _Worker:
        while True:
            worker = await self._idle.get()
            if worker.alive:
                return worker

    async def _execute(self, worker: _Worker, task: PartTask, budget: RequestBudget) -> list:
        pages: list[tuple[int | None, np.ndarray]] = []
        release = True
        try:
            async with asyncio.timeout(self.task_timeout_s):
                await worker.send(task)
                while True:
                    message = await worker.receive()
                    if message[0] == "admit":
                        try:
                            budget.admit(*message[1:])
                            await worker.send(None)
                        except InvalidRequest as refusal:
                            await worker.send(error_message(refusal))
                    elif message[0] == "page":
                        pages.append((message[1], message[2]))
                    elif message[0] == "done":
                        return pages
                    else:  # ("error" | "fatal", class, message, param, code): "fatal" workers exit
                        release = message[0] == "error"
                        raise error_from(message[1:])
        except TimeoutError:
            release = False
            worker.kill()
            self._count_exit("timeout")
            raise Unprocessable(f"{task.param} took longer than {self.task_timeout_s:g} s to decode or render.",
                                param=task.param) from None
        except (asyncio.IncompleteReadError, ConnectionError):
            release = False
            code = await worker.process.wait()
            self._count_exit("crash")
            raise Unprocessable(f"{task.param} crashed the image worker that was decoding it ({_describe(code)}).",
                                param=task.param) from None
        except ApiError as error:
            if isinstance(error, Unprocessable):
                self._count_exit("memory")
            raise
        finally:
            if release and worker.alive:
                self._idle.put_nowait(worker)

    async def _spawn(self) -> None:
        started = time.monotonic()
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway.image_worker", str(self.memory_bytes),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, cwd=ROOT, env={**os.environ, **WORKER_ENV},
        )
        worker = _Worker(process)
        try:
            kind, used = await asyncio.wait_for(worker.receive(), START_TIMEOUT_S)
        except (TimeoutError, asyncio.IncompleteReadError):
            await worker.discard()
            raise RuntimeError("an image worker (python -m gateway.image_worker) did not start; its log is above") \
                from None
        if used + MIN_HEADROOM_BYTES > self.memory_bytes:
            await worker.discard()
            raise RuntimeError(
                f"image_worker_memory_bytes ({self.memory_bytes}) leaves an image worker no room: it uses {used} "
                f"bytes of address space after start-up; set EMBED_IMAGE_WORKER_MEMORY_BYTES to at least "
                f"{used + MIN_HEADROOM_BYTES} plus what the largest image needs")
        self._all.add(worker)
        self._keep(self._watch(worker))
        _metrics().image_worker_start_seconds.observe(time.monotonic() - started)
        self._idle.put_nowait(worker)

    async def _watch(self, worker: _Worker) -> None:
        """When ``worker`` exits (after a crash, a kill or a MemoryError): start another."""
        code = await worker.process.wait()
        worker.process.stdin.close()  # with the process gone, this lets asyncio close its transport
        self._all.discard(worker)
        if self._closing:
            return
        logger.warning("image worker %d exited (%s); starting another", worker.process.pid, _describe(code))
        delay = 0.5
        while not self._closing:
            try:
                await self._spawn()
                return
            except Exception:
                logger.exception("could not start an image worker; trying again in %.0f s", delay)
                await asyncio.sleep(delay)
                delay = min(2 * delay, 30)

    def _keep(self, coroutine) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    @staticmethod
    def _count_exit(reason: str) -> None:
        _metrics().image_worker_exits.labels(reason).inc()


def _describe(code: int | None) -> str:
    if code is not None and code < 0:
        return f"signal {signal.Signals(-code).name}"
    return f"exit code {code}"


def _metrics():
    from gateway.metrics import gateway_metrics

    return gateway_metrics()
