"""The settings (core/settings.py): every EMBED_* variable read once, typed and checked; the README's
table generated from them; a start-up refusal is one line on stderr, not a traceback."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.settings import (
    ConfigError,
    Settings,
    SettingsError,
    field_variable,
    hand_to_workers,
    markdown,
    readme_table,
    refusing_to_start,
    settings,
)
from models.schema import GatewaySpec, ServerSpec
from tests.support.servers import ROOT

# where EMBED_* variables may be read with os.environ / os.getenv: the settings themselves, and the
# tools that are not the platform (bench's own knobs, export's command line is read through served())
READERS_ALLOWED = {"core/settings.py"}
OUTSIDE_THE_PLATFORM = ("bench/", "tests/", ".venv", ".cache")


def test_no_module_reads_an_embed_variable_but_the_settings():
    reads = re.compile(r"""(environ(\.get)?\s*[\[(]\s*|getenv\(\s*)["']EMBED_""")
    found = []
    for path in ROOT.rglob("*.py"):
        name = path.relative_to(ROOT).as_posix()
        if name.startswith(OUTSIDE_THE_PLATFORM) or name in READERS_ALLOWED:
            continue
        found += [f"{name}:{n}" for n, line in enumerate(path.read_text().splitlines(), 1) if reads.search(line)]
    assert found == []


def test_every_variable_the_docs_and_manifests_name_is_a_setting():
    named = set()
    for pattern in ("*.md", "docs/*.md", "deploy/k8s/*.yaml", "deploy/compose/*.yaml", "Makefile", "service.py"):
        for path in ROOT.glob(pattern):
            named |= set(re.findall(r"\bEMBED_[A-Z][A-Z0-9_]*[A-Z0-9]\b", path.read_text()))
    variables = {field_variable(name) for name in Settings.model_fields}
    families = {"EMBED_RUNNER_URL_ORT", "EMBED_RUNNER_URL_VLLM", "EMBED_RUNNER_URL_"}
    not_platform = {"EMBED_MODEL", "EMBED_SET", "EMBED_INPUTS", "EMBED_API_KEY", "EMBED_URL", "EMBED_PATH",
                    "EMBED_IMAGE_CA_BUNDLE"}  # bench/k6/wrk knobs, and deploy/image/base.sh's build argument
    assert named - variables - families - not_platform == set()


@pytest.mark.parametrize("spec", [GatewaySpec, ServerSpec])
def test_each_registry_field_has_its_override_with_the_same_type_range_and_default(spec):
    section = "gateway" if spec is GatewaySpec else "server"
    overrides = {name: field for name, field in Settings.model_fields.items()
                 if (field.json_schema_extra or {}).get("registry") == section}
    assert overrides.keys() == spec.model_fields.keys()
    for name, field in overrides.items():
        schema_field = spec.model_fields[name]
        assert field.annotation == schema_field.annotation | None, name
        assert field.metadata == schema_field.metadata, name
        assert field.json_schema_extra["registry_default"] == schema_field.default, name
        assert field.default is None and field.description, name


def test_the_readme_table_is_the_generated_one():
    readme = (ROOT / "README.md").read_text()
    assert readme_table(readme) == markdown(), "regenerate it: make docs-config"
    assert markdown().count("\n") == len(Settings.model_fields) + 2  # a row per field, each documented
    assert all(field.description for field in Settings.model_fields.values())


def test_values_are_typed(monkeypatch):
    for name, value in {"EMBED_API_KEYS": " a, ,b ", "EMBED_LOG_LEVEL": "debug", "EMBED_TRACING": "1",
                        "EMBED_GATEWAY_WORKERS": "auto", "EMBED_CACHE_DIR": "~/c", "EMBED_MAX_BODY_BYTES": "5",
                        "EMBED_DRAIN_S": "0.5", "EMBED_RUNNER_URL_ORT": "http://o:1", "EMBED_ROUTING_FILE": "",
                        "EMBED_RESPAWN_WORKERS": "0"}.items():
        monkeypatch.setenv(name, value)
    config = settings()
    assert config.api_keys == ("a", "b") and config.log_level == "DEBUG" and config.tracing is True
    assert config.gateway_workers == "auto" and config.cache_dir == (Path.home() / "c").resolve()
    assert config.runner_urls == {"ort": "http://o:1"} and config.routing_file is None  # empty: unset
    assert config.registry_overrides("gateway") == {"max_body_bytes": 5}
    assert config.registry_overrides("server") == {"drain_s": 0.5, "respawn_workers": False}
    assert settings() is config  # read once per process


@pytest.mark.parametrize("name, value, message", [
    ("EMBED_MAX_INPUTS_PER_REQUEST", "abc", "EMBED_MAX_INPUTS_PER_REQUEST='abc': Input should be a valid integer, "
     "unable to parse string as an integer; set it to integer > 0 or unset it"),
    ("EMBED_METRICS_PORT", "70000", "EMBED_METRICS_PORT='70000': Input should be less than 65536; set it to "
     "integer > 0 and < 65536 or unset it"),
    ("EMBED_TRACING", "maybe", "EMBED_TRACING='maybe': Input should be a valid boolean, unable to interpret input; "
     "set it to 1 or 0 or unset it"),
    ("EMBED_GATEWAY_WORKERS", "0", "EMBED_GATEWAY_WORKERS='0': not a number of workers (1 or more) or 'auto'; set "
     "it to integer >= 1 or auto or unset it"),
    ("EMBED_IMAGE", "arm", "EMBED_IMAGE='arm': Input should be 'cpu' or 'gpu'; set it to cpu, gpu or unset it"),
    ("EMBED_LOG_LEVEL", "loud", "EMBED_LOG_LEVEL='LOUD': Input should be 'DEBUG', 'INFO', 'WARNING', 'ERROR' or "
     "'CRITICAL'; set it to DEBUG, INFO, WARNING, ERROR, CRITICAL or unset it"),
])
def test_an_invalid_value_names_its_variable_and_the_fix(monkeypatch, name, value, message):
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as failed:
        settings()
    assert str(failed.value) == message


def test_a_variable_that_is_no_setting_is_named_in_a_warning(monkeypatch, caplog):
    monkeypatch.setenv("EMBED_MAX_INPUT_PER_REQUEST", "8")  # a typo of EMBED_MAX_INPUTS_PER_REQUEST
    settings()
    assert "EMBED_MAX_INPUT_PER_REQUEST: not a setting of the platform, ignored" in caplog.text


def test_hand_to_workers_sets_the_variable_and_reads_again(monkeypatch, tmp_path):
    monkeypatch.delenv("EMBED_ROUTING_FILE", raising=False)
    assert settings().routing_file is None
    path = tmp_path / "routing.json"
    try:
        hand_to_workers("routing_file", str(path))
        assert settings().routing_file == path
    finally:  # servers that later tests start inherit this process's environment: leave nothing behind
        os.environ.pop("EMBED_ROUTING_FILE", None)


def test_a_refusal_is_one_line_per_problem_and_status_2(capsys):
    with pytest.raises(SystemExit) as stopped, refusing_to_start("gateway"):
        raise ConfigError("A: wrong\nB: wrong too")
    assert stopped.value.code == 2
    assert capsys.readouterr().err == "gateway: cannot start: A: wrong\ngateway: cannot start: B: wrong too\n"
    with pytest.raises(KeyError), refusing_to_start("gateway"):  # anything else is not a refusal: unchanged
        raise KeyError("bug")


@pytest.mark.parametrize("env, line", [
    ({"EMBED_REQUIRE_API_KEYS": "1", "EMBED_API_KEYS": ""},
     "gateway: cannot start: EMBED_REQUIRE_API_KEYS is set but no API key is configured: set EMBED_API_KEYS "
     "(comma-separated) or EMBED_API_KEYS_FILE (one key per line), or unset EMBED_REQUIRE_API_KEYS to serve "
     "without keys"),
    ({"EMBED_MAX_INPUTS_PER_REQUEST": "abc"},
     "gateway: cannot start: EMBED_MAX_INPUTS_PER_REQUEST='abc': Input should be a valid integer, unable to parse "
     "string as an integer; set it to integer > 0 or unset it"),
    ({"EMBED_PROFILE": "nope"},
     f"gateway: cannot start: EMBED_PROFILE='nope': not a profile of {ROOT}/models/registry.yaml; set it to one of "
     "cpu, cpu-all, cpu-ab, cpu-int8, bench-null, rtx4090"),
])
def test_bentoml_serve_refuses_in_one_line_at_once(tmp_path, env, line):
    """The real ``bentoml serve``: stderr is the one line (no traceback), the status 2, within seconds."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("EMBED_")}
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "bentoml", "serve", "service:Gateway", "--port", "1"], cwd=ROOT,
                          env={**base, "EMBED_PROFILE": "cpu", **env}, capture_output=True, text=True, timeout=120)
    took = time.monotonic() - started
    assert (done.returncode, done.stderr, done.stdout) == (2, line + "\n", "")
    assert took < 30, took  # the import's own time (about 2.5 s here), no server started
