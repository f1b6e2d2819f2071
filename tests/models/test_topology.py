"""Where the gateway finds its runners (models/topology.py): local by default, one URL per
engine, or one engine's models split over several URLs; bad settings fail at import."""

import pytest
import yaml

from models.registry import load_registry, parse_registry
from models.schema import Engine, RegistryError
from models.topology import runner_models, runner_routes
from tests.support.servers import ROOT

REGISTRY = load_registry()


def split_profile():
    data = yaml.safe_load((ROOT / "models/registry.yaml").read_text())
    data["models"]["minilm-b"] = {**data["models"]["all-MiniLM-L6-v2"], "aliases": []}
    data["profiles"]["split"] = {"models": ["all-MiniLM-L6-v2", "minilm-b"]}
    return parse_registry(yaml.safe_dump(data)).served("split")


def test_default_is_local():
    (route,) = runner_routes(REGISTRY.served("cpu"), {})
    assert (route.key, route.engine, route.url, route.models) == ("ort", Engine.ORT, None, ("all-MiniLM-L6-v2",))


def test_one_url_per_engine():
    (route,) = runner_routes(REGISTRY.served("cpu"), {"ort": "http://ort-runner:3000/"})
    assert (route.key, route.url) == ("ort", "http://ort-runner:3000")


def test_models_split_over_urls_by_name_or_alias():
    urls = {"ort": "sentence-transformers/all-MiniLM-L6-v2=http://a:1 minilm-b=http://b:2"}
    routes = runner_routes(split_profile(), urls)
    assert [(r.key, r.url, r.models) for r in routes] == [
        ("ort_1", "http://a:1", ("all-MiniLM-L6-v2",)),
        ("ort_2", "http://b:2", ("minilm-b",)),
    ]


@pytest.mark.parametrize(
    "value, message",
    [
        ("ort-runner:3000", "not an http(s) URL"),
        ("all-MiniLM-L6-v2=http://a:1", "no URL for minilm-b"),
        ("all-MiniLM-L6-v2=http://a:1 minilm-b=http://b:2 nope=http://c:3", "'nope' is not an ort model"),
    ],
)
def test_bad_runner_urls_fail_with_the_variable_named(value, message):
    with pytest.raises(RegistryError, match="EMBED_RUNNER_URL_ORT") as failed:
        runner_routes(split_profile(), {"ort": value})
    assert message in str(failed.value)


def test_runner_models_subset():
    served = split_profile()
    assert [m.name for m in runner_models(served, Engine.ORT, ())] == ["all-MiniLM-L6-v2", "minilm-b"]
    assert [m.name for m in runner_models(served, Engine.ORT, ("minilm-b",))] == ["minilm-b"]
    with pytest.raises(RegistryError, match="EMBED_RUNNER_MODELS: nope"):
        runner_models(served, Engine.ORT, ("minilm-b", "nope"))


def test_the_settings_read_runner_urls_and_models_from_the_environment(monkeypatch):
    monkeypatch.setenv("EMBED_RUNNER_URL_ORT", "http://ort-runner:3000/")
    monkeypatch.setenv("EMBED_RUNNER_MODELS", " minilm-b, ")
    served = split_profile()
    (route,) = runner_routes(served)
    assert (route.key, route.url, route.models) == ("ort", "http://ort-runner:3000", ("all-MiniLM-L6-v2", "minilm-b"))
    assert [m.name for m in runner_models(served, Engine.ORT)] == ["minilm-b"]
