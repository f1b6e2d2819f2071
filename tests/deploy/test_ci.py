"""The GitHub workflows (.github/workflows), which cannot run here: each validates against GitHub's
workflow schema as check-jsonschema ships it (offline; and every job has a timeout), every `make`
command they run names targets the Makefile has and dry-runs (`make -n`), ci.yml runs what
.ci/run runs plus lint and the bento build, and docker.yml smoke-tests the image it builds before
it pushes, and pushes only on version tags, with the registry and its credentials from secrets."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((ROOT / ".github/workflows").glob("*.yml"))
CHECK_JSONSCHEMA = ROOT / ".venv/bin/check-jsonschema"
# a make run of its own: none of the `make test` that runs this file leaks into it
MAKE_ENV = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS", "MAKEOVERRIDES")}


def makefile_targets() -> set[str]:
    """Explicit targets of the Makefile: `name [name ...]:` at the start of a line (not `:=`)."""
    targets = set()
    for line in (ROOT / "Makefile").read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.$()/\-][^:=#\t]*?)\s*:(?![=:])", line)
        if match and not match.group(1).startswith("."):
            targets.update(match.group(1).split())
    return targets


def steps(workflow: Path) -> list[dict]:
    return [step for job in yaml.safe_load(workflow.read_text())["jobs"].values() for step in job["steps"]]


def make_commands(workflow: Path) -> list[list[str]]:
    """Each `make ...` command line of the workflow's run steps, split into words."""
    return [shlex.split(line.strip()) for step in steps(workflow) for line in step.get("run", "").splitlines()
            if line.strip().startswith("make ")]


def test_the_workflows_exist():
    assert {w.name for w in WORKFLOWS} == {"ci.yml", "docker.yml"}


@pytest.mark.parametrize("schema", ["vendor.github-workflows", "custom.github-workflows-require-timeout"])
def test_workflows_validate_against_githubs_schema(schema):
    done = subprocess.run([str(CHECK_JSONSCHEMA), "--builtin-schema", schema, *map(str, WORKFLOWS)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_schema_check_catches_a_broken_workflow(tmp_path):
    broken = tmp_path / "broken.yml"
    broken.write_text("on: push\njobs:\n  test:\n    runs-on: ubuntu-24.04\n    stepz: []\n")
    done = subprocess.run([str(CHECK_JSONSCHEMA), "--builtin-schema", "vendor.github-workflows", str(broken)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "broken.yml" in done.stdout, done.stdout + done.stderr


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda w: w.name)
def test_every_make_command_names_existing_targets_and_dry_runs(workflow):
    targets = makefile_targets()
    assert {"test", "lint", "build", "image"} <= targets  # the parse found the Makefile's targets
    commands = make_commands(workflow)
    assert commands, f"{workflow.name} runs no make command"
    for words in commands:
        named = [w for w in words[1:] if not w.startswith("-") and "=" not in w]
        assert named and set(named) <= targets, f"{' '.join(words)}: no target {set(named) - targets}"
        done = subprocess.run(["make", "-n", "--no-print-directory", *words[1:]], cwd=ROOT, env=MAKE_ENV,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"make -n {' '.join(words[1:])}: {done.stderr[-2000:]}"


def test_ci_runs_what_ci_run_runs_then_builds_the_bento():
    ci_run = [shlex.split(line) for line in (ROOT / ".ci/run").read_text().splitlines()
              if line.startswith("make ")]
    assert ci_run == [["make", "test"]]
    commands = make_commands(ROOT / ".github/workflows/ci.yml")
    assert commands[:3] == [["make", "lint"], ["make", "test"], ["make", "build"]]
    # `make build` is `bentoml build`
    assert "bentoml build" in subprocess.run(["make", "-n", "build"], cwd=ROOT, env=MAKE_ENV, capture_output=True,
                                             text=True, timeout=120).stdout


def test_docker_workflow_smoke_tests_the_image_and_pushes_only_tags_with_secrets():
    workflow = ROOT / ".github/workflows/docker.yml"
    assert make_commands(workflow) == [["make", "image", "IMAGE_BACKEND=docker"]]
    # `make image` with the docker backend runs the image's smoke test after building it
    dry = subprocess.run(["make", "-n", "--no-print-directory", "image", "IMAGE_BACKEND=docker"], cwd=ROOT,
                         env=MAKE_ENV, capture_output=True, text=True, timeout=120).stdout
    assert "deploy/image/build.sh" in dry
    assert "IMAGE_BACKEND=docker deploy/image/smoke.sh embedding-platform:cpu" in dry
    assert "docker run" in (ROOT / "deploy/image/smoke.sh").read_text()

    all_steps = steps(workflow)
    build = next(i for i, s in enumerate(all_steps) if "make image" in s.get("run", ""))
    pushing = [i for i, s in enumerate(all_steps) if "docker push" in s.get("run", "") or "login" in s.get("uses", "")]
    assert pushing and min(pushing) > build
    text = workflow.read_text()
    for i in pushing:
        assert all_steps[i]["if"] == "startsWith(github.ref, 'refs/tags/v')"
    assert set(re.findall(r"secrets\.([A-Z_]+)", text)) == {"REGISTRY", "REGISTRY_NAMESPACE", "REGISTRY_USERNAME",
                                                              "REGISTRY_PASSWORD"}
    assert yaml.safe_load(text)[True]["push"]["tags"] == ["v*"]  # YAML 1.1 reads the key `on` as True
