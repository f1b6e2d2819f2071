"""Numbered progress lines for the export commands: ``[2/5] loading model ... (3.1 s)`` on stderr."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager


class Steps:
    """Numbered progress lines on stderr, each finished with its duration."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0
        self._shown = 0

    @contextmanager
    def __call__(self, label: str) -> Iterator[None]:
        self.done += 1
        self._shown = 0
        print(f"[{self.done}/{self.total}] {label} ...", end="", file=sys.stderr, flush=True)
        start = time.perf_counter()
        outcome = " failed"
        try:
            yield
            outcome = ""
        finally:
            print(f"{outcome} ({time.perf_counter() - start:.1f} s)", file=sys.stderr, flush=True)

    def progress(self, done: int, total: int) -> None:
        """Within a step: prints 25%, 50%, 75% and 100% as ``done`` of ``total`` passes them."""
        quarter = 4 * done // max(total, 1)
        if quarter > self._shown:
            self._shown = quarter
            print(f" {25 * quarter}%", end="", file=sys.stderr, flush=True)
