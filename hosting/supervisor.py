"""BentoML's supervisor (circus) watchers: respawn dead workers in containers too; signal only
the worker on stop.

BentoML 1.4.40 creates every worker watcher with ``bentoml.serving.create_watcher``, which sets
``respawn=not running_inside_container()``: with ``BENTOML_CONTAINERIZED`` set (as in every image
``bentoml containerize`` builds) a worker that dies is not started again, and circus then stops
the whole server once a watcher has no process left ("No active process found for watcher").
One crashed runner would take every model down, and a lone ``bentoml serve`` container restarts
only if its orchestrator restarts it. ``server.respawn_workers`` (default on) keeps circus's
respawn: the dead worker comes back, as outside containers, and the others never stop.

The watchers also send SIGTERM to each worker's children at the same moment as to the worker
(``stop_children``). vLLM's engine core is such a child: it died while the runner still had
queued inputs. Here only the worker gets SIGTERM; it drains (``hosting/drain.py``) and then stops
its engines itself. A worker that does not stop is still killed with its whole tree after
circus's graceful timeout.

``install`` wraps ``create_watcher``, which BentoML imports from ``bentoml.serving`` when
``bentoml serve`` builds the watchers, after it imported the service module.
"""

from __future__ import annotations

import functools
from typing import Any

import bentoml.serving

from models.registry import served


def _supervised(create_watcher: Any) -> Any:
    @functools.wraps(create_watcher)
    def create(*args: Any, **kwargs: Any) -> Any:
        watcher = create_watcher(*args, **kwargs)
        if served().server.respawn_workers:
            watcher.respawn = True
        watcher.stop_children = False
        return watcher

    create.embedding_supervised = True
    return create


def install() -> None:
    if not getattr(bentoml.serving.create_watcher, "embedding_supervised", False):
        bentoml.serving.create_watcher = _supervised(bentoml.serving.create_watcher)
