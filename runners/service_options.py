"""The BentoML service settings every runner service shares (``@bentoml.service(**...)``).

Connections: the gateway reaches a runner through ``bentoml.depends``. BentoML's dependency
client replaces its HTTP session every ``runner_connection.max_requests`` requests or
``max_age`` seconds and closes the old one while other requests may still use it (BentoML 1.4.40,
``_bentoml_impl/client/proxy2.py``); those requests then fail with connection errors. Runners set
both limits out of reach (docs/architecture.md, "Under load").

Importing a runner service module applies ``hosting.install()`` too (through this module), so a
runner served on its own (Kubernetes) gets the same protocol, metric labels and supervision as
one started by the gateway.
"""

from __future__ import annotations

import hosting
from models import tracing_config
from models.schema import Engine, Served

hosting.install()

NEVER = 10**9  # requests / seconds: "never replace the connection pool"


def runner_service_options(served: Served, engine: Engine, name: str, workers: int, traced: tuple[str, ...]) -> dict:
    """Keyword arguments of ``bentoml.service`` for the runner of ``engine``: its GPU/CPU
    resources and timeout from the registry, ``workers`` processes, no access log, and no
    tracing span on the ``traced`` API paths unless ``EMBED_TRACING=1``."""
    return {
        "name": name,
        "resources": served.service_resources(engine),
        "workers": workers,
        "traffic": {"timeout": served.runner(engine).timeout_s},
        "runner_connection": {"max_requests": NEVER, "max_age": float(NEVER)},
        "logging": {"access": {"enabled": False}},
        "tracing": tracing_config(*traced),
    }
