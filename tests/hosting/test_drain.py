"""Shutdown without resets, on a real ``bentoml serve`` (the ``cpu`` profile: the gateway and its ORT
runner), measured from outside: clients that keep sending through the whole shutdown, each request
on a new connection (half the clients) or on a kept-alive one (the other half), count what they
get. From SIGTERM every request must be answered (200, or 503 with ``Retry-After``) or its
connection refused; none may be accepted and then reset or closed unanswered
(``hosting/drain.py``). The gateway's calls to its runner in flight finish: no 503
``engine_unavailable`` and no 500 either.

``RUNS`` shutdowns, each on a fresh server; the counts are printed (docs/runbook.md, "Shutdown").
"""

from __future__ import annotations

import collections
import http.client
import json
import signal
import socket
import threading
import time

import pytest

from tests.support.servers import API_KEY, serve_process, wait_ready

pytestmark = pytest.mark.server

RUNS = 10
MODEL = "all-MiniLM-L6-v2"
CLIENTS = 6
BODY = b'{"model": "all-MiniLM-L6-v2", "input": ["a text to embed while the server stops", "and another"]}'
HEADERS = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}


class ShutdownProbe:
    """``clients`` threads sending ``method path`` until stopped (half of them on a new connection
    per request, half on a kept-alive one), classifying every attempt: ``200``, ``503 <code>`` (with
    Retry-After), another status (``status N``), ``refused`` (the connection was refused or never
    established), or ``reset`` (established, then reset or closed before a whole answer)."""

    def __init__(self, url: str, path: str = "/v1/embeddings", body: bytes | None = BODY,
                 clients: int = CLIENTS) -> None:
        self.host, port = url.removeprefix("http://").split(":")
        self.port, self.path, self.body = int(port), path, body
        self.outcomes: list[tuple[float, float, str]] = []  # (monotonic time sent, answered, outcome)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(i % 2 == 0,), daemon=True)
                         for i in range(clients)]

    def __enter__(self) -> ShutdownProbe:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def wait_for(self, answers: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while sum(o == "200" for _, _, o in self.outcomes) < answers:
            assert time.monotonic() < deadline, collections.Counter(o for _, _, o in self.outcomes)
            time.sleep(0.1)

    def since(self, moment: float) -> list[tuple[float, float, str]]:
        return [(sent - moment, done - moment, what) for sent, done, what in self.outcomes if sent >= moment]

    def _client(self, keep_alive: bool) -> None:
        connection = None
        while not self._stop.is_set():
            sent = time.monotonic()
            if connection is None:
                connection = http.client.HTTPConnection(self.host, self.port, timeout=30)
                try:
                    connection.connect()
                except OSError:
                    self.outcomes.append((sent, time.monotonic(), "refused"))
                    connection = None
                    time.sleep(0.01)
                    continue
            try:
                connection.request("POST" if self.body else "GET", self.path, self.body, HEADERS)
                response = connection.getresponse()
                body = response.read()
            except (OSError, http.client.HTTPException):  # reset, or closed without an answer
                self.outcomes.append((sent, time.monotonic(), "reset"))
                connection.close()
                connection = None
                continue
            self.outcomes.append((sent, time.monotonic(), outcome(response, body)))
            if not keep_alive or response.will_close:
                connection.close()
                connection = None
        if connection is not None:
            connection.close()


def outcome(response: http.client.HTTPResponse, body: bytes) -> str:
    if response.status == 503 and response.getheader("retry-after"):
        return f"503 {json.loads(body)['error']['code']}"
    return "200" if response.status == 200 else f"status {response.status}"


def refused_now(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(3)
        try:
            sock.connect((host, port))
        except OSError:
            return True
    return False


def summary(outcomes: list[tuple[float, float, str]], exited: float) -> str:
    """The counts and the timeline (seconds from SIGTERM) of ``ShutdownProbe.since``'s outcomes."""
    counts = collections.Counter(what for _, _, what in outcomes)
    answered = [done for _, done, what in outcomes if what == "200"]
    refused = [sent for sent, _, what in outcomes if what == "refused"]
    return (f"{dict(counts)}; last 200 answered at {max(answered, default=float('nan')):.2f} s, first refused "
            f"connection tried at {min(refused, default=float('nan')):.2f} s, server exited at {exited:.2f} s")


def stop_under_probe(process, probe: ShutdownProbe) -> tuple[float, float]:
    """SIGTERM ``process`` while ``probe`` sends; returns (the moment of SIGTERM, seconds to its exit),
    once the process has exited and connections are refused."""
    probe.wait_for(20)
    signalled = time.monotonic()
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=120)
    exited = time.monotonic() - signalled
    time.sleep(1.5)  # the clients meet the closed port
    assert refused_now(probe.host, probe.port)
    return signalled, exited


def test_a_shutdown_answers_or_refuses_every_request_and_resets_none(tmp_path):
    env = {"EMBED_PROFILE": "cpu", "EMBED_API_KEYS": API_KEY, "BENTOML_CONTAINERIZED": "true"}
    totals: collections.Counter = collections.Counter()
    for index in range(RUNS):
        log = tmp_path / f"serve-{index}.log"
        with serve_process(env, log, stop_timeout=60) as (process, url):
            wait_ready(process, url, log, timeout=180)
            with ShutdownProbe(url) as probe:
                signalled, exited = stop_under_probe(process, probe)
        after = probe.since(signalled)
        counts = collections.Counter(what for _, _, what in after)
        print(f"\nshutdown {index + 1}/{RUNS}: {summary(after, exited)}")
        totals += counts
        assert counts["200"] > 0 and counts["refused"] > 0, counts  # served through the drain, then refused
        assert set(counts) <= {"200", "503 server_busy", "refused"}, counts  # none reset, none failed
    print(f"\n{RUNS} shutdowns, from SIGTERM on: {dict(totals)}")


def test_a_runner_on_its_own_finishes_the_gateways_calls_then_refuses(tmp_path):
    """The Kubernetes layout: a runner served on its own, a gateway reaching it by URL. SIGTERM to
    the runner (after its pod's preStop, in Kubernetes): the gateway's calls out to it finish (200);
    requests whose call had not gone out yet, and later ones, get 503 engine_unavailable with
    Retry-After (this runner was the only one), never a 500 or a reset; the runner's own port
    answers or refuses, never resets."""
    runner_log, gateway_log = tmp_path / "runner.log", tmp_path / "gateway.log"
    with serve_process({"EMBED_PROFILE": "cpu", "BENTOML_CONTAINERIZED": "true"}, runner_log,
                       "runners.ort.service:OrtRunner", stop_timeout=60) as (runner, runner_url):
        wait_ready(runner, runner_url, runner_log, timeout=180)
        gateway_env = {"EMBED_PROFILE": "cpu", "EMBED_API_KEYS": API_KEY, "EMBED_RUNNER_URL_ORT": runner_url,
                       "BENTOML_CONFIG_OPTIONS": "services.gateway.runner_probe.enabled=false"}
        with serve_process(gateway_env, gateway_log) as (gateway, gateway_url):
            wait_ready(gateway, gateway_url, gateway_log, timeout=180)
            with ShutdownProbe(gateway_url) as through_gateway, ShutdownProbe(runner_url, "/livez", None, 2) as direct:
                through_gateway.wait_for(20)
                signalled, exited = stop_under_probe(runner, direct)
    in_flight = [what for sent, done, what in through_gateway.outcomes if sent < signalled < done]
    after = through_gateway.since(signalled)
    own = direct.since(signalled)
    print(f"\nrunner on its own, SIGTERM: {len(in_flight)} gateway requests in flight: "
          f"{dict(collections.Counter(in_flight))}; through the gateway after it {summary(after, exited)}; "
          f"on the runner's own port {summary(own, exited)}")
    assert "200" in in_flight and set(in_flight) <= {"200", "503 engine_unavailable"}, in_flight
    assert {what for *_, what in after} <= {"200", "503 engine_unavailable"}, collections.Counter(w for *_, w in after)
    assert {what for *_, what in own} <= {"200", "refused"}, collections.Counter(w for *_, w in own)
