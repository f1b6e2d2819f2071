"""Continuous batching for a runner: no timer, no polling.

Engine calls run one at a time in a worker thread. Whatever arrived while the engine was busy
goes into the next call, up to ``max_batch_size`` inputs, so a lone request runs at once (no
wait to fill a batch) and batches grow by themselves under load (TEI and vLLM schedule the same
way). A failed engine call fails only the inputs that were in it. Inputs of a request whose
caller went away are skipped when their turn comes.

This replaces BentoML's adaptive batching by default (``batching.mode: continuous``); see
docs/architecture.md for why, with measurements.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class ContinuousBatcher(Generic[Item, Result]):
    def __init__(self, run: Callable[[list[Item]], Sequence[Result]], max_batch_size: int) -> None:
        """``run`` maps a batch of items to one result per item, in order (blocking; it runs in a
        worker thread)."""
        self.run = run
        self.max_batch_size = max_batch_size
        self._queue: collections.deque[tuple[Item, asyncio.Future[Result]]] = collections.deque()
        self._worker: asyncio.Task[None] | None = None

    async def submit(self, items: Sequence[Item]) -> list[Result]:
        """Results for ``items`` in order; raises what the engine raised for their batch."""
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in items]
        self._queue.extend(zip(items, futures, strict=True))
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._drain())
        try:
            return list(await asyncio.gather(*futures))
        finally:
            for future in futures:
                if not future.done():
                    future.cancel()  # its input is skipped when its turn comes
                elif not future.cancelled():
                    future.exception()  # gather re-raises only the first failure

    async def _drain(self) -> None:
        while self._queue:
            batch = []
            while self._queue and len(batch) < self.max_batch_size:
                item, future = self._queue.popleft()
                if not future.done():
                    batch.append((item, future))
            if not batch:
                continue
            try:
                results = await asyncio.to_thread(self.run, [item for item, _ in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"the engine returned {len(results)} results for {len(batch)} inputs")
            except Exception as exc:  # an engine fault: fail this batch only
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)
