"""Calls from the gateway to one runner service's ``embed`` (or ``embed_adaptive``) API.

``handle`` is what ``bentoml.depends`` put on the gateway: a client of the runner process (local
socket or URL). Embedding is idempotent, so a call that failed on the connection itself (the
runner closed a kept-alive connection just as it was reused, or restarted) is retried once;
then the model's requests get 503 with ``Retry-After``, never a 500. Runner-side failures on
valid input are engine faults (500, logged).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Sequence

import aiohttp
import numpy as np
from bentoml.exceptions import BentoMLException, ServiceUnavailable

from gateway.errors import EngineError, EngineUnavailable

logger = logging.getLogger(__name__)

CONNECTION_ERRORS = (aiohttp.ClientConnectionError, ConnectionError)


class RunnerClient:
    def __init__(self, engine: str, handle: Any, endpoint: str = "embed", retry_after_s: int = 1) -> None:
        """``endpoint``: ``embed`` (continuous batching) or ``embed_adaptive`` (BentoML's)."""
        self.engine = engine
        self.handle = handle
        self.endpoint = endpoint
        self.retry_after_s = retry_after_s

    async def embed(self, model: str, inputs: Sequence[np.ndarray]) -> list[str]:
        """One base64 float32 result per input, in order (see ``runners/engine.py``)."""
        now = time.time()
        jobs = [{"model": model, "ids": ids.tolist(), "sent_at": now} for ids in inputs]
        call = getattr(self.handle.to_async, self.endpoint)
        for attempt in (1, 2):
            try:
                answer = await call(jobs)
                return answer if isinstance(answer, list) else answer.results  # embed_adaptive: bare list
            except CONNECTION_ERRORS as exc:
                if attempt == 2:
                    raise EngineUnavailable(
                        f"The {self.engine} runner serving {model} is unreachable ({type(exc).__name__}).",
                        self.retry_after_s,
                    ) from exc
                logger.warning("%s runner connection failed (%r); retrying once", self.engine, exc)
            except (asyncio.TimeoutError, ServiceUnavailable) as exc:
                raise EngineUnavailable(
                    f"The {self.engine} runner serving {model} is not ready or overloaded.",
                    self.retry_after_s,
                ) from exc
            except BentoMLException as exc:
                logger.error("%s runner failed on %s: %s", self.engine, model, exc)
                raise EngineError(f"The {self.engine} engine failed on this request.") from exc
        raise AssertionError("unreachable")
