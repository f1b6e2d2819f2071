"""``hf:`` sources, for real, against a stand-in hub (tests/support/fake_hub.py, on 127.0.0.1 through
``HF_ENDPOINT``) serving a tiny random BERT made here: ``python -m export ensure`` downloads it with
huggingface_hub (progress lines, ``HF_HOME``'s cache, ``HF_TOKEN`` for a gated repository), survives a
connection cut in the middle of the weights by resuming with a range request, and records the hub
commit it exported; ``python -m export pin`` writes that commit into registry.lock beside the content
hash; when the hub's ``main`` has moved on, exporting the pinned model again stops naming both
commits, and the registry's ``revision`` set to the pinned commit reproduces it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support.fake_hub import FakeHub, folder_files

ROOT = Path(__file__).resolve().parents[2]
REPO = "test-org/tiny-bert"
REGISTRY = f"""
models:
  tiny-hub:
    engine: vllm
    store_tag: tiny-hub
    source: hf:{REPO}
    pooling: mean
    max_tokens: 128
    dimensions: 128
profiles:
  hub:
    models: [tiny-hub]
    runners:
      vllm: {{resources: {{cpu: "1"}}}}
"""
pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> dict[str, bytes]:
    from tests.support.tiny_models import tiny_bert

    files = folder_files(tiny_bert(tmp_path_factory.mktemp("tiny-bert"), hidden_size=128))
    assert len(files["model.safetensors"]) > 12 << 20  # more than huggingface_hub's 10 MiB download chunk
    return files


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "export", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={k: v for k, v in {**os.environ, **env}.items() if k != "HF_HUB_OFFLINE"})


def test_download_resume_commit_pin_and_a_hub_that_moved_on(checkpoint, tmp_path):
    registry = tmp_path / "registry.yaml"
    registry.write_text(REGISTRY)
    with FakeHub() as hub:
        first = hub.repo(REPO).commit(checkpoint)
        env = {"EMBED_REGISTRY": str(registry), "EMBED_PROFILE": "hub", "HF_ENDPOINT": hub.url,
               "HF_HOME": str(tmp_path / "hf"), "BENTOML_HOME": str(tmp_path / "store-1"),
               "HF_HUB_DISABLE_TELEMETRY": "1", "HF_TOKEN": ""}

        hub.token = "hf_test_token"  # a gated repository: refused without the token, with the fix named
        done = run(["ensure"], env)
        assert done.returncode == 1, done.stdout + done.stderr
        assert f"source hf:{REPO}: cannot download from the Hugging Face hub" in done.stderr
        assert "it needs a token: set HF_TOKEN" in done.stderr

        hub.cut["model.safetensors"] = 12 << 20  # the connection drops after 12 MiB of the weights
        hub.log.clear()
        done = run(["ensure"], {**env, "HF_TOKEN": "hf_test_token"})
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"downloading hf:{REPO} at main = commit {first} ({len(checkpoint)} files" in done.stderr
        assert f"into {tmp_path / 'hf' / 'hub'}" in done.stderr  # HF_HOME's cache
        assert "(100%)" in done.stderr  # the progress lines end with the whole size
        weights = [(method, rng) for method, path, rng in hub.log if method == "GET" and path.endswith(
            f"/resolve/{first}/model.safetensors")]
        # resumed after the last whole 10 MiB chunk huggingface_hub wrote (its DOWNLOAD_CHUNK_SIZE), not started over
        assert weights == [("GET", None), ("GET", f"bytes={10 << 20}-")], hub.log
        blobs = tmp_path / "hf/hub/models--test-org--tiny-bert/snapshots" / first
        assert (blobs / "model.safetensors").read_bytes() == checkpoint["model.safetensors"]

        done = run(["pin"], {**env, "HF_TOKEN": "hf_test_token"})
        assert done.returncode == 0, done.stdout + done.stderr
        pin = yaml.safe_load((tmp_path / "registry.lock").read_text())["pins"]["tiny-hub"]
        assert pin["revision"] == first and pin["source"] == f"hf:{REPO}" and pin["digest"].startswith("sha256:")

        # the hub's main moves on; a machine without the model in its store exports it again
        second = hub.repo(REPO).commit({**checkpoint, "config.json": checkpoint["config.json"] + b"\n"})
        hub.log.clear()
        fresh = {**env, "HF_TOKEN": "hf_test_token", "BENTOML_HOME": str(tmp_path / "store-2")}
        done = run(["ensure"], fresh)
        assert done.returncode == 1, done.stdout + done.stderr
        assert (f"the hub's main of {REPO} is now commit {second}, but registry.lock pins the export of commit "
                f"{first}") in done.stderr
        assert f"set `revision: {first}`" in done.stderr
        assert not any(f"/resolve/{second}/" in path for _, path, _ in hub.log)  # nothing of it downloaded

        # following the message: the registry names the pinned commit, and the pin is reproduced
        registry.write_text(REGISTRY.replace("    source: hf:", f"    revision: {first}\n    source: hf:"))
        done = run(["ensure"], {**fresh, "BENTOML_HOME": str(tmp_path / "store-3")})
        assert done.returncode == 0, done.stdout + done.stderr
        assert "reproduced the pin of tiny-hub" in done.stdout
