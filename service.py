"""The entry service: the OpenAI-compatible gateway, composing one runner service per engine.

``bentoml serve`` (``make serve``) starts this Gateway and, through ``bentoml.depends``, each
runner the active profile needs (``EMBED_PROFILE``, default ``cpu``), each in its own process.
The gateway serves ``/v1`` (see ``gateway/app.py``); BentoML adds ``/livez``, ``/readyz`` (ready
only when every runner has loaded its models) and ``/metrics``.
"""

from __future__ import annotations

import logging

import bentoml

from models import tracing_config
from models.registry import Engine, served
from models.store import declare_store_models
from runners.extras import require_engines

logger = logging.getLogger(__name__)

SERVED = served()
require_engines(SERVED)  # an engine's optional package missing: fail here, naming the extra
RUNNER_SERVICES = {}
if Engine.ORT in SERVED.runners:
    from runners.ort.service import OrtRunner

    RUNNER_SERVICES[Engine.ORT] = OrtRunner
if Engine.VLLM in SERVED.runners:
    from runners.vllm.service import VllmRunner  # imports no vllm: engines start in its start hook

    RUNNER_SERVICES[Engine.VLLM] = VllmRunner


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
    workers=1,
    traffic={"timeout": max(r.timeout_s for r in SERVED.runners.values()) + 5},
    logging={"access": {"enabled": False}},
    tracing=tracing_config("/v1/embeddings"),
)
@declare_store_models(SERVED.models)
class Gateway:
    if Engine.ORT in SERVED.runners:
        ort = bentoml.depends(RUNNER_SERVICES[Engine.ORT])
    if Engine.VLLM in SERVED.runners:
        vllm = bentoml.depends(RUNNER_SERVICES[Engine.VLLM])

    def __init__(self) -> None:
        from gateway.admission import Admission
        from gateway.app import create_app
        from gateway.auth import ApiKeys, load_keys
        from gateway.preprocess import TextPreprocessor
        from gateway.runner_client import RunnerClient
        from gateway.serving import EmbeddingServing
        from models import configure_logging
        from models.store import open_entry

        configure_logging()
        limits = SERVED.gateway
        preprocessors = {
            spec.name: TextPreprocessor(spec, open_entry(spec, verify=False)) for spec in SERVED.models
        }
        runners = {
            engine: RunnerClient(
                engine.value,
                getattr(self, engine.value),
                "embed" if settings.batching.mode == "continuous" else "embed_adaptive",
                limits.retry_after_s,
                settings.max_calls_in_flight,
                settings.batching.max_batch_size,
            )
            for engine, settings in SERVED.runners.items()
        }
        serving = EmbeddingServing(
            SERVED, preprocessors, runners, Admission(limits.max_inflight_inputs, limits.retry_after_s)
        )
        keys = load_keys()
        V1.app = create_app(serving, ApiKeys(keys))
        logger.info(
            "gateway: profile %s, models %s, API keys %s",
            SERVED.profile,
            ", ".join(f"{m.name} ({m.engine.value})" for m in SERVED.models),
            "required" if keys else "not required",
        )
