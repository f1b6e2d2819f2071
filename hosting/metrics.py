"""Prometheus metrics on a port of their own (``server.metrics_port``), for a deployment that
keeps the API port for API clients only (a NetworkPolicy can then open the metrics port to
Prometheus alone).

Served by the entry service's first worker from BentoML's multiprocess directory, so one
``bentoml serve`` (gateway and runners) shows every process's metrics there, as ``/metrics``
does. The gateway then answers 404 on ``/metrics`` of its API port (``gateway/edge.py``).
"""

from __future__ import annotations

import logging

from models.registry import served

logger = logging.getLogger(__name__)


def serve_metrics_port() -> None:
    """Start the metrics server (a daemon thread) when configured and this process is the entry
    service's first worker; otherwise do nothing."""
    from bentoml._internal.context import server_context

    port = served().server.metrics_port
    if port is None or server_context.service_type != "entry_service" or server_context.worker_index not in (None, 1):
        return
    import prometheus_client
    from prometheus_client import multiprocess

    registry = prometheus_client.CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    prometheus_client.start_http_server(port, addr="0.0.0.0", registry=registry)
    logger.info("metrics served on port %d (/metrics of the API port is off)", port)
