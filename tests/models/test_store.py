"""Start-up checks of store entries: pinned and latest tags, and clear failures for a missing,
corrupt or mismatched model, from `python -m export ensure` and from a starting server."""

import shutil
import time
from pathlib import Path

import bentoml
import httpx
import pytest

from models.registry import served
from models.store import StoreError, open_entry
from tests.support.export_cli import cli
from tests.support.servers import ROOT, serve_process

SPEC = served("cpu").find("all-MiniLM-L6-v2")


@pytest.fixture(scope="module")
def corrupt_home(tmp_path_factory) -> Path:
    """A BENTOML_HOME holding a copy of the MiniLM entry whose model.onnx is cut short."""
    home = tmp_path_factory.mktemp("corrupt-home")
    source = Path(bentoml.models.get(SPEC.store_tag).path).parent
    shutil.copytree(source, home / "models" / source.name)
    version = (source / "latest").read_text().strip()
    onnx = home / "models" / source.name / version / "model.onnx"
    with onnx.open("r+b") as f:
        f.truncate(onnx.stat().st_size // 2)
    return home


def test_latest_and_pinned_tags_open_the_same_entry():
    latest = open_entry(SPEC)
    pinned = open_entry(SPEC.model_copy(update={"store_tag": latest.tag}))
    assert pinned.path == latest.path and ":" in latest.tag
    assert latest.settings["dimensions"] == 384 and latest.metadata["onnx_sha256"]


def test_missing_and_mismatched_entries_are_refused_with_the_fix():
    with pytest.raises(StoreError, match=r"'no-such-model' is missing; run `python -m export ensure`"):
        open_entry(SPEC.model_copy(update={"store_tag": "no-such-model", "pin": None}))
    with pytest.raises(StoreError, match="the registry says 512 dimensions"):
        open_entry(SPEC.model_copy(update={"dimensions": 512}))


def test_an_entry_of_another_precision_or_fusion_is_refused():
    """The plain fp32 entry must not be served as an int8 or fused registry model."""
    int8 = SPEC.model_copy(update={"ort": SPEC.ort.model_copy(update={"precision": "int8"})})
    with pytest.raises(StoreError, match="registry wants precision int8, fusions False; store entry "
                       r"all-minilm-l6-v2:\w+ was exported with precision fp32, fusions False"):
        open_entry(int8)
    fused = SPEC.model_copy(update={"ort": SPEC.ort.model_copy(update={"transformer_fusions": True})})
    with pytest.raises(StoreError, match="wants precision fp32, fusions True"):
        open_entry(fused)


def test_ensure_stops_on_a_corrupt_entry(corrupt_home):
    """It holds the pinned content (the shipped lock): a person decides, since an export would get the
    same version."""
    done = cli(corrupt_home, "ensure", "--profile", "cpu")
    assert done.returncode == 1
    assert "model.onnx is corrupt" in done.stderr and "it holds the pinned content" in done.stderr
    assert f"bentoml models delete {SPEC.store_name}:{SPEC.pin.version}" in done.stderr


def test_ensure_registers_a_pre_pin_entry_of_the_pinned_content_again_under_its_content_version(tmp_path):
    """A store made before store versions were contents (a random version, no recorded content) holds
    the pinned bytes: ensure keeps them and registers them again under the content version, so the
    server, `bentoml build` and the metrics name the pinned version as on a fresh machine."""
    import yaml

    source = Path(bentoml.models.get(f"{SPEC.store_name}:{SPEC.pin.version}").path)
    legacy = tmp_path / "models" / SPEC.store_name / "oldrandomversion"
    shutil.copytree(source, legacy)
    info = yaml.safe_load((legacy / "model.yaml").read_text())
    info["version"] = "oldrandomversion"
    info["metadata"].pop("content")
    (legacy / "model.yaml").write_text(yaml.safe_dump(info))
    (legacy.parent / "latest").write_text("oldrandomversion")
    done = cli(tmp_path, "ensure", "--profile", "cpu")
    assert done.returncode == 0, done.stderr
    assert f"registered again as {SPEC.store_name}:{SPEC.pin.version}" in done.stderr
    assert f"already in the store as {SPEC.store_name}:{SPEC.pin.version}" in done.stdout
    again = yaml.safe_load((legacy.parent / SPEC.pin.version / "model.yaml").read_text())
    assert again["metadata"]["content"]["digest"] == SPEC.pin.digest
    assert (legacy / "model.onnx").exists()  # the old entry stays: a bento may name it
    assert "registered again" not in cli(tmp_path, "ensure", "--profile", "cpu").stderr  # once


@pytest.fixture
def outdated_home(tmp_path) -> tuple[Path, str]:
    """A BENTOML_HOME whose MiniLM entry is as an older export wrote it: a version id of its own, no
    recorded content, and its graph not where the runner reads it (``model.onnx``); and a copy of
    the registry without its lock (nothing pinned). Returns the home and the outdated version."""
    import yaml

    source = Path(bentoml.models.get(SPEC.store_tag).path)
    version = "olderlayout1"
    entry = tmp_path / "models" / source.parent.name / version
    shutil.copytree(source, entry)
    (entry.parent / "latest").write_text(version)
    info = yaml.safe_load((entry / "model.yaml").read_text())
    info["version"] = version
    del info["metadata"]["content"]
    (entry / "model.yaml").write_text(yaml.safe_dump(info))
    (entry / "model.onnx").rename(entry / "graph.onnx")
    shutil.copy(ROOT / "models" / "registry.yaml", tmp_path / "registry.yaml")
    return tmp_path, version


def unpinned(home: Path) -> dict[str, str]:
    return {"EMBED_REGISTRY": str(home / "registry.yaml")}


def test_ensure_exports_a_new_version_beside_an_outdated_unpinned_entry(outdated_home):
    home, old = outdated_home
    done = cli(home, "ensure", "--profile", "cpu", env=unpinned(home))
    assert done.returncode == 0, done.stderr
    assert f"all-minilm-l6-v2:{old} lacks model.onnx" in done.stdout and "exporting a new version" in done.stdout
    folder = home / "models" / "all-minilm-l6-v2"
    latest = (folder / "latest").read_text().strip()
    assert latest != old and (folder / latest / "model.onnx").is_file()
    assert (folder / old / "graph.onnx").is_file()  # the old version is left as it was
    again = cli(home, "ensure", "--profile", "cpu", env=unpinned(home))
    assert again.returncode == 0 and f"already in the store as all-minilm-l6-v2:{latest}" in again.stdout


def test_ensure_never_replaces_a_pinned_outdated_version(outdated_home):
    import yaml

    home, old = outdated_home
    registry = yaml.safe_load((ROOT / "models" / "registry.yaml").read_text())
    registry["models"]["all-MiniLM-L6-v2"]["store_tag"] = f"all-minilm-l6-v2:{old}"
    (home / "registry.yaml").write_text(yaml.safe_dump(registry))
    done = cli(home, "ensure", "--profile", "cpu", env=unpinned(home))
    assert done.returncode == 1 and f"all-minilm-l6-v2:{old} lacks model.onnx" in done.stderr
    assert sorted(p.name for p in (home / "models" / "all-minilm-l6-v2").iterdir()) == sorted([old, "latest"])


@pytest.mark.server
def test_server_with_a_corrupt_entry_never_gets_ready_and_says_why(corrupt_home, tmp_path):
    log_path = tmp_path / "serve.log"
    with serve_process({"BENTOML_HOME": str(corrupt_home)}, log_path, stop_timeout=5) as (_, url):
        deadline = time.monotonic() + 60
        while "is corrupt" not in log_path.read_text() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert "model.onnx is corrupt" in log_path.read_text()
        try:  # the gateway may be up, but /readyz must not say ready (it answers 503 or hangs)
            status = httpx.get(f"{url}/readyz", timeout=10).status_code
        except httpx.HTTPError:
            status = None
        assert status != 200
