"""The entry service: the OpenAI-compatible gateway, composing one runner service per engine.

``bentoml serve`` (``make serve``) starts this Gateway and, through ``bentoml.depends``, each
runner the active profile needs (``EMBED_PROFILE``, default ``cpu``), each in its own process.
The gateway serves ``/v1`` (see ``gateway/app.py``); BentoML adds ``/livez``, ``/readyz`` (ready
only when every runner has loaded its models) and ``/metrics``.

With ``EMBED_RUNNER_URL_<ENGINE>`` set, the gateway reaches that engine's runner at a URL instead
of starting it (``models/topology.py``; the Kubernetes layout in ``deploy/k8s``). ``EMBED_IMAGE``
picks the image variant that ``bentoml build`` records (``images.py``).

Workers: ``gateway_workers`` of the profile (``auto`` on GPU profiles: the host's cores less the
runners' workers; ``EMBED_GATEWAY_WORKERS`` overrides). Each worker parses, tokenizes, admits and
coalesces on its own (its own ``RunnerClient`` per runner: up to ``max_calls_in_flight`` calls each,
so a runner sees workers x that many; its own admission bound, so the server admits up to workers x
``max_inflight_inputs``). What must be the same in every worker is the routing: with more than one
worker and no ``EMBED_ROUTING_FILE``, the server gets a routing file of its own (in its folder
under the Bento home, ``hosting/home.py``, removed when ``bentoml serve`` exits), so an admin
change made through one worker reaches the others within ``gateway/routing.py``'s ``WATCH_S``.

Hardening (``hosting/``, ``gateway/edge.py``): slow and surplus connections are closed, metrics
are labelled by route, dead workers respawn in containers too, SIGTERM drains before stopping,
and nothing outside ``/v1``, health and metrics is served. With ``server.require_api_keys``
(``EMBED_REQUIRE_API_KEYS=1``) the server refuses to start without a key.

A configuration that cannot work (an invalid ``EMBED_*`` variable or registry field, required keys
missing, an engine's package missing) stops ``bentoml serve`` at this import with one line per
problem on stderr, naming the variable or the field and the fix, and exit status 2
(``core.settings.refusing_to_start``).
"""

from __future__ import annotations

import asyncio
import logging

import bentoml

import hosting
from core.settings import hand_to_workers, refusing_to_start, settings
from gateway.auth import ApiKeys, load_admin_keys, load_keys, require_keys_if_asked
from gateway.edge import Edge
from hosting import home
from images import image
from models import tracing_config
from models.registry import served
from models.schema import Engine
from models.store import declare_store_models
from models.topology import runner_routes
from runners.extras import require_engines

logger = logging.getLogger(__name__)

hosting.install()  # before BentoML builds its watchers, its apps and its uvicorn servers
with refusing_to_start("gateway"):
    SERVED = served()
    require_engines(SERVED)  # an engine's optional package missing: fail here, naming the extra
    KEYS = require_keys_if_asked(SERVED.server, load_keys())  # read here: fail at `bentoml serve`, not in a worker
    ADMIN_KEYS = load_admin_keys() or KEYS
    RUNNER_SERVICES = {}
    if Engine.ORT in SERVED.runners:
        from runners.ort.service import OrtRunner

        RUNNER_SERVICES[Engine.ORT] = OrtRunner
    if Engine.VLLM in SERVED.runners:
        from runners.vllm.service import VllmRunner  # imports no vllm: engines start in its start hook

        RUNNER_SERVICES[Engine.VLLM] = VllmRunner
    ROUTES = runner_routes(SERVED)
    WORKERS = SERVED.gateway_workers()
    IMAGE = image()


def share_routing_between_workers() -> None:
    """With several workers and no routing file configured, give this server one (see above): set
    here, in ``bentoml serve`` before it starts the workers, which inherit the environment."""
    if WORKERS > 1 and settings().routing_file is None:
        hand_to_workers("routing_file", str(home.server_dir() / "routing.json"))


share_routing_between_workers()


def depend_on_runners(cls: type) -> type:
    """One ``bentoml.depends`` attribute per runner route (``models/topology.py``): a runner
    service started by this ``bentoml serve``, or one reached at a URL."""
    for route in ROUTES:
        setattr(cls, route.key, bentoml.depends(RUNNER_SERVICES[route.engine], url=route.url))
    return cls


class DeferredApp:
    """The ``/v1`` ASGI app, built when the Gateway starts (it needs the runner handles)."""

    def __init__(self) -> None:
        self.app = None

    async def __call__(self, scope, receive, send) -> None:
        await self.app(scope, receive, send)


V1 = DeferredApp()


@bentoml.asgi_app(V1, path="/v1")
@bentoml.service(
    name="gateway",
    resources={"cpu": "1"},
    workers=WORKERS,
    # BentoML's own timeout (it answers in its shape) only backs up the /v1 app's 504 (gateway/app.py)
    traffic={"timeout": SERVED.request_timeout_s + 5},
    logging={"access": {"enabled": False}},
    tracing=tracing_config("/v1/embeddings", "/v1/rerank"),
    image=IMAGE,
    envs=[{"name": "BENTOML_DO_NOT_TRACK", "value": "true"}],  # no usage reports from the image (or its workers)
)
@declare_store_models(SERVED.units)
@depend_on_runners
class Gateway:
    def __init__(self) -> None:
        from gateway.admission import Admission
        from gateway.app import create_app
        from gateway.image_pool import ImagePool
        from gateway.preprocess import TextPreprocessor, VisionPreprocessor
        from gateway.routing import RoutingTable, Target, routing_file
        from gateway.runner_client import RunnerClient
        from gateway.serving import EmbeddingServing
        from models import configure_logging
        from models.registry import load_registry
        from models.store import open_entry

        configure_logging()
        limits = SERVED.gateway
        entries = {spec.name: open_entry(spec, verify=False) for spec in SERVED.units}
        preprocessors = {
            spec.name: (VisionPreprocessor if spec.vision else TextPreprocessor)(
                spec, entries[spec.name], limits.max_chars_per_token)
            for spec in SERVED.units
        }
        for spec in SERVED.units:
            if spec.pin is None:
                logger.warning("model %s is not pinned: it serves %s as the store has it (%s); pin it by content "
                               "with `python -m export pin`", spec.name, spec.store_tag, entries[spec.name].tag)
        runners = {}  # registry model -> the client of the runner that loaded it
        for route in ROUTES:
            settings = SERVED.runner(route.engine)
            client = RunnerClient(
                route.key,
                getattr(self, route.key),
                "embed" if settings.batching.mode == "continuous" else "embed_adaptive",
                limits.retry_after_s,
                settings.max_calls_in_flight,
                settings.batching.max_batch_size,
            )
            runners.update(dict.fromkeys(route.models, client))
        self.runner_clients = list(dict.fromkeys(runners.values()))
        targets = {route.model: {v.name: Target(v.name, v.spec, entries[v.spec.name].tag,
                                                entries[v.spec.name].content_label, preprocessors[v.spec.name],
                                                runners[v.spec.name]) for v in route.variants}
                   for route in SERVED.routes.values()}
        self.routing = RoutingTable(SERVED, targets, routing_file(), load_registry())
        # images and PDF pages are decoded in worker processes, started with the service (below)
        self.image_pool = ImagePool(
            limits.image_workers, limits.image_worker_memory_bytes, limits.image_task_timeout_s,
            limits.retry_after_s, max_waiting=4 * limits.max_images_per_request,
        ) if any(spec.vision for spec in SERVED.models) else None
        self.serving = EmbeddingServing(
            SERVED, self.routing, Admission(limits.max_inflight_inputs, limits.retry_after_s), self.image_pool,
        )
        self.background_tasks: list[asyncio.Task] = []
        V1.app = create_app(self.serving, ApiKeys(KEYS), ApiKeys(ADMIN_KEYS))
        logger.info(
            "gateway: profile %s, models %s, runners %s, API keys %s, routing changes %s",
            SERVED.profile,
            ", ".join(f"{route.model} ({', '.join(f'{v.name}: {v.spec.name}' for v in route.variants)})"
                      for route in SERVED.routes.values()),
            ", ".join(f"{r.key} at {r.url or 'local'}" for r in ROUTES),
            "required" if KEYS else "not required",
            f"shared through {self.routing.path}" if self.routing.path else "kept in this worker's memory "
            "(set EMBED_ROUTING_FILE to share them between replicas and keep them across restarts)",
        )
        logger.info(
            "gateway: %d worker(s), each with its own runner calls (%s) and admission (%d inputs in flight)",
            WORKERS, ", ".join(f"{c.engine}: {c.max_calls_in_flight} x {c.max_inputs_per_call} inputs"
                               for c in self.runner_clients), limits.max_inflight_inputs,
        )

    @bentoml.on_startup
    async def start_image_workers(self) -> None:
        """The image pool's worker processes (vision models only); a worker that cannot start
        stops the gateway's start with the reason."""
        if self.image_pool is not None:
            await self.image_pool.start()

    @bentoml.on_shutdown
    async def stop_image_workers(self) -> None:
        if self.image_pool is not None:
            await self.image_pool.close()
        await self.serving.shadows.close()

    @bentoml.on_startup
    async def watch_runners(self) -> None:
        """Keeps ``embedding_runner_ready{runner}`` current (gateway/runner_client.py) and the
        routing in step with the routing file (gateway/routing.py); drains on SIGTERM
        (hosting/drain.py); serves metrics on their own port when configured."""
        from gateway.runner_client import watch_readiness
        from hosting import drain
        from hosting.metrics import serve_metrics_port

        loop = asyncio.get_running_loop()
        self.background_tasks.append(loop.create_task(watch_readiness(self.runner_clients)))
        if self.routing.path is not None:
            self.background_tasks.append(loop.create_task(self.routing.watch()))
        drain.install(drain.gateway_done())
        serve_metrics_port()

    def __is_ready__(self) -> bool:
        from hosting import drain

        return not drain.draining()


Gateway.add_asgi_middleware(Edge, keys=ApiKeys(KEYS), v1=V1)
