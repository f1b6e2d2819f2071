"""Fixtures every folder of the tests shares: fresh settings per test, the session's ``cpu`` server
and the stand-in GPU driver libraries."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.servers import ROOT, SERVER_ENV, bentoml_server


@pytest.fixture(autouse=True)
def fresh_settings() -> Iterator[None]:
    """Each test reads the ``EMBED_*`` settings of its own environment (``core/settings.py``): a
    test that sets a variable with ``monkeypatch`` sees it, and the next test does not. A test that
    leaves an ``EMBED_*`` variable changed fails here: every server a later test starts would
    inherit it (a leaked ``EMBED_ROUTING_FILE`` once made unrelated servers share one routing)."""
    from core.settings import settings

    before = embed_variables()
    settings.cache_clear()
    yield
    settings.cache_clear()
    assert embed_variables() == before, "this test left EMBED_* variables changed in the test process"


def embed_variables() -> dict[str, str]:
    return {name: value for name, value in os.environ.items() if name.startswith("EMBED_")}


@pytest.fixture(scope="session")
def server(tmp_path_factory) -> Iterator[str]:
    """The session's server lives while other modules start and stop servers of their own on the
    same Bento home."""
    folder = tmp_path_factory.mktemp("server")
    with bentoml_server(SERVER_ENV, folder / "serve.log") as url:
        yield url


@pytest.fixture(scope="session")
def fake_libs(tmp_path_factory) -> Path:
    """A folder with libcuda.so.1 and libnvinfer.so.10 stand-ins (gcc)."""
    folder = tmp_path_factory.mktemp("fake-gpu-libs")
    source = ROOT / "tests/support/fake_gpu/fake_gpu.c"
    for name in ("libcuda.so.1", "libnvinfer.so.10"):
        subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(folder / name), str(source)], check=True, timeout=60)
    return folder
