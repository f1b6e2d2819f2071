"""Calls from the gateway to one runner service's ``embed`` (or ``embed_adaptive``) API.

A call is one binary body of token ids (or images) and the answer one binary body of vectors
(``core/wire.py``: ``pack_call``, ``unpack_results``), sent through the typed bytes API the
runner declares, with the client ``bentoml.depends`` put on the gateway. In adaptive mode each
input is a call of its own in the list BentoML's batching merges (its batches count list items).

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
runner closed a kept-alive connection just as it was reused) is retried once if the runner
still answers its readiness probe within ``PROBE_TIMEOUT_S``; no new call goes out while that
probe runs. If the runner does not answer (its worker died: a socket whose worker is gone accepts
connections that nobody answers, so a call sent there would wait for the respawn), it is marked
down: the failed call's requests, those queued here and new ones for its models get 503 with
``Retry-After`` at once, never a wait, until a probe every ``RECOVERY_PROBE_S`` finds it ready
again. ``watch_readiness`` marks a runner down the same way when its periodic probe gets no
answer (a runner that answers "not ready", such as one draining, is not down). And a call still
out after ``WATCH_S`` probes the runner (allowing ``WATCH_PROBE_TIMEOUT_S``) every ``WATCH_S``: a
call sent into a dead worker's socket (the worker died between calls, so no connection failed)
ends with 503 within seconds, not when the worker has been replaced or the runner's timeout
passed; a live runner answers its probe while it computes, so long calls go on.
A call that times out gets 504. Runner-side failures on valid input are engine faults (500,
logged). Either way only the requests in that call fail; and a job the runner failed alone
(``core/wire.py``: refused, engine down, engine fault) fails only its own request.

Shadow calls (``embed_shadow``, ``gateway/shadow.py``) never wait and never share a call with a
request's inputs: one goes out as a call of its own only when no input waits here and, with it
out, a call slot stays free for requests (``idle``); otherwise it is dropped at once.
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

from core.errors import ApiError, EngineError, EngineUnavailable, GatewayTimeout
from core.wire import Job, JobError, JobFailure, WireError, pack_call, unpack_results

logger = logging.getLogger(__name__)

# the connection failed, or broke while the answer came in (the runner died mid-response)
CONNECTION_ERRORS = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, ConnectionError)
PROBE_TIMEOUT_S = 1.0  # a live runner answers /readyz in milliseconds
RECOVERY_PROBE_S = 0.5
WATCH_S = 2.0  # a call out longer than this checks that its runner still answers, every WATCH_S
WATCH_PROBE_TIMEOUT_S = 5.0  # no evidence of a failure yet: a busy machine may answer slowly


def settle(futures: Sequence[asyncio.Future[Any]]) -> None:
    """After a gather: cancel what is pending (its inputs are then skipped) and mark failures
    as retrieved (gather re-raises only the first)."""
    for future in futures:
        if not future.done():
            future.cancel()
        elif not future.cancelled():
            future.exception()


class ShadowDropped(Exception):
    """The runner is busy with requests: the shadow call was not sent."""


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
        # one queue per waiting request, in turn order: (job, future) each
        self._requests: collections.deque[collections.deque[tuple[Job, asyncio.Future[np.ndarray]]]] = \
            collections.deque()
        self._calls_in_flight = 0
        self._probe: asyncio.Task | None = None  # set while a failed call's probe runs: nothing is sent
        self._recovery: asyncio.Task | None = None  # set while the runner is marked down

    async def embed(self, model: str, inputs: Sequence[np.ndarray], variant: str | None = None) -> list[np.ndarray]:
        """One flat float32 vector per input (token ids, or a uint8 image for vision models), in
        order (a multi-vector model's ``(tokens, dim)`` rows one after the other), computed by
        ``model``'s ``variant`` (None: the runner's default for it)."""
        if self._recovery is not None:
            raise self._unavailable("is down (it does not answer its readiness probe)")
        loop = asyncio.get_running_loop()
        now = time.time()
        futures = [loop.create_future() for _ in inputs]
        queue = collections.deque((Job(model, variant, value, now), future)
                                  for value, future in zip(inputs, futures, strict=True))
        self._requests.append(queue)
        self._dispatch()
        try:
            return list(await asyncio.gather(*futures))
        finally:
            settle(futures)
            if queue:  # failed or cancelled with inputs still waiting: they are not sent
                queue.clear()

    def _dispatch(self) -> None:
        if self._probe is not None or self._recovery is not None:
            return
        while self._requests and self._calls_in_flight < self.max_calls_in_flight:
            batch = self._next_call()
            if batch:
                self._calls_in_flight += 1
                asyncio.get_running_loop().create_task(self._send(batch))

    def _next_call(self) -> list[tuple[Job, asyncio.Future[np.ndarray]]]:
        """Up to ``max_inputs_per_call`` jobs, one from each waiting request in turn."""
        batch = []
        while self._requests and len(batch) < self.max_inputs_per_call:
            queue = self._requests.popleft()
            while queue and queue[0][1].done():  # its request has gone
                queue.popleft()
            if queue:
                batch.append(queue.popleft())
            if queue:
                self._requests.append(queue)
        return batch

    async def _send(self, batch: list[tuple[Job, asyncio.Future[np.ndarray]]]) -> None:
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
                if future.done():
                    continue
                if isinstance(result, JobError):
                    future.set_exception(self._job_error(result))
                else:
                    future.set_result(result)
        finally:
            self._calls_in_flight -= 1
            self._dispatch()

    def idle(self) -> bool:
        """No input waits here, the runner is not marked down, and one more call would leave a call
        slot free for requests: a shadow call may go out."""
        return (not self._requests and self._probe is None and self._recovery is None
                and self._calls_in_flight + 1 < self.max_calls_in_flight)

    async def embed_shadow(self, model: str, variant: str, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Like ``embed``, as one call of its own sent at once, or ``ShadowDropped`` unless ``idle``
        and the inputs fit one call; a job the runner failed raises its error."""
        if not self.idle() or len(inputs) > self.max_inputs_per_call:
            raise ShadowDropped
        now = time.time()
        self._calls_in_flight += 1
        try:
            results = await self._call([Job(model, variant, value, now) for value in inputs])
        finally:
            self._calls_in_flight -= 1
            self._dispatch()
        for result in results:
            if isinstance(result, JobError):
                raise self._job_error(result)
        return results

    def _unavailable(self, why: str) -> EngineUnavailable:
        return EngineUnavailable(f"The {self.engine} runner {why}.", self.retry_after_s)

    def _job_error(self, error: JobError) -> ApiError:
        if error.kind is JobFailure.UNAVAILABLE:
            return self._unavailable(f"cannot run this input now ({error.message})")
        logger.error("%s runner failed an input (%s): %s", self.engine, error.kind.value, error.message)
        if error.kind is JobFailure.INVALID:
            return EngineError(f"The {self.engine} runner refused this input: {error.message}")
        return EngineError(f"The {self.engine} engine failed on this request.")

    async def _ready(self, timeout_s: float | None = None) -> bool | None:
        """The runner's readiness probe: True (ready), False (answered: not ready), None (no
        answer within ``timeout_s`` (``PROBE_TIMEOUT_S``): refused, reset, or accepted and never
        answered)."""
        timeout_s = timeout_s or PROBE_TIMEOUT_S
        try:
            return bool(await asyncio.wait_for(self.handle.is_ready(max(1, int(timeout_s))), timeout_s))
        except Exception:
            return None

    async def _still_there(self) -> bool:
        """After a call failed on its connection: does the runner still answer? One probe for all
        the calls that failed together; no call is sent while it runs."""
        if self._probe is None:
            self._probe = asyncio.get_running_loop().create_task(self._ready())
        probe = self._probe
        try:
            answered = await asyncio.shield(probe) is not None
        finally:
            if self._probe is probe:
                self._probe = None
        if not answered:
            self.mark_down()
        self._dispatch()
        return answered

    def mark_down(self) -> None:
        """Fail what is queued here and every new request with 503 until the runner is ready."""
        if self._recovery is not None:
            return
        logger.warning("%s runner does not answer; its models get 503 until it is ready again", self.engine)
        self._recovery = asyncio.get_running_loop().create_task(self._recover())
        while self._requests:
            for *_, future in self._requests.popleft():
                if not future.done():
                    future.set_exception(self._unavailable("does not answer"))

    async def _recover(self) -> None:
        from gateway.metrics import gateway_metrics

        gateway_metrics().runner_ready.labels(self.engine).set(0)
        started = time.monotonic()
        while not await self._ready():
            await asyncio.sleep(RECOVERY_PROBE_S)
        gateway_metrics().runner_ready.labels(self.engine).set(1)
        logger.warning("%s runner ready again after %.1f s", self.engine, time.monotonic() - started)
        self._recovery = None
        self._dispatch()

    async def _watched(self, payload: bytes | list[bytes]) -> Any:
        """The runner's answer to one call; every ``WATCH_S`` the call is out, a probe: no answer
        means the worker is gone, and the call ends with 503 (the runner is marked down)."""
        call = asyncio.ensure_future(getattr(self.handle.to_async, self.endpoint)(payload))
        try:
            while True:
                done, _ = await asyncio.wait({call}, timeout=WATCH_S)
                if done:
                    return call.result()
                if await self._ready(WATCH_PROBE_TIMEOUT_S) is None and not call.done():
                    self.mark_down()
                    raise self._unavailable("stopped answering")
        finally:
            call.cancel()

    async def _call(self, jobs: list[Job]) -> list[np.ndarray | JobError]:
        # continuous: one call; adaptive: one call per job, in the list BentoML's batching merges
        payload = pack_call(jobs) if self.endpoint == "embed" else [pack_call([job]) for job in jobs]
        try:
            try:
                answer = await self._watched(payload)
            except CONNECTION_ERRORS as exc:
                if not await self._still_there():
                    raise
                logger.warning("%s runner connection failed (%r); retrying once", self.engine, exc)
                answer = await self._watched(payload)
        except CONNECTION_ERRORS as exc:
            raise self._unavailable(f"is unreachable ({type(exc).__name__})") from exc
        except TimeoutError as exc:
            raise GatewayTimeout(f"The {self.engine} runner did not answer in time.", self.retry_after_s) from exc
        except ServiceUnavailable as exc:
            raise self._unavailable("is not ready or overloaded") from exc
        except BentoMLException as exc:
            logger.error("%s runner failed: %s", self.engine, exc)
            raise EngineError(f"The {self.engine} engine failed on this request.") from exc
        try:
            results = unpack_results(answer) if isinstance(answer, bytes) else [
                result for one in answer for result in unpack_results(one)]
        except WireError as exc:
            logger.error("%s runner answered what is not an answer: %s", self.engine, exc)
            raise EngineError(f"The {self.engine} engine failed on this request.") from exc
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
        except Exception:  # refused, reset, DNS, no answer: down
            ready = False
            client.mark_down()
        gauge.labels(client.engine).set(1 if ready else 0)

    while True:
        await asyncio.gather(*(probe(client) for client in clients))
        await asyncio.sleep(interval_s)
