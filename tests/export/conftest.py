"""The export tests' fixtures."""

from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A BENTOML_HOME of the module's own (an empty store), shared by the module's tests."""
    return tmp_path_factory.mktemp("bentoml_home")
