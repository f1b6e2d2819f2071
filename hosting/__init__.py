"""How BentoML 1.4.40 runs our services, made safe for hostile clients, faults and shutdown.

BentoML builds its uvicorn server, its supervisor (circus) and its metrics middleware without a
setting for any of these, so ``install()`` changes five things where BentoML looks them up, at
import of a service module (``service.py``, ``runners/*/service.py``), before BentoML reads them:

- ``protocol``: uvicorn's HTTP protocol gets a read deadline (a connection must deliver its whole
  request within ``server.read_timeout_s``: no idle or trickling connections held for good), a
  cap on open connections per worker, and OpenAI-shaped errors for what it answers itself;
- ``routes``: BentoML's request metrics are labelled by route template, not by raw path;
- ``supervisor``: worker processes are respawned inside containers too, and only the worker gets
  SIGTERM (not its children, such as vLLM's engine core, which it stops itself when drained);
- ``drain`` (installed by each service's start hook): SIGTERM makes a service report not ready
  and finish its work before uvicorn stops, and the listening socket refuses, never resets;
- ``home``: what a server writes under the Bento home (its Prometheus multiprocess directory, its
  process records) is in a folder of its own, so servers sharing a home leave each other alone.

Each is a plain assignment to one name BentoML or uvicorn reads at run time; nothing is copied
from them. ``tests/hosting/test_faults.py`` checks each behaviour on a real server.
"""

from __future__ import annotations

import functools


@functools.cache
def install() -> None:
    """Apply the protocol, metric-label, supervisor and Bento-home changes (idempotent)."""
    from hosting import home, protocol, routes, supervisor

    protocol.install()
    routes.install()
    supervisor.install()
    home.install()
