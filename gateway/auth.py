"""Optional API keys for ``/v1``.

Keys come from ``EMBED_API_KEYS`` (comma-separated) and/or ``EMBED_API_KEYS_FILE`` (one key per
line; blank lines and ``#`` comments ignored). With no keys configured, the API is open, unless
``server.require_api_keys`` (``EMBED_REQUIRE_API_KEYS=1``, set by the Kubernetes manifests) asks
to fail closed: then ``bentoml serve`` refuses to start. Keys are compared in constant time
against every configured key and are never logged. Health endpoints are outside ``/v1`` and stay
open; ``/metrics`` is open unless ``server.metrics_require_key`` (``gateway/edge.py``).

The admin endpoint (``/v1/admin/routing``: who gets which model variant) takes the keys of
``EMBED_ADMIN_API_KEYS`` (comma-separated) when set, else the API keys; with neither it answers
403: changing what users are served is never open.
"""

from __future__ import annotations

import hmac

from core.errors import Unauthorized
from core.settings import ConfigError, Settings, settings
from models.schema import ServerSpec


def load_admin_keys(config: Settings | None = None) -> tuple[bytes, ...]:
    """``EMBED_ADMIN_API_KEYS``: the keys of the admin endpoint (none: it takes the API keys)."""
    return tuple(k.encode() for k in (config or settings()).admin_api_keys)


def load_keys(config: Settings | None = None) -> tuple[bytes, ...]:
    """The API keys: ``EMBED_API_KEYS`` and the lines of ``EMBED_API_KEYS_FILE``; ``ConfigError``
    when the file cannot be read."""
    config = config or settings()
    keys = list(config.api_keys)
    if path := config.api_keys_file:
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"EMBED_API_KEYS_FILE={str(path)!r}: cannot read it ({exc.strerror}); name a "
                              "readable file with one key per line, or unset it") from None
        keys.extend(line.split("#", 1)[0].strip() for line in text.splitlines())
    return tuple(k.encode() for k in keys if k)


def require_keys_if_asked(server: ServerSpec, keys: tuple[bytes, ...]) -> tuple[bytes, ...]:
    """``keys``, or ``ConfigError`` when none are configured and ``server.require_api_keys``."""
    if server.require_api_keys and not keys:
        raise ConfigError(
            "EMBED_REQUIRE_API_KEYS is set but no API key is configured: set EMBED_API_KEYS (comma-separated) "
            "or EMBED_API_KEYS_FILE (one key per line), or unset EMBED_REQUIRE_API_KEYS to serve without keys"
        )
    return keys


class ApiKeys:
    def __init__(self, keys: tuple[bytes, ...]) -> None:
        self.keys = keys

    def check(self, authorization: str | None) -> None:
        """Raise ``Unauthorized`` unless ``Authorization: Bearer <key>`` names a configured key."""
        if not self.keys:
            return
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("Missing API key: send `Authorization: Bearer <key>`.")
        given = token.strip().encode()
        matched = False
        for key in self.keys:
            matched |= hmac.compare_digest(given, key)
        if not matched:
            raise Unauthorized("Incorrect API key provided.")
