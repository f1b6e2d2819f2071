"""The contract between the gateway and the runners.

Wire format of a runner's ``embed`` API: a list of ``EmbedJob`` in, ``EmbedResults`` out (its
batchable ``embed_adaptive`` API returns the bare list), one string per job and in job order.
Each string is ``encode_array`` of the job's result: the
little-endian float32 bytes, base64-encoded, of a pooled vector ``(dim,)`` or, for multi-vector
models, of the ``(tokens, dim)`` matrix in row-major order (the gateway knows ``dim``) -- or,
for a job that failed alone, ``job_error(kind, message)``: ``!`` (never a base64 character),
the kind (``JobFailure``), ``: `` and a message. So one bad or unlucky job fails only itself,
never the other jobs of its call, which may belong to other requests.

A runner refuses a whole call only when it cannot take it at all: 503 when its queue is full
(``RunnerSpec.max_queued_inputs``) or it is not ready.

An ``EmbeddingEngine`` computes results for one model. It never sees text: inputs are token ids that the
gateway has already validated (ids inside the vocabulary, at most ``max_tokens`` of them), or, for
vision models, images the gateway has already decoded and resized as the model's processor does (any
size its registry ``vision`` section allows).
"""

from __future__ import annotations

import base64
import enum
from collections.abc import Sequence
from typing import Protocol

import numpy as np
from pydantic import BaseModel

from models.registry import ModelSpec


class ImagePayload(BaseModel):
    """An RGB image resized for its model (any size the model takes): uint8 ``(height, width, 3)``
    row-major bytes, base64-encoded."""

    height: int
    width: int
    data: str


class EmbedJob(BaseModel):
    """One input of one request: the served model's name and the variant of it that runs the job
    (``variant``; None: the profile's default variant of that model, as configured: the gateway
    always names the one it chose, since the admin endpoint can change the default), its token ids
    (or, for a page of a vision model, ``image`` and no ids), and when the gateway sent it (unix
    seconds; the runner reports queue wait from it). A runner runs the job on the registry model
    the profile lists for that variant (``models/registry.py: Routing``)."""

    model: str
    variant: str | None = None
    ids: list[int] = []
    image: ImagePayload | None = None
    sent_at: float

    def array(self) -> np.ndarray:
        """The engine input: int64 ids ``(tokens,)``, or uint8 ``(height, width, 3)`` for an image."""
        if self.image is None:
            return np.asarray(self.ids, dtype=np.int64)
        pixels = np.frombuffer(base64.b64decode(self.image.data), dtype=np.uint8)
        return pixels.reshape(self.image.height, self.image.width, 3)


def job_payload(model: str, value: np.ndarray, sent_at: float, variant: str | None = None) -> dict:
    """The JSON form of an ``EmbedJob`` for an engine input (1-D ids or a uint8 HxWx3 image)."""
    job: dict = {"model": model, "sent_at": sent_at}
    if variant is not None:
        job["variant"] = variant
    if value.ndim == 3:
        height, width, _ = value.shape
        data = base64.b64encode(np.ascontiguousarray(value, dtype=np.uint8).tobytes()).decode("ascii")
        job["image"] = {"height": height, "width": width, "data": data}
    else:
        job["ids"] = value.tolist()
    return job


class JobFailure(enum.StrEnum):
    """Why a job has no result: ``invalid``: the runner refused the job (a model or variant it does not
    serve, token ids outside the vocabulary or too many, an image that is not one of the model's
    buckets; the gateway checks all this first, so it means a misrouted or hand-made call);
    ``unavailable``: the model's engine is down or restarting (retry later); ``engine``: the
    engine failed on this job's batch (a fault; see the runner's log)."""

    INVALID = "invalid"
    UNAVAILABLE = "unavailable"
    ENGINE = "engine"


JOB_ERROR_MARK = "!"


def job_error(kind: JobFailure, message: str) -> str:
    return f"{JOB_ERROR_MARK}{kind.value}: {message}"


def job_failure(result: str) -> tuple[JobFailure, str] | None:
    """``(kind, message)`` when ``result`` is a ``job_error``, else None."""
    if not result.startswith(JOB_ERROR_MARK):
        return None
    kind, _, message = result[1:].partition(": ")
    return JobFailure(kind), message


class EmbedResults(BaseModel):
    """A runner's answer. (A model, not a bare list: BentoML 1.4.40 derives the media type of a
    bare-list return value from its JSON schema on every response, which cost 8% of the
    runner's CPU under load.)"""

    results: list[str]


class EmbeddingEngine(Protocol):
    spec: ModelSpec

    def embed(self, inputs: Sequence[np.ndarray], labels: tuple[str, str] | None = None) -> list[np.ndarray]:
        """int64 token ids ``(tokens,)`` (or, for vision models, uint8 ``(height, width, 3)``
        images as the gateway resized them) per input -> float32 ``(dim,)`` or ``(tokens, dim)`` per input,
        in input order. Raises only for engine faults (inputs are pre-validated). ``labels``: the
        (served model, variant) its engine metrics count the call under (default: ``(spec.name,
        "default")``)."""
        ...


def encode_array(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array, dtype="<f4").tobytes()).decode("ascii")


def decode_array(data: str, dim: int, multi: bool = False) -> np.ndarray:
    """Inverse of ``encode_array``: ``(dim,)``, or ``(tokens, dim)`` when ``multi``."""
    flat = np.frombuffer(base64.b64decode(data), dtype="<f4")
    return flat.reshape(-1, dim) if multi else flat
