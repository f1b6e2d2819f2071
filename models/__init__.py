"""What is served: the model registry (``registry.py``) and the Bento model store (``store.py``)."""

import logging
import os

PLATFORM_LOGGERS = ("gateway", "runners", "models", "service")


def configure_logging() -> None:
    """Let the platform's INFO logs through (BentoML sets the root logger to WARNING);
    ``EMBED_LOG_LEVEL`` changes the level."""
    level = os.environ.get("EMBED_LOG_LEVEL", "INFO").upper()
    for name in PLATFORM_LOGGERS:
        logging.getLogger(name).setLevel(level)
