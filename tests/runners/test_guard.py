"""A runner's own checks (runners/guard.py): each bad job fails alone with a clear error, its
call-mates run; a full queue refuses the call; engine failures become per-job errors; a body that
is not a call is refused whole (400), and one that is answers one result per job."""

import asyncio

import numpy as np
import pytest
from bentoml.exceptions import BadInput, ServiceUnavailable

from core.wire import Job, JobError, JobFailure, pack_call, unpack_results
from models.schema import ModelSpec, Routing, Variant
from runners.guard import EngineDown, JobChecker, JobRefused, ModelLimits, QueueLimit, answer, answer_each, run_jobs

TEXT = ModelSpec(name="text", engine="ort", store_tag="t", pooling="mean", max_tokens=8, dimensions=4)
PAGES = ModelSpec(name="pages", engine="ort", store_tag="p", pooling="multi", max_tokens=8, dimensions=4,
                  vision={"min_pixels": 28 * 28, "max_pixels": 28 * 56})
CHECKER = JobChecker([ModelLimits(TEXT, 100), ModelLimits(PAGES, 50)])


def job(model="text", ids=(1, 2, 3), image=None, variant=None):
    value = image if image is not None else np.asarray(ids, dtype=np.int32)
    return Job(model, variant, value, 0.0)


def image(height=28, width=56):
    return np.zeros((height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize("bad, message", [
    (job(model="other"), "not served by this runner"),
    (job(ids=()), "needs token ids"),
    (job(ids=range(1, 10)), "more than max_tokens 8"),
    (job(ids=(1, -5)), "negative"),
    (job(ids=(1, 100)), "outside the vocabulary of 100"),
    (job(image=image()), "takes token ids, not images"),
    (job(model="pages", image=image(56, 56)), "not a size the model takes"),
    (job(model="pages", image=image(28, 30)), "not a size the model takes"),
])
def test_a_bad_job_fails_alone_with_a_clear_error(bad, message):
    async def run(items):
        return [f"ran {model}" for (model, _), _, _ in items]

    results = asyncio.run(run_jobs([job(), bad, job(model="pages", image=image())], CHECKER, QueueLimit(100), run))
    assert results[0] == "ran text" and results[2] == "ran pages"
    assert isinstance(results[1], JobError) and results[1].kind is JobFailure.INVALID and message in results[1].message


def test_valid_jobs_become_engine_inputs():
    key, ids = CHECKER.check(job(ids=(5, 99)))
    assert key == ("text", "default") and ids.tolist() == [5, 99]
    assert ids.dtype == np.int64  # the engine's input type, whatever the wire carried
    key, page = CHECKER.check(job(model="pages", image=image()))
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
    assert results[0].kind is kind and results[1].kind is JobFailure.INVALID


async def vectors(items):
    """A fake engine: each input's first id (or its image's height) as a 2-value vector."""
    return [np.full(2, value.shape[0] if value.ndim == 3 else value[0], dtype=np.float32) for _, value, _ in items]


def test_a_call_body_is_answered_one_result_per_job_and_a_bad_body_is_refused_whole():
    body = pack_call([job(ids=(7, 8)), job(model="other"), job(model="pages", image=image())])
    results = unpack_results(asyncio.run(answer(body, CHECKER, QueueLimit(10), vectors)))
    assert results[0].tolist() == [7, 7] and results[2].tolist() == [28, 28]
    assert isinstance(results[1], JobError) and "not served by this runner" in results[1].message
    for bad in (b"", b"nonsense", body[:-3], body + b"x", b"EMBR" + body[4:]):
        with pytest.raises(BadInput, match="not an embedding call"):
            asyncio.run(answer(bad, CHECKER, QueueLimit(10), vectors))


def test_adaptive_calls_run_together_and_a_bad_one_fails_alone():
    bodies = [pack_call([job(ids=(5,))]), b"nonsense", pack_call([job(ids=(6,))])]
    answers = [unpack_results(a) for a in asyncio.run(answer_each(bodies, CHECKER, QueueLimit(10), vectors))]
    assert answers[0][0].tolist() == [5, 5] and answers[2][0].tolist() == [6, 6]
    assert len(answers[1]) == 1 and answers[1][0].kind is JobFailure.INVALID


def test_the_call_body_schema_is_built_once_and_bodies_still_read(monkeypatch):
    """BentoML 1.4.40 builds a root input's JSON schema on every call (290 us); input_schema_once
    keeps the first, so a call reads its body without building it, and the body is unchanged."""
    import _bentoml_sdk.io_models as io_models
    import bentoml

    from runners.guard import CallBody, input_schema_once

    @bentoml.service
    class Echo:
        @bentoml.api
        async def embed(self, call: CallBody, /) -> CallBody:
            return call

    spec = Echo.apis["embed"].input_spec
    schema = spec.model_json_schema()
    input_schema_once(Echo)

    def no_build(*args, **kwargs):
        raise AssertionError("the schema was built again")

    monkeypatch.setattr(io_models, "TypeAdapter", no_build)
    body = pack_call([Job("m", None, np.array([1, 2, 3], dtype=np.int32), 0.0)])
    assert spec.model_validate_json(body).root == body
    kept = spec.model_json_schema()
    assert kept == schema and kept["type"] == "string"
    kept["type"] = "changed"  # a caller's change does not reach the kept schema
    assert spec.model_json_schema() == schema
