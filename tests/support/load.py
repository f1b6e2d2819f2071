"""Steady load on a real server while a test faults, kills or stops it: every request's outcome kept."""

from __future__ import annotations

import dataclasses
import threading
import time

import httpx

from tests.support.servers import API_KEY


@dataclasses.dataclass(frozen=True)
class Outcome:
    """One request of a ``Load``: when it was sent and answered (monotonic s), its status (None
    when no HTTP answer came: ``error`` names the exception), and its Retry-After header."""

    model: str
    sent: float
    done: float
    status: int | None
    retry_after: str | None = None
    error: str | None = None


class Load:
    """``clients`` threads, each with its own keep-alive connection, sending one small
    ``/v1/embeddings`` request for ``model`` after another until ``stop()``; ``outcomes`` holds
    every request's ``Outcome``. Used to fault, kill and stop servers under load."""

    def __init__(self, url: str, model: str, clients: int = 4, timeout: float = 60) -> None:
        self.url, self.model, self.timeout = url, model, timeout
        self.outcomes: list[Outcome] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(clients)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> list[Outcome]:
        self._stop.set()
        for thread in self._threads:
            thread.join(self.timeout + 5)
        return self.outcomes

    def _client(self, index: int) -> None:
        headers = {"Authorization": f"Bearer {API_KEY}"}
        with httpx.Client(base_url=self.url, headers=headers, timeout=self.timeout) as client:
            n = 0
            while not self._stop.is_set():
                n += 1
                payload = {"model": self.model, "input": [f"client {index} request {n}", "a second text"]}
                sent = time.monotonic()
                try:
                    response = client.post("/v1/embeddings", json=payload)
                except httpx.HTTPError as exc:
                    self.outcomes.append(Outcome(self.model, sent, time.monotonic(), None, error=type(exc).__name__))
                    time.sleep(0.05)
                    continue
                self.outcomes.append(Outcome(self.model, sent, time.monotonic(), response.status_code,
                                             response.headers.get("retry-after")))
                if response.status_code != 200:
                    time.sleep(0.05)
