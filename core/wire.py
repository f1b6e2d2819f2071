"""The contract between the gateway and the runners: the binary wire format of one call.

One call carries the inputs ("jobs") of any requests and models; its answer has one result per job,
in job order: a vector (float32 ``(dim,)``, or ``(tokens, dim)`` for multi-vector models: the gateway
knows ``dim``) or, for a job that failed alone, its ``JobFailure`` and a message. So one bad or
unlucky job fails only itself, never the other jobs of its call, which may belong to other requests.
A runner refuses a whole call only when it cannot take it at all: 503 when its queue is full
(``RunnerSpec.max_queued_inputs``) or it is not ready, 400 when the body is not a well-formed call.

Both bodies are little-endian binary, no JSON lists, no base64 (``pack_call``/``unpack_call``,
``pack_results``/``unpack_results``)::

    call:    b"EMBC" | u32 header bytes | header JSON, space-padded to 8 bytes
             | sent_at float64[n] | target int32[n] | image int32[n] | offsets int32[n + 1]
             | ids int32[offsets[n]] | pixels uint8[sum of height x width x 3]
    results: b"EMBR" | u32 header bytes | header JSON, space-padded to 8 bytes
             | sizes int32[n] | values float32[sum of sizes]

The call's header holds ``{"n": jobs, "targets": [[model, variant or null], ...], "images":
[[height, width], ...]}``: job ``i`` runs on ``targets[target[i]]``; its token ids are
``ids[offsets[i]:offsets[i + 1]]``, or, when ``image[i] >= 0``, it is that image (uint8 ``(height,
width, 3)``, the images' pixels stored one after the other) and has no ids. ``sent_at``: when the
gateway took the job (unix seconds; the runner reports queue wait from it). The results' header
holds ``{"n": jobs, "failures": [[i, kind, message], ...]}``; job ``i``'s vector is the next
``sizes[i]`` values (0 for a failed job).

This module is the whole contract (it needs numpy and orjson only, nothing of the project), so
both sides, and any other client of a runner, share one definition of it. What a runner does with
the jobs is its own (``runners/guard.py`` checks them; ``runners/ort/engine.py: EmbeddingEngine``
is the ONNX Runtime runner's engine interface).
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import orjson

CALL_MAGIC, RESULTS_MAGIC = b"EMBC", b"EMBR"
MEDIA_TYPE = "application/octet-stream"
_PREFIX = struct.Struct("<4sI")


class WireError(ValueError):
    """A body that is not a well-formed call or answer (the runner answers it with 400)."""


@dataclass(frozen=True)
class Job:
    """One input of one request: the served model's name and the variant of it that runs the job
    (None: the profile's default variant of that model, as configured: the gateway always names
    the one it chose, since the admin endpoint can change the default), its engine input (int ids
    ``(tokens,)``, or a uint8 ``(height, width, 3)`` image for a page of a vision model), and when
    the gateway sent it (unix seconds). A runner runs the job on the registry model the profile
    lists for that variant (``models/schema.py: Routing``)."""

    model: str
    variant: str | None
    value: np.ndarray
    sent_at: float


class JobFailure(enum.StrEnum):
    """Why a job has no result: ``invalid``: the runner refused the job (a model or variant it does not
    serve, token ids outside the vocabulary or too many, an image that is not one of the model's
    sizes; the gateway checks all this first, so it means a misrouted or hand-made call);
    ``unavailable``: the model's engine is down or restarting (retry later); ``engine``: the
    engine failed on this job's batch (a fault; see the runner's log)."""

    INVALID = "invalid"
    UNAVAILABLE = "unavailable"
    ENGINE = "engine"


@dataclass(frozen=True)
class JobError:
    """A job's result when it failed alone."""

    kind: JobFailure
    message: str


Result = np.ndarray | JobError


def _frame(magic: bytes, header: dict, arrays: Sequence[np.ndarray]) -> bytes:
    head = orjson.dumps(header)
    head += b" " * (-(_PREFIX.size + len(head)) % 8)  # the arrays start 8-byte aligned
    return b"".join((_PREFIX.pack(magic, len(head)), head, *(a.tobytes() for a in arrays)))


def _unframe(magic: bytes, body: bytes) -> tuple[dict, memoryview, int]:
    """``(header, body, offset of the first array)``; ``WireError`` when not a ``magic`` frame."""
    if len(body) < _PREFIX.size:
        raise WireError("the body is shorter than the wire format's prefix")
    found, size = _PREFIX.unpack_from(body)
    if found != magic:
        raise WireError(f"the body starts with {found!r}, not {magic!r}")
    start = _PREFIX.size + size
    try:
        header = orjson.loads(body[_PREFIX.size:start])
    except orjson.JSONDecodeError as exc:
        raise WireError(f"the header is not JSON: {exc}") from None
    if not isinstance(header, dict) or not isinstance(header.get("n"), int) or header["n"] < 0:
        raise WireError("the header has no job count 'n'")
    return header, memoryview(body), start


class _Reader:
    """Consecutive little-endian arrays of a frame, each bounds-checked."""

    def __init__(self, body: memoryview, offset: int) -> None:
        self.body, self.offset = body, offset

    def take(self, dtype: np.dtype, count: int) -> np.ndarray:
        size = dtype.itemsize * count
        if count < 0 or self.offset + size > len(self.body):
            raise WireError("the body is shorter than its header says")
        array = np.frombuffer(self.body, dtype=dtype, count=count, offset=self.offset)
        self.offset += size
        return array

    def done(self) -> None:
        if self.offset != len(self.body):
            raise WireError(f"{len(self.body) - self.offset} bytes follow the last array")


F8, I4, F4, U1 = np.dtype("<f8"), np.dtype("<i4"), np.dtype("<f4"), np.dtype("u1")


def pack_call(jobs: Sequence[Job]) -> bytes:
    """One call's body for ``jobs`` (see the module docstring): a job whose value has 3 dimensions is
    an image (sent as uint8), any other a 1-D array of token ids (sent as int32: ids must fit, as
    vocabulary ids do)."""
    targets: dict[tuple[str, str | None], int] = {}
    images: list[list[int]] = []
    target, image, offsets, sent_at = [], [], [0], []
    id_arrays, pixels = [], []
    for job in jobs:
        target.append(targets.setdefault((job.model, job.variant), len(targets)))
        sent_at.append(job.sent_at)
        if job.value.ndim == 3:
            image.append(len(images))
            images.append([int(job.value.shape[0]), int(job.value.shape[1])])
            pixels.append(np.ascontiguousarray(job.value, dtype=np.uint8))
            offsets.append(offsets[-1])
        else:
            image.append(-1)
            id_arrays.append(job.value)
            offsets.append(offsets[-1] + len(job.value))
    ids = np.concatenate(id_arrays).astype(I4, copy=False) if id_arrays else np.empty(0, I4)
    header = {"n": len(jobs), "targets": [list(key) for key in targets], "images": images}
    return _frame(CALL_MAGIC, header, [np.asarray(sent_at, F8), np.asarray(target, I4), np.asarray(image, I4),
                                       np.asarray(offsets, I4), ids, *pixels])


def unpack_call(body: bytes) -> list[Job]:
    """The jobs of a call, in order (ids as int32 views of ``body``); ``WireError`` when ``body`` is
    not a well-formed call. Whether each job is one the runner can run is ``runners/guard.py``'s."""
    header, view, offset = _unframe(CALL_MAGIC, body)
    n, targets, images = header["n"], header.get("targets"), header.get("images")
    if not isinstance(targets, list) or not all(
            isinstance(t, list) and len(t) == 2 and isinstance(t[0], str) and isinstance(t[1], (str, type(None)))
            for t in targets):
        raise WireError("'targets' is not a list of [model, variant or null]")
    if not isinstance(images, list) or not all(
            isinstance(s, list) and len(s) == 2 and all(isinstance(x, int) and 0 < x < 1 << 16 for x in s)
            for s in images):
        raise WireError("'images' is not a list of [height, width] (1 to 65535 each)")
    reader = _Reader(view, offset)
    sent_at, target = reader.take(F8, n).tolist(), reader.take(I4, n).tolist()
    image, offsets = reader.take(I4, n).tolist(), reader.take(I4, n + 1).tolist()
    if offsets[0] != 0 or any(a > b for a, b in zip(offsets, offsets[1:], strict=False)):
        raise WireError("'offsets' do not start at 0 and grow")
    if n and (min(target) < 0 or max(target) >= len(targets) or min(image) < -1 or max(image) >= len(images)):
        raise WireError("a job names a target or an image the header does not have")
    ids = reader.take(I4, offsets[-1])
    pages = [reader.take(U1, height * width * 3).reshape(height, width, 3) for height, width in images]
    reader.done()
    jobs = []
    for i in range(n):
        model, variant = targets[target[i]]
        if image[i] >= 0:
            if offsets[i + 1] > offsets[i]:
                raise WireError("a job has both token ids and an image")
            value = pages[image[i]]
        else:
            value = ids[offsets[i]:offsets[i + 1]]
        jobs.append(Job(model, variant, value, sent_at[i]))
    return jobs


def pack_results(results: Sequence[Result]) -> bytes:
    """One answer's body: each job's vector (any shape, sent flat as float32; the gateway reshapes
    it), or its ``JobError``, in job order."""
    failures, sizes, vectors = [], [], []
    for i, result in enumerate(results):
        if isinstance(result, JobError):
            failures.append([i, result.kind.value, result.message])
            sizes.append(0)
        else:
            vectors.append(np.ascontiguousarray(result, dtype=F4))
            sizes.append(vectors[-1].size)
    return _frame(RESULTS_MAGIC, {"n": len(results), "failures": failures}, [np.asarray(sizes, I4), *vectors])


def unpack_results(body: bytes) -> list[np.ndarray | JobError]:
    """The results of an answer, in job order: flat float32 views of ``body`` (reshape a multi-vector
    result to ``(-1, dim)``) or ``JobError``; ``WireError`` when ``body`` is not a well-formed answer."""
    header, view, offset = _unframe(RESULTS_MAGIC, body)
    reader = _Reader(view, offset)
    sizes = reader.take(I4, header["n"]).tolist()
    if sizes and min(sizes) < 0:
        raise WireError("a result has a negative size")
    values = reader.take(F4, sum(sizes))
    reader.done()
    results: list[np.ndarray | JobError] = []
    start = 0
    for size in sizes:
        results.append(values[start:start + size])
        start += size
    try:
        for i, kind, message in header.get("failures"):
            results[i] = JobError(JobFailure(kind), str(message))
    except (TypeError, ValueError, IndexError):
        raise WireError("'failures' is not a list of [job, kind, message]") from None
    return results

