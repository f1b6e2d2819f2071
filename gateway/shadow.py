"""Shadow traffic: a candidate variant embeds what another variant answered, and the two are compared.

A served name's routing may name a shadow variant and a fraction (``models/schema.py:
ShadowSpec``; changed live through ``/v1/admin/routing``). That fraction of its
``/v1/embeddings`` requests answered by another variant (one random draw per request) carries a
``ShadowJob``; the job starts only after the primary's answer has gone out (``gateway/app.py`` runs
``start`` as the response's background step, which only schedules it), so it never delays an
answer, and it takes no admission slot. It is dropped at once, counted, when the shadow
variant's runner is busy with requests (``RunnerClient.idle``: an input waits there, or its one
free call slot would be taken) or a shadow call is already out to that runner: under load,
shadow work is the first to go. A request of more inputs than one call takes is not shadowed
(``skipped``).

The shadow variant reuses the request's token ids when its preprocessing is the primary's (the
same tokenizer file and settings: ``TextPreprocessor.signature``); otherwise it tokenizes the
texts itself (a request of token ids or images is then skipped). Agreement, per served name,
primary variant and shadow variant:

- ``embedding_shadow_cosine``: the cosine of each input's two vectors;
- ``embedding_shadow_topk_overlap``: for requests of at least ``MIN_TOPK_INPUTS`` inputs, for each
  input the share of its ``TOPK`` nearest neighbours within the request (by cosine, itself
  excluded) that both variants agree on;
- ``embedding_shadow_requests_total{outcome}``: ``compared``, ``dropped`` (busy), ``skipped`` (not
  comparable: token ids or images for a variant with other preprocessing, an input its
  preprocessing refuses, more inputs than one call), ``failed`` (the shadow's runner failed; never
  seen by the caller).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.errors import ApiError
from gateway.metrics import gateway_metrics
from gateway.runner_client import ShadowDropped

logger = logging.getLogger(__name__)

TOPK = 5
MIN_TOPK_INPUTS = 16


@dataclass(frozen=True)
class ShadowJob:
    """What a shadow needs from its request: the served name, both variants, the request's items
    and tokenization options, its engine inputs and the primary's results (float32 vectors)."""

    model: str
    primary: Any  # gateway.routing.Target
    shadow: Any  # gateway.routing.Target
    items: Sequence[Any]
    options: tuple[str | None, bool, str | None]  # input_type, truncate, instruction
    arrays: list[np.ndarray]
    vectors: list[np.ndarray]


def agreement(primary: np.ndarray, shadow: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Per input (rows of the two ``(n, dim)`` matrices): the cosine of its two vectors, and, when
    ``n >= MIN_TOPK_INPUTS``, the overlap of its ``TOPK`` nearest neighbours among the other rows
    under each (``|A & B| / TOPK``; else None)."""
    a = primary.astype(np.float64)
    b = shadow.astype(np.float64)
    a /= np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b /= np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    cosine = np.clip((a * b).sum(axis=1), -1.0, 1.0)
    if len(a) < MIN_TOPK_INPUTS:
        return cosine, None
    return cosine, (_nearest(a) & _nearest(b)).sum(axis=1) / TOPK


def _nearest(vectors: np.ndarray) -> np.ndarray:
    """Boolean ``(n, n)``: row i marks the ``TOPK`` rows most similar to row i (itself excluded)."""
    similarity = vectors @ vectors.T
    np.fill_diagonal(similarity, -np.inf)
    top = np.argpartition(-similarity, TOPK - 1, axis=1)[:, :TOPK]
    marks = np.zeros(similarity.shape, dtype=bool)
    np.put_along_axis(marks, top, True, axis=1)
    return marks


class Shadows:
    """Runs shadow jobs after their answers have gone out; at most one per runner at a time."""

    def __init__(self, prepare: Any) -> None:
        """``prepare``: ``EmbeddingServing._prepare`` (tokenizes for a variant with other preprocessing)."""
        self.prepare = prepare
        self._busy: set[int] = set()  # id() of the runner clients with a shadow call out
        self._tasks: set[asyncio.Task] = set()

    async def start(self, job: ShadowJob) -> None:
        """Start ``job`` unless the shadow's runner is busy (then it is dropped and counted); returns at
        once (a coroutine, so that Starlette runs it on the event loop, not in a thread)."""
        runner = job.shadow.runner
        if len(job.arrays) > runner.max_inputs_per_call:  # more than one call: never compared
            self._count(job, "skipped")
            return
        if id(runner) in self._busy or not runner.idle():
            self._count(job, "dropped")
            return
        self._busy.add(id(runner))
        task = asyncio.get_running_loop().create_task(self._run(job))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, job: ShadowJob) -> None:
        runner = job.shadow.runner
        try:
            arrays = job.arrays
            if job.shadow.preprocessor.signature != job.primary.preprocessor.signature:
                if not all(isinstance(item, str) for item in job.items):
                    self._count(job, "skipped")
                    return
                try:
                    arrays = (await self.prepare(job.shadow.preprocessor, job.shadow.spec, job.items,
                                                 *job.options)).arrays
                except ApiError:  # the shadow's preprocessing refuses an input the primary took
                    self._count(job, "skipped")
                    return
            try:
                vectors = await runner.embed_shadow(job.model, job.shadow.name, arrays)
            except ShadowDropped:
                self._count(job, "dropped")
                return
            except Exception as exc:
                logger.warning("shadow %s/%s failed: %s", job.model, job.shadow.name, exc)
                self._count(job, "failed")
                return
            cosine, overlap = agreement(np.stack(job.vectors), np.stack(vectors))
            labels = (job.model, job.primary.name, job.shadow.name)
            metrics = gateway_metrics()
            for value in cosine:
                metrics.shadow_cosine.labels(*labels).observe(value)
            for value in overlap if overlap is not None else ():
                metrics.shadow_topk_overlap.labels(*labels).observe(value)
            self._count(job, "compared")
        finally:
            self._busy.discard(id(runner))

    @staticmethod
    def _count(job: ShadowJob, outcome: str) -> None:
        gateway_metrics().shadow_requests.labels(job.model, job.primary.name, job.shadow.name, outcome).inc()

    async def close(self) -> None:
        """Wait for the shadow calls still out (at shutdown)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
