"""The contract between the gateway and the runners: the binary wire format of one call, and the
engine interface behind it.

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

This module is the whole contract (it needs numpy and orjson only), so both sides, and any other
client of a runner, share one definition of it.

An ``EmbeddingEngine`` computes results for one model. It never sees text: inputs are token ids that
the gateway has already validated (ids inside the vocabulary, at most ``max_tokens`` of them), or,
for vision models, images the gateway has already decoded and resized as the model's processor does
(any size its registry ``vision`` section allows).
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import orjson

from models.registry import ModelSpec

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
    lists for that variant (``models/registry.py: Routing``)."""

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

    def take(self, dtype: str, count: int) -> np.ndarray:
        size = np.dtype(dtype).itemsize * count
        if count < 0 or self.offset + size > len(self.body):
            raise WireError("the body is shorter than its header says")
        array = np.frombuffer(self.body, dtype=dtype, count=count, offset=self.offset)
        self.offset += size
        return array

    def done(self) -> None:
        if self.offset != len(self.body):
            raise WireError(f"{len(self.body) - self.offset} bytes follow the last array")


def pack_call(jobs: Sequence[Job]) -> bytes:
    """One call's body for ``jobs`` (see the module docstring)."""
    targets: dict[tuple[str, str | None], int] = {}
    images, pixels, id_arrays = [], [], []
    target = np.empty(len(jobs), dtype="<i4")
    image = np.full(len(jobs), -1, dtype="<i4")
    lengths = np.zeros(len(jobs) + 1, dtype="<i4")
    for i, job in enumerate(jobs):
        target[i] = targets.setdefault((job.model, job.variant), len(targets))
        if job.value.ndim == 3:
            image[i] = len(images)
            images.append(job.value.shape[:2])
            pixels.append(np.ascontiguousarray(job.value, dtype=np.uint8).reshape(-1))
        else:
            id_arrays.append(job.value)
            lengths[i + 1] = len(job.value)
    ids = np.concatenate(id_arrays).astype("<i4", copy=False) if id_arrays else np.empty(0, "<i4")
    header = {"n": len(jobs), "targets": [list(key) for key in targets], "images": [list(map(int, s)) for s in images]}
    return _frame(CALL_MAGIC, header, [np.asarray([job.sent_at for job in jobs], dtype="<f8"), target, image,
                                       np.cumsum(lengths, dtype="<i4"), ids, *pixels])


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
    sent_at, target, image = reader.take("<f8", n), reader.take("<i4", n), reader.take("<i4", n)
    offsets = reader.take("<i4", n + 1)
    if n and (offsets[0] != 0 or (np.diff(offsets) < 0).any()):
        raise WireError("'offsets' do not start at 0 and grow")
    if ((target < 0) | (target >= len(targets))).any() or ((image < -1) | (image >= len(images))).any():
        raise WireError("a job names a target or an image the header does not have")
    if n and ((image >= 0) & (np.diff(offsets) > 0)).any():
        raise WireError("a job has both token ids and an image")
    ids = reader.take("<i4", int(offsets[-1]) if n else 0)
    pages = [reader.take("u1", height * width * 3).reshape(height, width, 3) for height, width in images]
    reader.done()
    jobs = []
    for i in range(n):
        model, variant = targets[target[i]]
        value = pages[image[i]] if image[i] >= 0 else ids[offsets[i]:offsets[i + 1]]
        jobs.append(Job(model, variant, value, float(sent_at[i])))
    return jobs


def pack_results(results: Sequence[Result]) -> bytes:
    """One answer's body: each job's float32 vector, or its ``JobError``."""
    failures = [[i, r.kind.value, r.message] for i, r in enumerate(results) if isinstance(r, JobError)]
    vectors = [np.ascontiguousarray(r, dtype="<f4").reshape(-1) if not isinstance(r, JobError) else None
               for r in results]
    sizes = np.asarray([0 if v is None else v.size for v in vectors], dtype="<i4")
    return _frame(RESULTS_MAGIC, {"n": len(results), "failures": failures},
                  [sizes, *(v for v in vectors if v is not None)])


def unpack_results(body: bytes) -> list[np.ndarray | JobError]:
    """The results of an answer, in job order: flat float32 views of ``body`` (reshape a multi-vector
    result to ``(-1, dim)``) or ``JobError``; ``WireError`` when ``body`` is not a well-formed answer."""
    header, view, offset = _unframe(RESULTS_MAGIC, body)
    n, failures = header["n"], header.get("failures")
    reader = _Reader(view, offset)
    sizes = reader.take("<i4", n)
    if (sizes < 0).any():
        raise WireError("a result has a negative size")
    values = reader.take("<f4", int(sizes.sum()))
    reader.done()
    ends = np.cumsum(sizes)
    results: list[np.ndarray | JobError] = [values[end - size:end] for size, end in zip(sizes, ends, strict=True)]
    try:
        for i, kind, message in failures:
            results[i] = JobError(JobFailure(kind), str(message))
    except (TypeError, ValueError, IndexError):
        raise WireError("'failures' is not a list of [job, kind, message]") from None
    return results


class EmbeddingEngine(Protocol):
    spec: ModelSpec

    def embed(self, inputs: Sequence[np.ndarray], labels: tuple[str, str] | None = None) -> list[np.ndarray]:
        """int64 token ids ``(tokens,)`` (or, for vision models, uint8 ``(height, width, 3)``
        images as the gateway resized them) per input -> float32 ``(dim,)`` or ``(tokens, dim)`` per input,
        in input order. Raises only for engine faults (inputs are pre-validated). ``labels``: the
        (served model, variant) its engine metrics count the call under (default: ``(spec.name,
        "default")``)."""
        ...
