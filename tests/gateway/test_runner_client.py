"""The gateway's runner client: coalescing of concurrent requests into few runner calls, results
back to their own requests, retries and failures that stay inside one call."""

import asyncio
from types import SimpleNamespace

import aiohttp
import numpy as np
import pytest

from core.errors import EngineError, EngineUnavailable, GatewayTimeout
from core.wire import JobError, JobFailure, pack_results, unpack_call
from gateway import runner_client
from gateway.runner_client import RunnerClient

MODELS = ["m", "m0", "m1", "big", "small"]


def vector(job) -> np.ndarray:
    """What the fake runner answers for a job: its model's number in ``MODELS``, then its ids."""
    return np.asarray([MODELS.index(job.model), *job.value.tolist()], dtype=np.float32)


def named(vectors) -> list[str]:
    """The fake runner's vectors back as ``model:[ids]``."""
    return [f"{MODELS[int(v[0])]}:{[int(x) for x in v[1:]]}" for v in vectors]


class FakeRunner:
    """Answers each job with a vector naming its model and ids (``vector``); records every call's
    jobs, decoded from the wire format."""

    def __init__(self, delay=0.01, fail_with=None, ready=True):
        self.calls, self.delay, self.fail_with, self.active, self.most_active = [], delay, list(fail_with or []), 0, 0
        self.ready, self.probes = ready, 0
        self.to_async = SimpleNamespace(embed=self.embed)

    async def is_ready(self, timeout):
        self.probes += 1
        if self.ready:
            return True
        await asyncio.sleep(10)  # a socket whose worker died: accepted, never answered

    async def embed(self, body):
        jobs = unpack_call(body)
        self.calls.append(jobs)
        self.active += 1
        self.most_active = max(self.most_active, self.active)
        try:
            await asyncio.sleep(self.delay)
            if self.fail_with:
                raise self.fail_with.pop(0)
            return pack_results([vector(j) for j in jobs])
        finally:
            self.active -= 1


def ids(*values):
    return np.array(values, dtype=np.int64)


def test_concurrent_requests_share_calls_and_get_their_own_results():
    runner = FakeRunner()
    client = RunnerClient("ort", runner, max_calls_in_flight=2, max_inputs_per_call=16)

    async def scenario():
        requests = [[ids(i, k) for k in range(1 + i % 3)] for i in range(40)]
        answers = await asyncio.gather(*(client.embed(f"m{i % 2}", r) for i, r in enumerate(requests)))
        return requests, answers

    requests, answers = asyncio.run(scenario())
    for i, (request, answer) in enumerate(zip(requests, answers, strict=True)):
        assert named(answer) == [f"m{i % 2}:{row.tolist()}" for row in request]
    assert runner.most_active <= 2
    assert len(runner.calls) < 40 and all(len(call) <= 16 for call in runner.calls)
    assert sum(len(call) for call in runner.calls) == sum(len(r) for r in requests)


def test_a_lone_request_is_sent_at_once():
    runner = FakeRunner(delay=0)
    client = RunnerClient("ort", runner)
    assert named(asyncio.run(client.embed("m", [ids(1, 2)]))) == ["m:[1, 2]"]
    assert len(runner.calls) == 1


def test_connection_error_is_retried_once_then_503():
    runner = FakeRunner(fail_with=[aiohttp.ServerDisconnectedError()])
    assert named(asyncio.run(RunnerClient("ort", runner).embed("m", [ids(3)]))) == ["m:[3]"]
    runner = FakeRunner(fail_with=[aiohttp.ServerDisconnectedError(), aiohttp.ClientConnectionError()])
    with pytest.raises(EngineUnavailable):
        asyncio.run(RunnerClient("ort", runner).embed("m", [ids(3)]))


def test_a_runner_that_stops_answering_fails_fast_until_it_is_ready_again(monkeypatch):
    """A dead worker's socket accepts connections nobody answers: no retry into it, no waiting
    requests; 503 at once until a probe finds the runner ready."""
    monkeypatch.setattr(runner_client, "PROBE_TIMEOUT_S", 0.05)
    monkeypatch.setattr(runner_client, "RECOVERY_PROBE_S", 0.01)
    runner = FakeRunner(fail_with=[aiohttp.ServerDisconnectedError()], ready=False)
    client = RunnerClient("ort", runner)

    async def scenario():
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(EngineUnavailable):
            await client.embed("m", [ids(1)])
        with pytest.raises(EngineUnavailable, match="is down"):
            await client.embed("m", [ids(2)])
        failed_within = loop.time() - started
        runner.ready = True
        while client._recovery is not None:
            await asyncio.sleep(0.01)
        return failed_within, await client.embed("m", [ids(3)])

    failed_within, answer = asyncio.run(asyncio.wait_for(scenario(), 5))
    assert failed_within < 1 and named(answer) == ["m:[3]"]
    assert [job.value.tolist() for call in runner.calls for job in call] == [[1], [3]]  # nothing sent while down


def test_a_job_the_runner_failed_fails_only_its_own_request():
    async def embed(body):
        return pack_results([
            JobError(JobFailure.INVALID, "token id 99999 is outside the vocabulary") if j.value.tolist() == [1]
            else JobError(JobFailure.UNAVAILABLE, "restarting") if j.value.tolist() == [2] else vector(j)
            for j in unpack_call(body)
        ])

    runner = FakeRunner()
    runner.to_async = SimpleNamespace(embed=embed)
    client = RunnerClient("ort", runner, max_calls_in_flight=1)

    async def scenario():
        return await asyncio.gather(*(client.embed("m", [ids(i)]) for i in (1, 2, 3)), return_exceptions=True)

    refused, down, served = asyncio.run(scenario())
    assert isinstance(refused, EngineError) and "outside the vocabulary" in refused.message
    assert isinstance(down, EngineUnavailable) and down.headers["Retry-After"] == "1"
    assert named(served) == ["m:[3]"]


def test_a_runner_call_that_times_out_is_a_504():
    runner = FakeRunner(fail_with=[TimeoutError()])
    with pytest.raises(GatewayTimeout):
        asyncio.run(RunnerClient("ort", runner).embed("m", [ids(3)]))


def test_unexpected_failure_fails_that_call_only_and_never_hangs():
    runner = FakeRunner(fail_with=[KeyError("bug")])
    client = RunnerClient("ort", runner, max_calls_in_flight=1, max_inputs_per_call=1)

    async def scenario():
        return await asyncio.gather(client.embed("m", [ids(1)]), client.embed("m", [ids(2)]), return_exceptions=True)

    first, second = asyncio.run(asyncio.wait_for(scenario(), 5))
    assert isinstance(first, EngineError) and named(second) == ["m:[2]"]


def test_inputs_of_a_cancelled_request_are_not_sent():
    runner = FakeRunner(delay=0.05)
    client = RunnerClient("ort", runner, max_calls_in_flight=1)

    async def scenario():
        first = asyncio.create_task(client.embed("m", [ids(1)]))
        await asyncio.sleep(0.01)  # the first call is out; the next request waits in the gateway
        second = asyncio.create_task(client.embed("m", [ids(2)]))
        await asyncio.sleep(0.01)
        second.cancel()
        return await first

    assert named(asyncio.run(scenario())) == ["m:[1]"]
    assert [job.value.tolist() for call in runner.calls for job in call] == [[1]]


def test_a_short_answer_from_the_runner_fails_its_call_at_once():
    """A runner answering fewer results than jobs must not leave requests waiting for the timeout."""
    runner = FakeRunner(delay=0)
    runner.to_async = SimpleNamespace(embed=lambda body: _short(body))
    client = RunnerClient("ort", runner)

    async def scenario():
        return await asyncio.wait_for(client.embed("m", [ids(1), ids(2)]), timeout=5)

    with pytest.raises(EngineError):
        asyncio.run(scenario())


async def _short(body):
    return pack_results([np.zeros(2, np.float32)])


def test_the_batcher_fails_a_batch_whose_engine_returned_too_few_results():
    from runners.batcher import ContinuousBatcher

    batcher = ContinuousBatcher(lambda items: items[:-1], max_batch_size=8)

    async def scenario():
        return await asyncio.wait_for(batcher.submit([1, 2, 3]), timeout=5)

    with pytest.raises(RuntimeError, match="2 results for 3 inputs"):
        asyncio.run(scenario())


def test_a_call_into_a_silent_runner_ends_in_503_but_a_slow_live_one_is_waited_for(monkeypatch):
    """A worker that died between calls leaves no failed connection: the call just gets no
    answer. The watchdog's probe tells that apart from a runner that is only slow."""
    monkeypatch.setattr(runner_client, "WATCH_S", 0.05)
    monkeypatch.setattr(runner_client, "WATCH_PROBE_TIMEOUT_S", 0.05)
    monkeypatch.setattr(runner_client, "PROBE_TIMEOUT_S", 0.05)
    slow = FakeRunner(delay=0.3)
    assert named(asyncio.run(asyncio.wait_for(RunnerClient("ort", slow).embed("m", [ids(1)]), 5))) == ["m:[1]"]
    assert slow.probes >= 2  # probed while it computed, and it answered
    silent = FakeRunner(delay=30, ready=False)

    async def scenario():
        started = asyncio.get_running_loop().time()
        with pytest.raises(EngineUnavailable, match="stopped answering"):
            await RunnerClient("ort", silent).embed("m", [ids(1)])
        return asyncio.get_running_loop().time() - started

    assert asyncio.run(asyncio.wait_for(scenario(), 5)) < 1


def test_calls_are_shared_round_robin_between_requests():
    """A one-text request behind a 300-input one goes out in the next call formed, not after the
    large request's other calls; the large request's inputs still come back to it in order."""
    runner = FakeRunner(delay=0.02)
    client = RunnerClient("ort", runner, max_calls_in_flight=1, max_inputs_per_call=16)

    async def scenario():
        large = asyncio.create_task(client.embed("big", [ids(i) for i in range(300)]))
        await asyncio.sleep(0.005)  # the first call (16 of the large request's inputs) is out
        small = await client.embed("small", [ids(7)])
        return await large, small

    large, small = asyncio.run(scenario())
    assert named(small) == ["small:[7]"] and named(large) == [f"big:[{i}]" for i in range(300)]
    models = [[job.model for job in call] for call in runner.calls]
    assert "small" in models[1] and len(runner.calls) == 19


def test_an_answer_cut_off_midway_counts_as_a_connection_failure():
    """The runner died while its answer came in (aiohttp: payload not completed): retried like a
    failed connection, never a 500."""
    runner = FakeRunner(fail_with=[aiohttp.ClientPayloadError("Response payload is not completed")])
    assert named(asyncio.run(RunnerClient("ort", runner).embed("m", [ids(4)]))) == ["m:[4]"]
