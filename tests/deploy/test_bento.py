"""`bentoml build` packs the service, its runners, the registry with its lock and the profile's store
entries: a pinned model's exactly (the version holding the pinned content; tests/export/test_pins.py builds
with another version as the latest)."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.server


def bentoml(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "bentoml", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.strip()


def test_build_packs_services_registry_and_models():
    import bentoml as bml

    from models.registry import load_registry

    pin = load_registry().models["all-MiniLM-L6-v2"].pin
    tag = bentoml("build", "--output", "tag").splitlines()[-1].removeprefix("__tag__:")
    try:
        path = Path(bml.get(tag).path)
        info = yaml.safe_load((path / "bento.yaml").read_text())
        services = {s["name"]: s for s in info["services"]}
        assert info["entry_service"] == "gateway" and set(services) == {"gateway", "ort_runner"}
        assert services["gateway"]["dependencies"] == [{"service": "ort_runner"}]
        assert [m["tag"] for m in services["gateway"]["models"]] == [f"all-minilm-l6-v2:{pin.version}"]
        assert services["ort_runner"]["config"]["runner_connection"]["max_requests"] >= 10**9
        for packed in ("src/service.py", "src/models/registry.yaml", "src/models/registry.lock",
                       "src/runners/ort/engine.py", "src/gateway/app.py", "src/core/wire.py"):
            assert (path / packed).is_file(), packed
        requirements = (path / "env/python/requirements.txt").read_text()
        assert "onnxruntime==" in requirements and "torch" not in requirements
    finally:
        bentoml("delete", "--yes", tag)
