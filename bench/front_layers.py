"""What each layer of the gateway's request path costs, in microseconds of CPU per request, measured
alone in one process (the server-level harness, ``bench/scripts/overhead.py``, says what they add
up to; this says which of them to blame).

    python -m bench.front_layers [--requests 4000] [--rounds 5]

Each case drives an ASGI app (or calls one function) with the same one-text ``/v1/embeddings``
request ``--requests`` times, in ``--rounds`` rounds whose order is shuffled, and reports the median
over rounds of CPU seconds (this process: ``time.process_time``, so another process on the machine
does not count) per request. The cases, each on top of a trivial ASGI app unless it says otherwise:

- BentoML's own middleware of the gateway service, one at a time and all together, as BentoML
  1.4.40 builds them (Starlette's error middleware, the request metrics as ``hosting/routes.py``
  labels them, OpenTelemetry with the path excluded from tracing, the request timeout);
- BentoML's context middleware and the ``/v1`` mount with its Starlette app (what ``gateway/edge.py``
  now skips for the hot routes);
- Prometheus in multiprocess mode: the gateway's own metrics of one request, with ``labels()`` each
  time and with the labelled children kept;
- the gateway's own steps: parsing and validating the body, tokenizing one text, admission, packing
  the call and unpacking the answer (one job), shaping the response, and the whole ``/v1/embeddings``
  handler with a runner that answers at once.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable

import numpy as np

BODY = b'{"model": "null-minilm", "input": "How do I reset my password after the account was locked?"}'
PROFILE, MODEL = "bench-null", "null-minilm"


def scope(path: str = "/v1/embeddings") -> dict:
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
            "path": path, "raw_path": path.encode(), "root_path": "", "query_string": b"",
            "headers": [(b"host", b"127.0.0.1:3000"), (b"content-type", b"application/json"),
                        (b"content-length", str(len(BODY)).encode()), (b"authorization", b"Bearer k")],
            "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 3000), "state": {}}


async def receive() -> dict:
    return {"type": "http.request", "body": BODY, "more_body": False}


async def send(message: dict) -> None:
    pass


async def trivial(scope: dict, receive, send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b"{}"})


def asgi_case(app) -> Callable[[], Awaitable[None]]:
    async def once() -> None:
        await app(scope(), receive, send)
    return once


def bentoml_stack(middlewares: list) -> object:
    """A Starlette app with BentoML's gateway middlewares (``middlewares``: (class, options)) around
    the trivial app, as ``ServiceAppFactory`` builds them (Starlette adds its error middleware)."""
    from starlette.applications import Starlette
    from starlette.middleware import Middleware

    app = Starlette(middleware=[Middleware(cls, **options) for cls, options in middlewares])
    app.router = trivial  # the innermost app, instead of a router
    app.middleware_stack = None
    return app


def cases() -> dict[str, Callable[[], Awaitable[None]]]:
    import hosting

    hosting.install()  # the request metrics labelled by route, as the services run them
    from bentoml._internal.server.http import instruments
    from bentoml._internal.server.http.traffic import TimeoutMiddleware
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
    from opentelemetry.util.http import ExcludeList

    from core.wire import Job, pack_call, pack_results, unpack_call, unpack_results
    from gateway.admission import Admission
    from gateway.app import create_app
    from gateway.auth import ApiKeys
    from gateway.metrics import gateway_metrics
    from gateway.parsing import BodyLimits, parse_request
    from gateway.preprocess import TextPreprocessor
    from gateway.protocol import EmbeddingRequest
    from gateway.routing import RoutingTable, Target
    from gateway.serving import EmbeddingServing, Prepared
    from models.registry import served
    from models.store import open_entry

    class SharedMetrics(instruments.RunnerTrafficMetricsMiddleware):
        """BentoML's request metrics; the stacks here share one set (a registry takes each name once)."""

        made: dict = {}

        def _setup(self) -> None:
            if not self.made:
                super()._setup()
                self.made.update({k: v for k, v in vars(self).items() if k.startswith("metrics")})
            vars(self).update(self.made)
            self._is_setup = True

    metrics = (SharedMetrics, {"namespace": "bentoml_service", "skip_paths": ["/metrics", "/livez", "/readyz"]})
    otel = (OpenTelemetryMiddleware, {"excluded_urls": ExcludeList(["/v1/embeddings", "/v1/rerank"])})
    timeout = (TimeoutMiddleware, {"timeout": 65.0})

    serving_profile = served(PROFILE)
    spec = serving_profile.find(MODEL)
    preprocessor = TextPreprocessor(spec, open_entry(spec, verify=False))

    class AtOnce:
        """A runner client that answers at once (what the handler costs without the hop)."""

        max_inputs_per_call = 128

        async def embed(self, model, inputs, variant=None):
            return [np.zeros(spec.dimensions, np.float32) for _ in inputs]

    targets = {spec.name: {"default": Target("default", spec, "t", "c", preprocessor, AtOnce())}}
    serving = EmbeddingServing(serving_profile, RoutingTable(serving_profile, targets), Admission(4096, 1))
    v1 = create_app(serving, ApiKeys(()))
    direct = v1.state.direct["/embeddings"]
    limits = BodyLimits.of(serving_profile.gateway)
    gm = gateway_metrics()
    labelled = (gm.requests.labels(MODEL, "default", "200"), gm.inputs.labels(MODEL, "default"),
                gm.input_tokens.labels(MODEL, "default"), gm.request_seconds.labels(MODEL, "default"))
    admission = Admission(4096, 1)
    request = parse_request(BODY, EmbeddingRequest, limits)
    ids = preprocessor.texts([request.input], None, True)
    prepared = Prepared(ids, [None], len(ids[0]))
    vector = np.zeros(spec.dimensions, np.float32)

    async def our_metrics() -> None:  # what gateway/app.py and serving.py record per request, as they do
        gm.inflight_inputs.inc(1)
        gm.inflight_inputs.dec(1)
        gm.inputs.labels(MODEL, "default").inc(1)
        gm.input_tokens.labels(MODEL, "default").inc(12)
        gm.requests.labels(MODEL, "default", "200").inc()
        gm.request_seconds.labels(MODEL, "default").observe(0.01)

    async def our_metrics_kept() -> None:
        gm.inflight_inputs.inc(1)
        gm.inflight_inputs.dec(1)
        labelled[1].inc(1)
        labelled[2].inc(12)
        labelled[0].inc()
        labelled[3].observe(0.01)

    async def parse() -> None:
        parse_request(BODY, EmbeddingRequest, limits)

    async def tokenize() -> None:
        preprocessor.texts([request.input], None, True)

    async def admit() -> None:
        with admission.admit(1):
            pass

    async def hop_codec() -> None:  # the gateway's side of one job's call and answer
        unpack_results(answer)

    call = pack_call([Job(MODEL, "default", ids[0], 0.0)])
    answer = pack_results([vector])

    async def pack() -> None:
        pack_call([Job(MODEL, "default", ids[0], 0.0)])

    async def runner_codec() -> None:  # the runner's side of one job's call and answer
        unpack_call(call)
        pack_results([vector])

    async def respond() -> None:
        EmbeddingServing._response(spec, request, [vector], prepared)

    async def timeout_block() -> None:
        async with asyncio.timeout(65):
            pass

    async def handler() -> None:
        from starlette.requests import Request

        response = await direct(Request(scope(), receive, send))
        await response(scope(), receive, send)

    from _bentoml_impl.server.app import ContextMiddleware
    from starlette.routing import Mount, Router

    class Context:
        """BentoML's ``ServiceContext`` (``in_request`` is what its middleware costs)."""

    from bentoml._internal.context import ServiceContext

    context = ServiceContext()
    mounted = Router(routes=[Mount("/v1", v1)])
    return {
        "trivial ASGI app (the driver's own cost)": asgi_case(trivial),
        "+ Starlette's error middleware": asgi_case(bentoml_stack([])),
        "+ BentoML request metrics (hosting/routes.py labels)": asgi_case(bentoml_stack([metrics])),
        "+ OpenTelemetry, path excluded": asgi_case(bentoml_stack([otel])),
        "+ BentoML request timeout (a task per request)": asgi_case(bentoml_stack([timeout])),
        "+ all three, as the gateway service has them": asgi_case(bentoml_stack([metrics, otel, timeout])),
        "BentoML context middleware around the trivial app": asgi_case(ContextMiddleware(trivial, context)),
        "the /v1 handler through a Mount and its Starlette app (before the fast lane)": asgi_case(mounted),
        "the /v1 handler called directly (gateway/edge.py's fast lane), runner at once": handler,
        "gateway metrics of one request, labels() each time": our_metrics,
        "gateway metrics of one request, labelled children kept": our_metrics_kept,
        "parse and validate the body (simdjson + pydantic)": parse,
        "tokenize one text (TextPreprocessor.texts)": tokenize,
        "admission": admit,
        "asyncio.timeout block (gateway/app.py's 504)": timeout_block,
        "pack one job into a call (gateway)": pack,
        "unpack a one-vector answer (gateway)": hop_codec,
        "unpack a one-job call, pack its answer (runner)": runner_codec,
        "shape the response, floats (orjson)": respond,
    }


async def measure(case: Callable[[], Awaitable[None]], requests: int) -> float:
    """CPU microseconds per call of ``case``."""
    for _ in range(min(200, requests)):
        await case()
    started = time.process_time()
    for _ in range(requests):
        await case()
    return (time.process_time() - started) / requests * 1e6


async def main_async(args) -> dict[str, list[float]]:
    table = cases()
    results: dict[str, list[float]] = {name: [] for name in table}
    for r in range(args.rounds):
        order = list(table)
        random.Random(r).shuffle(order)
        for name in order:
            results[name].append(await measure(table[name], args.requests))
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="front-layers-"))
    os.environ["EMBED_PROFILE"] = PROFILE
    results = asyncio.run(main_async(args))
    print("| layer or step | CPU us per request (median of rounds) | range |\n|---|---|---|")
    for name, values in results.items():
        print(f"| {name} | {statistics.median(values):.1f} | {min(values):.1f}-{max(values):.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
