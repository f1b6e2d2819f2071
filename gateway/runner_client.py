"""Calls from the gateway to one runner service's ``embed`` (or ``embed_adaptive``) API.

The gateway coalesces: inputs of concurrent requests for the same runner wait in the gateway, and
at most ``max_calls_in_flight`` calls (each of at most ``max_inputs_per_call`` inputs, any mix of
requests and models) are out to the runner at once. A lone request is sent at once; under load,
what queued while the calls were out goes in the next call. So the runner handles a few large
calls instead of one HTTP call per request (its per-call cost is the HTTP stack, not the model),
and two calls in flight keep its engine busy: one computing, the next one waiting there.

Calls are shared fairly between requests: each request waits in a queue of its own, and a call
is filled round-robin, one input from each waiting request in turn. So a one-text request that
arrives behind a 2048-input one goes out in the next call formed, instead of after the 16 calls
the large request's inputs fill; requests of equal size still fill calls in arrival order.

``handle`` is what ``bentoml.depends`` put on the gateway: a client of the runner process (local
socket or URL). Embedding is idempotent, so a call that failed on the connection itself (the
runner closed a kept-alive connection just as it was reused, or restarted) is retried once;
then its requests get 503 with ``Retry-After``, never a 500. Runner-side failures on valid input
are engine faults (500, logged). Either way only the requests in that call fail.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Sequence
from typing import Any

import aiohttp
import numpy as np
from bentoml.exceptions import BentoMLException, ServiceUnavailable

from gateway.errors import ApiError, EngineError, EngineUnavailable
from runners.engine import job_payload

logger = logging.getLogger(__name__)

CONNECTION_ERRORS = (aiohttp.ClientConnectionError, ConnectionError)


def settle(futures: Sequence[asyncio.Future[Any]]) -> None:
    """After a gather: cancel what is pending (its inputs are then skipped) and mark failures
    as retrieved (gather re-raises only the first)."""
    for future in futures:
        if not future.done():
            future.cancel()
        elif not future.cancelled():
            future.exception()


class RunnerClient:
    def __init__(
        self,
        engine: str,
        handle: Any,
        endpoint: str = "embed",
        retry_after_s: int = 1,
        max_calls_in_flight: int = 2,
        max_inputs_per_call: int = 128,
    ) -> None:
        """``endpoint``: ``embed`` (continuous batching) or ``embed_adaptive`` (BentoML's)."""
        self.engine = engine
        self.handle = handle
        self.endpoint = endpoint
        self.retry_after_s = retry_after_s
        self.max_calls_in_flight = max_calls_in_flight
        self.max_inputs_per_call = max_inputs_per_call
        # one queue per waiting request, in turn order: (model, input, sent_at, future) each
        self._requests: collections.deque[collections.deque[tuple[str, np.ndarray, float, asyncio.Future[str]]]] = (
            collections.deque())
        self._calls_in_flight = 0

    async def embed(self, model: str, inputs: Sequence[np.ndarray]) -> list[str]:
        """One base64 float32 result per input (token ids, or a uint8 image for vision models),
        in order (see ``runners/engine.py``)."""
        loop = asyncio.get_running_loop()
        now = time.time()
        futures = [loop.create_future() for _ in inputs]
        queue = collections.deque((model, value, now, future) for value, future in zip(inputs, futures, strict=True))
        self._requests.append(queue)
        self._dispatch()
        try:
            return list(await asyncio.gather(*futures))
        finally:
            settle(futures)
            if queue:  # failed or cancelled with inputs still waiting: they are not sent
                queue.clear()

    def _dispatch(self) -> None:
        while self._requests and self._calls_in_flight < self.max_calls_in_flight:
            batch = self._next_call()
            if batch:
                self._calls_in_flight += 1
                asyncio.get_running_loop().create_task(self._send(batch))

    def _next_call(self) -> list[tuple[dict[str, Any], asyncio.Future[str]]]:
        """Up to ``max_inputs_per_call`` jobs, one from each waiting request in turn."""
        batch = []
        while self._requests and len(batch) < self.max_inputs_per_call:
            queue = self._requests.popleft()
            while queue and queue[0][3].done():  # its request has gone
                queue.popleft()
            if queue:
                model, value, sent_at, future = queue.popleft()
                batch.append((job_payload(model, value, sent_at), future))
            if queue:
                self._requests.append(queue)
        return batch

    async def _send(self, batch: list[tuple[dict[str, Any], asyncio.Future[str]]]) -> None:
        try:
            results = await self._call([job for job, _ in batch])
        except Exception as exc:
            if not isinstance(exc, ApiError):
                logger.exception("%s runner call failed", self.engine)
                exc = EngineError(f"The {self.engine} engine failed on this request.")
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
        else:
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)
        finally:
            self._calls_in_flight -= 1
            self._dispatch()

    async def _call(self, jobs: list[dict[str, Any]]) -> list[str]:
        call = getattr(self.handle.to_async, self.endpoint)
        try:
            try:
                answer = await call(jobs)
            except CONNECTION_ERRORS as exc:
                logger.warning("%s runner connection failed (%r); retrying once", self.engine, exc)
                answer = await call(jobs)
        except CONNECTION_ERRORS as exc:
            raise EngineUnavailable(
                f"The {self.engine} runner is unreachable ({type(exc).__name__}).", self.retry_after_s
            ) from exc
        except (TimeoutError, ServiceUnavailable) as exc:
            raise EngineUnavailable(
                f"The {self.engine} runner is not ready or overloaded.", self.retry_after_s
            ) from exc
        except BentoMLException as exc:
            logger.error("%s runner failed: %s", self.engine, exc)
            raise EngineError(f"The {self.engine} engine failed on this request.") from exc
        results = answer if isinstance(answer, list) else answer.results  # embed_adaptive: a bare list
        if len(results) != len(jobs):  # never leave a request waiting for a result that will not come
            logger.error("%s runner returned %d results for %d inputs", self.engine, len(results), len(jobs))
            raise EngineError(f"The {self.engine} engine failed on this request.")
        return results


async def watch_readiness(clients: Sequence[RunnerClient], interval_s: float = 5.0) -> None:
    """Forever: probe each runner's ``/readyz`` every ``interval_s`` s and set
    ``embedding_runner_ready{runner}`` to 1 or 0 (an unreachable runner is 0)."""
    from gateway.metrics import gateway_metrics

    gauge = gateway_metrics().runner_ready

    async def probe(client: RunnerClient) -> None:
        try:
            ready = await client.handle.is_ready(max(1, int(interval_s)))
        except Exception:  # refused, reset, DNS: not ready
            ready = False
        gauge.labels(client.engine).set(1 if ready else 0)

    while True:
        await asyncio.gather(*(probe(client) for client in clients))
        await asyncio.sleep(interval_s)
