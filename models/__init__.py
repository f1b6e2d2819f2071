"""What is served: the model registry (``schema.py`` its shape, ``registry.py`` its loading, ``checks.py`` its
checks across sections) and the Bento model store (``store.py``)."""

import logging

from core.settings import settings

PLATFORM_LOGGERS = ("core", "gateway", "runners", "models", "service", "hosting")


def tracing_config(*paths: str) -> dict:
    """BentoML ``tracing`` service config that skips ``paths`` unless ``EMBED_TRACING=1``.

    BentoML's OpenTelemetry middleware builds a span per request even when nothing samples it
    (the default sample rate is 0): 23% of the gateway's CPU under load (docs/benchmarks.md)."""
    if settings().tracing:
        return {}
    return {"excluded_urls": ",".join(paths)}


def configure_logging() -> None:
    """Let the platform's INFO logs through (BentoML sets the root logger to WARNING);
    ``EMBED_LOG_LEVEL`` changes the level."""
    for name in PLATFORM_LOGGERS:
        logging.getLogger(name).setLevel(settings().log_level)
