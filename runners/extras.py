"""Optional engines: which Python package each engine needs and which file installs it.

``service.py`` calls ``require_engines`` at import, before any service starts, so a profile
whose engine is not installed fails at once with the command to run, instead of a runner that
crashes and restarts behind a gateway whose ``/readyz`` never turns ready.
"""

from __future__ import annotations

import importlib.util

from core.settings import ConfigError
from models.schema import Engine, Served

# engine -> (import name that must be installed, requirements file of the extra)
EXTRAS = {
    Engine.ORT: ("onnxruntime", "requirements-serve.txt"),
    Engine.VLLM: ("vllm", "requirements-vllm.txt"),
}


def require_engines(served: Served) -> None:
    """Raise ``ConfigError`` naming the extra to install for every engine of the profile whose
    package cannot be imported."""
    missing = [engine for engine in served.runners if importlib.util.find_spec(EXTRAS[engine][0]) is None]
    if missing:
        installs = " and ".join(f"`pip install -r {EXTRAS[e][1]} -c constraints.txt`" for e in missing)
        raise ConfigError(
            f"profile {served.profile!r} serves models on the {', '.join(e.value for e in missing)} engine, "
            f"which is not installed here: run {installs} (`make serve PROFILE={served.profile}` "
            "installs it), or serve another profile"
        )
