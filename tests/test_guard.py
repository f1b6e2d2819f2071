"""A runner's own checks (runners/guard.py): each bad job fails alone with a clear error, its
call-mates run; a full queue refuses the call; engine failures become per-job errors."""

import asyncio
import base64

import numpy as np
import pytest
from bentoml.exceptions import ServiceUnavailable

from models.registry import ModelSpec, Routing, Variant
from runners.engine import EmbedJob, JobFailure, job_failure
from runners.guard import EngineDown, JobChecker, JobRefused, ModelLimits, QueueLimit, run_jobs

TEXT = ModelSpec(name="text", engine="ort", store_tag="t", pooling="mean", max_tokens=8, dimensions=4)
PAGES = ModelSpec(name="pages", engine="ort", store_tag="p", pooling="multi", max_tokens=8, dimensions=4,
                  vision={"min_pixels": 28 * 28, "max_pixels": 28 * 56})
CHECKER = JobChecker([ModelLimits(TEXT, 100), ModelLimits(PAGES, 50)])


def job(model="text", ids=(1, 2, 3), image=None, variant=None):
    return EmbedJob(model=model, variant=variant, ids=list(ids), image=image, sent_at=0.0)


def image(height=28, width=56, size=None):
    data = base64.b64encode(bytes(size if size is not None else height * width * 3)).decode()
    return {"height": height, "width": width, "data": data}


@pytest.mark.parametrize("bad, message", [
    (job(model="other"), "not served by this runner"),
    (job(ids=()), "needs token ids"),
    (job(ids=range(1, 10)), "more than max_tokens 8"),
    (job(ids=(1, -5)), "negative"),
    (job(ids=(1, 100)), "outside the vocabulary of 100"),
    (job(ids=(), image=image()), "takes token ids, not images"),
    (job(model="pages", ids=(), image=image(56, 56)), "not a size the model takes"),
    (job(model="pages", ids=(), image=image(28, 30)), "not a size the model takes"),
    (job(model="pages", ids=(), image=image(size=10)), "has 10 bytes"),
    (job(model="pages", ids=(), image={"height": 28, "width": 56, "data": "!!!"}), "not base64"),
    (job(model="pages", ids=(1,), image=image()), "not both"),
])
def test_a_bad_job_fails_alone_with_a_clear_error(bad, message):
    async def run(items):
        return [f"ran {model}" for (model, _), _, _ in items]

    results = asyncio.run(run_jobs([job(), bad, job(model="pages", ids=(), image=image())], CHECKER,
                                   QueueLimit(100), run))
    assert results[0] == "ran text" and results[2] == "ran pages"
    kind, text = job_failure(results[1])
    assert kind is JobFailure.INVALID and message in text


def test_valid_jobs_become_engine_inputs():
    key, ids = CHECKER.check(job(ids=(5, 99)))
    assert key == ("text", "default") and ids.tolist() == [5, 99]
    key, page = CHECKER.check(job(model="pages", ids=(), image=image()))
    assert key == ("pages", "default") and page.shape == (28, 56, 3) and page.dtype == np.uint8


OTHER = ModelSpec(name="text-int8", engine="ort", store_tag="t8", pooling="mean", max_tokens=4, dimensions=4)
VARIANTS = JobChecker([ModelLimits(TEXT, 100), ModelLimits(OTHER, 50)], [
    Routing("text", (Variant("a", TEXT, 1), Variant("b", OTHER, 1), Variant("elsewhere", PAGES, 0)), "b", None)])


def test_a_job_runs_on_its_variants_model_and_without_one_on_the_default():
    assert VARIANTS.check(job(variant="a"))[0] == ("text", "a") and VARIANTS.unit(("text", "a")) == "text"
    assert VARIANTS.check(job())[0] == ("text", "b") and VARIANTS.unit(("text", "b")) == "text-int8"
    with pytest.raises(JobRefused, match="more than max_tokens 4"):  # the variant's own limits
        VARIANTS.check(job(ids=range(1, 6)))
    with pytest.raises(JobRefused, match="no variant 'c' on this runner .it has a, b"):
        VARIANTS.check(job(variant="c"))
    with pytest.raises(JobRefused, match="no variant 'elsewhere'"):  # loaded by another runner
        VARIANTS.check(job(variant="elsewhere"))


def test_a_full_queue_refuses_the_call_at_once():
    limit = QueueLimit(4)

    async def scenario():
        gate = asyncio.Event()

        async def run(items):
            await gate.wait()
            return ["ok"] * len(items)

        first = asyncio.create_task(run_jobs([job()] * 3, CHECKER, limit, run))
        await asyncio.sleep(0.01)
        with pytest.raises(ServiceUnavailable, match="queue full"):
            await run_jobs([job()] * 2, CHECKER, limit, run)
        gate.set()
        return await first, limit.held

    results, held = asyncio.run(scenario())
    assert results == ["ok"] * 3 and held == 0


@pytest.mark.parametrize("error, kind", [(EngineDown("restarting"), JobFailure.UNAVAILABLE),
                                         (RuntimeError("boom"), JobFailure.ENGINE)])
def test_an_engine_failure_fails_the_jobs_it_ran(error, kind):
    async def run(items):
        raise error

    results = asyncio.run(run_jobs([job(), job(model="other")], CHECKER, QueueLimit(10), run))
    assert job_failure(results[0])[0] is kind and job_failure(results[1])[0] is JobFailure.INVALID
