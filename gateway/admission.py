"""Bounded admission: at most ``max_inflight_inputs`` inputs are being served at once.

A request that would exceed the bound is refused at once with 429 and ``Retry-After`` instead of
queueing without end. The counter lives in one gateway worker's event loop (no lock needed); with
several gateway workers each has its own bound.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from core.errors import Overloaded


class Admission:
    def __init__(self, max_inflight_inputs: int, retry_after_s: int) -> None:
        self.max_inflight_inputs = max_inflight_inputs
        self.retry_after_s = retry_after_s
        self.inflight = 0

    @contextmanager
    def admit(self, inputs: int) -> Iterator[None]:
        if self.inflight + inputs > self.max_inflight_inputs:
            raise Overloaded(
                f"The server is busy ({self.inflight} inputs in flight, limit "
                f"{self.max_inflight_inputs}); retry after {self.retry_after_s} s.",
                self.retry_after_s,
            )
        self.inflight += inputs
        try:
            yield
        finally:
            self.inflight -= inputs
