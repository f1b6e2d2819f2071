"""Hostile clients, faults and shutdown on a real ``bentoml serve`` (the ``cpu`` profile), run as in
the image (``BENTOML_CONTAINERIZED`` set), with a 2 s read timeout, a 3 s request timeout and a
cap of 32 connections so the tests stay short, and its metrics on a port of their own (as in
deploy/k8s; the session's server keeps them on /metrics, the default). One server for the module; the last test stops it
with SIGTERM under load.

What each test shows is in its name; the numbers they print (time for a killed runner to serve
again, requests lost on SIGTERM) are in docs/runbook.md.
"""

from __future__ import annotations

import collections
import json
import signal
import socket
import time
import uuid

import httpx
import psutil
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from deploy.processes import free_port
from gateway.auth import ApiKeys
from gateway.edge import Edge
from hosting import routes
from tests.support.load import Load
from tests.support.servers import API_KEY, process_tree, serve_process, wait_ready

pytestmark = pytest.mark.server

MODEL = "all-MiniLM-L6-v2"
READ_TIMEOUT_S, REQUEST_TIMEOUT_S, MAX_CONNECTIONS = 2, 3, 32
AUTH = {"Authorization": f"Bearer {API_KEY}"}
METRICS_PORT = free_port()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    folder = tmp_path_factory.mktemp("faults")
    env = {
        "EMBED_PROFILE": "cpu",
        "EMBED_API_KEYS": API_KEY,
        "EMBED_REQUIRE_API_KEYS": "1",
        "EMBED_READ_TIMEOUT_S": str(READ_TIMEOUT_S),
        "EMBED_REQUEST_TIMEOUT_S": str(REQUEST_TIMEOUT_S),
        "EMBED_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
        "BENTOML_CONTAINERIZED": "true",  # as in the image: BentoML alone would not respawn a dead worker
        "EMBED_METRICS_PORT": str(METRICS_PORT),
    }
    log = folder / "serve.log"
    with serve_process(env, log) as (process, url):
        wait_ready(process, url, log)
        yield process, url, log


def openai_error(response: httpx.Response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    if code:
        assert body["error"]["code"] == code, body
    return body["error"]


def metric_lines(url: str, prefix: str) -> list[str]:
    """The server's metric lines starting with ``prefix``, from its metrics port."""
    text = httpx.get(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=10).text
    return [line for line in text.splitlines() if line.startswith(prefix)]


def counter(url: str, line_prefix: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in metric_lines(url, line_prefix))


def raw_exchange(url: str, data: bytes, wait_s: float = 10) -> tuple[bytes, float]:
    """Send ``data`` on a new connection, then read until the server closes it: (what it sent,
    seconds from connecting to the close)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        started = time.monotonic()
        sock.settimeout(wait_s)
        sock.sendall(data)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        return received, time.monotonic() - started


def test_route_templates_cover_every_v1_route():
    from gateway.app import create_app
    from models.registry import served

    app = create_app(serving=type("Serving", (), {"served": served()})(), keys=ApiKeys(()))
    paths = {"/v1" + route.path.replace("{model:path}", "{model}") for route in app.routes}
    assert paths == routes.V1_ROUTES | {routes.V1_MODEL}


def test_edge_serves_metrics_behind_the_key_when_asked(monkeypatch):
    monkeypatch.setenv("EMBED_METRICS_REQUIRE_KEY", "1")
    from models.registry import served

    served.cache_clear()
    try:
        inner = Starlette(routes=[Route("/metrics", lambda r: PlainTextResponse("m")),
                                  Route("/livez", lambda r: PlainTextResponse("ok"))])
        client = TestClient(Edge(inner, ApiKeys((API_KEY.encode(),))))
        openai_error(client.get("/metrics"), 401, "invalid_api_key")
        assert client.get("/metrics", headers=AUTH).text == "m"
        assert client.get("/livez").text == "ok"
        openai_error(client.get("/docs.json"), 404, "not_found")
    finally:
        served.cache_clear()


def test_edge_gives_any_non_json_error_below_it_the_openai_shape():
    async def plain(scope, receive, send):
        status = {"/v1/x\n": 404, "/readyz": 503}[scope["path"]]
        await PlainTextResponse("Not Found", status_code=status)(scope, receive, send)

    client = TestClient(Edge(plain, ApiKeys(())))
    openai_error(client.get("/v1/x%0A"), 404, "not_found")
    assert openai_error(client.get("/readyz"), 503, "service_unavailable")["type"] == "server_error"


def test_the_server_refuses_to_start_without_keys_when_required(tmp_path):
    env = {"EMBED_PROFILE": "cpu", "EMBED_REQUIRE_API_KEYS": "1", "EMBED_API_KEYS": ""}
    with serve_process(env, tmp_path / "serve.log") as (process, _):
        assert process.wait(timeout=120) != 0
    assert "EMBED_REQUIRE_API_KEYS is set but no API key is configured" in (tmp_path / "serve.log").read_text()


def test_random_paths_add_no_metric_series(served):
    _, url, _ = served
    names = [uuid.uuid4().hex for _ in range(20)]
    for name in names:
        openai_error(httpx.get(f"{url}/{name}"), 404, "not_found")
        openai_error(httpx.get(f"{url}/v1/models/{name}", headers=AUTH), 404, "model_not_found")
        openai_error(httpx.get(f"{url}/v1/{name}"), 404, "not_found")
    text = "\n".join(metric_lines(url, ""))
    assert not [name for name in names if name in text]  # no raw path became a label value
    endpoints = {line.split('endpoint="')[1].split('"')[0] for line in text.splitlines() if 'endpoint="' in line}
    runner_routes = {"/embed", "/embed_adaptive"}
    expected = {*routes.SYSTEM_ROUTES, *routes.V1_ROUTES, routes.V1_MODEL, routes.UNMATCHED, *runner_routes}
    assert endpoints <= expected, endpoints - expected


def test_bentoml_index_and_schema_pages_are_off(served):
    _, url, _ = served
    for path in ("/", "/docs.json", "/schema.json", "/static_content/index.css"):
        openai_error(httpx.get(f"{url}{path}"), 404, "not_found")
    assert httpx.get(f"{url}/livez").status_code == 200


def test_metrics_on_their_own_port_leave_the_api_port(served):
    _, url, _ = served
    openai_error(httpx.get(f"{url}/metrics"), 404, "not_found")
    lines = metric_lines(url, "embedding_")
    assert any(line.startswith("embedding_runner_ready{") for line in lines)  # the gateway's
    assert any(line.startswith("embedding_model_info{") for line in lines)  # and the runner's


@pytest.mark.parametrize("what, data", [
    ("nothing", b""),
    ("trickled headers", b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\n"),
    ("trickled body", b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + API_KEY.encode()
     + b"\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"model\": "),
])
def test_a_slow_client_gets_408_and_is_closed(served, what, data):
    _, url, _ = served
    received, seconds = raw_exchange(url, data)
    assert received.startswith(b"HTTP/1.1 408 "), received[:200]
    body = json.loads(received.split(b"\r\n\r\n", 1)[1])
    assert body["error"]["code"] == "request_timeout"
    assert READ_TIMEOUT_S - 0.1 <= seconds <= READ_TIMEOUT_S + 3, seconds


def test_a_kept_alive_connection_gets_a_new_deadline_per_request(served):
    """Three requests on one connection over more than the read timeout: each arrives in time."""
    _, url, _ = served
    with httpx.Client(base_url=url, headers=AUTH) as client:
        for _ in range(3):
            assert client.get("/v1/models").status_code == 200
            time.sleep(READ_TIMEOUT_S * 0.6)


def test_malformed_http_gets_an_openai_400(served):
    received, _ = raw_exchange(served[1], b"NOT HTTP AT ALL\r\n\r\n")
    assert received.startswith(b"HTTP/1.1 400 ") and b'"invalid_request_error"' in received


def test_connections_past_the_cap_get_503_and_are_closed(served):
    _, url, _ = served
    host, port = url.removeprefix("http://").split(":")
    held = [socket.create_connection((host, int(port))) for _ in range(MAX_CONNECTIONS)]
    try:
        time.sleep(0.3)
        received, seconds = raw_exchange(url, b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
    finally:
        for sock in held:
            sock.close()
    assert received.startswith(b"HTTP/1.1 503 ") and b"retry-after: " in received.lower(), received[:300]
    assert b'"server_busy"' in received and seconds < 1
    time.sleep(0.3)
    assert httpx.get(f"{url}/livez").status_code == 200  # the cap counts open connections only


def test_a_client_gone_while_uploading_is_counted_apart_without_a_traceback(served):
    _, url, log = served
    before = counter(url, 'embedding_requests_total{model="unknown",status="499",variant="none"}')
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + API_KEY.encode()
                     + b"\r\nContent-Type: application/json\r\nContent-Length: 5000\r\n\r\n{\"model\": \"x\", ")
        time.sleep(0.3)
    deadline = time.monotonic() + 5
    while counter(url, 'embedding_requests_total{model="unknown",status="499",variant="none"}') < before + 1:
        assert time.monotonic() < deadline, metric_lines(url, "embedding_requests_total")
        time.sleep(0.2)
    assert counter(url, 'embedding_requests_total{model="unknown",status="500",variant="none"}') == 0
    assert "Traceback" not in log.read_text()


def test_a_request_past_the_request_timeout_gets_an_openai_504(served):
    _, url, _ = served
    texts = [f"text {i} " + "word " * 300 for i in range(1100)]  # each cut at 256 tokens: many seconds of work
    started = time.monotonic()
    response = httpx.post(f"{url}/v1/embeddings", json={"model": MODEL, "input": texts}, headers=AUTH, timeout=60)
    elapsed = time.monotonic() - started
    openai_error(response, 504, "timeout")
    assert response.headers["retry-after"] == "1"
    assert REQUEST_TIMEOUT_S - 0.1 <= elapsed <= REQUEST_TIMEOUT_S + 3, elapsed
    assert counter(url, f'embedding_requests_total{{model="{MODEL}",status="504",variant="default"}}') >= 1


def test_the_openapi_document_lists_the_504(served):
    document = httpx.get(f"{served[1]}/v1/openapi.json").json()
    assert "504" in document["paths"]["/v1/embeddings"]["post"]["responses"]


def worker(process, service: str) -> psutil.Process:
    """The BentoML worker process of ``service`` (``--service-name``) in ``process``'s tree."""
    (found,) = [p for p in process_tree(process) if service in p.cmdline() and "--service-name" in p.cmdline()]
    return found


def test_killed_runner_worker_fails_only_in_flight_requests_and_comes_back(served):
    """kill -9 of the runner worker under load, as in a container: every request gets 200 or 503
    with Retry-After (none hangs, none is reset), and the runner serves again on its own."""
    process, url, log = served
    runner = worker(process, "ort_runner")
    with Load(url, MODEL, clients=4, timeout=30) as load:
        time.sleep(2)
        killed_at = time.monotonic()
        runner.send_signal(signal.SIGKILL)
        deadline = killed_at + 90
        while not any(o.status == 200 and o.sent > killed_at + 0.5 for o in load.outcomes):
            assert time.monotonic() < deadline, collections.Counter(o.status for o in load.outcomes)
            time.sleep(0.2)
        time.sleep(1)
    outcomes = load.stop()
    after = [o for o in outcomes if o.sent >= killed_at - 1]
    statuses = collections.Counter(o.status for o in after)
    assert set(statuses) <= {200, 503}, statuses
    assert statuses[503] >= 1, statuses  # the kill did hit requests
    assert all(o.retry_after for o in after if o.status == 503)
    assert max(o.done - o.sent for o in after) < 10  # nothing waited for the respawn
    back = min(o.done for o in after if o.status == 200 and o.sent > killed_at + 0.5) - killed_at
    print(f"\nkilled runner serves again {back:.1f} s after kill -9; statuses after the kill: {dict(statuses)}")
    assert process.poll() is None and worker(process, "ort_runner").pid != runner.pid
    assert httpx.get(f"{url}/readyz", timeout=5).status_code == 200


def test_zz_sigterm_under_load_loses_no_request(served):
    """Runs last: SIGTERM to ``bentoml serve`` while 4 clients send requests. /readyz turns 503 at
    once; every request sent before SIGTERM gets 200 (or a retryable 503), none is reset; then
    every process exits by itself."""
    process, url, _ = served
    tree = process_tree(process)
    with Load(url, MODEL, clients=4, timeout=60) as load:
        time.sleep(2)
        signalled_at = time.monotonic()
        process.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        assert httpx.get(f"{url}/readyz", timeout=5).status_code == 503
        time.sleep(1)
    outcomes = load.stop()
    before = [o for o in outcomes if o.sent < signalled_at]
    statuses = collections.Counter(o.status if o.status else o.error for o in before)
    lost = [o for o in before if o.status not in (200, 503)]
    print(f"\nSIGTERM under load: {len(before)} requests sent before it: {dict(statuses)}")
    assert not lost, lost
    assert all(o.retry_after for o in before if o.status == 503)
    _, alive = psutil.wait_procs(tree, timeout=60)
    assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE], alive


def test_the_read_deadline_holds_on_uvicorns_h11_protocol_too(monkeypatch):
    """Where httptools is missing uvicorn uses h11: the same mixin on it (a real uvicorn server in
    a thread) closes an idle connection with 408 and still serves a complete request."""
    import threading

    import uvicorn
    from uvicorn.protocols.http.h11_impl import H11Protocol

    from deploy.processes import free_port
    from hosting.protocol import ReadDeadline
    from models.registry import served as served_registry
    monkeypatch.setenv("EMBED_READ_TIMEOUT_S", "1")
    served_registry.cache_clear()

    async def app(scope, receive, send):
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
            await send({"type": "http.response.body", "body": b"ok"})

    port = free_port()
    protocol = type("GuardedH11", (ReadDeadline, H11Protocol), {})
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, http=protocol, lifespan="off",
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        url = f"http://127.0.0.1:{port}"
        assert httpx.get(url).text == "ok"
        received, seconds = raw_exchange(url, b"GET / HTTP/1.1\r\nHost: x\r\n")  # headers never end
        assert received.startswith(b"HTTP/1.1 408 ") and 0.9 <= seconds <= 4, (received[:100], seconds)
    finally:
        server.should_exit = True
        thread.join(10)
        served_registry.cache_clear()
