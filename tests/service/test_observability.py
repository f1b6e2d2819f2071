"""A real Prometheus server (Debian package `prometheus`, installed by `make test-tools`) runs
the shipped deploy/prometheus config and alert rules, pointed at the test server, and every
metric that a panel of the shipped Grafana dashboard queries must exist in Prometheus with the
labels the query uses. A panel over a metric nobody exports fails this test.

The test server has no GPU, so its runner exports no GPU series (checked here too); the GPU
gauges come from a second target, ``tests/support/fake_nvml.py``, which runs the runner's real GPU
metric code on a stand-in NVML library. The session server serves one variant per model and no
shadow traffic, so a third target, a server whose all-MiniLM-L6-v2 has a shadow variant, makes
the shadow agreement series.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest
import yaml

from deploy.processes import free_port, stop_tree
from tests.support.servers import API_KEY, ROOT, bentoml_server

pytestmark = pytest.mark.server

PROMETHEUS_DIR = ROOT / "deploy/prometheus"
DASHBOARD = ROOT / "deploy/grafana/dashboards/embedding.json"
DATASOURCE = ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml"
METRIC = re.compile(r"\b(embedding_[a-z_]+)\b")
BY = re.compile(r"\bby\s*\(([^)]*)\)")
SELECTOR = re.compile(r"\{([^}]*)\}")


def panel_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [(panel["title"], target["expr"]) for panel in dashboard["panels"] for target in panel["targets"]]


def labels_used(expr: str) -> set[str]:
    """Label names the query groups by or selects on (``le`` is the histograms' own)."""
    names = {name.strip() for group in BY.findall(expr) for name in group.split(",") if name.strip()}
    for selector in SELECTOR.findall(expr):
        names |= {m.group(1) for m in re.finditer(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)", selector)}
    return names - {"le"}


@contextlib.contextmanager
def running(command: list[str], log: Path):
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield process
    finally:
        stop_tree(process.pid, grace=10)


def test_shipped_prometheus_config_and_rules_are_valid():
    done = subprocess.run(["promtool", "check", "config", "prometheus.yml"], cwd=PROMETHEUS_DIR,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 7 rules found" in done.stdout + done.stderr


def test_dashboard_uses_the_provisioned_datasource():
    uid = yaml.safe_load(DATASOURCE.read_text())["datasources"][0]["uid"]
    panels = json.loads(DASHBOARD.read_text())["panels"]
    assert panels and {p["datasource"]["uid"] for p in panels} == {uid}


def shadow_registry(folder: Path) -> str:
    """The shipped registry plus a profile whose all-MiniLM-L6-v2 shadows every request to a twin."""
    registry = yaml.safe_load((ROOT / "models/registry.yaml").read_text())
    registry["models"]["all-MiniLM-L6-v2-twin"] = {**registry["models"]["all-MiniLM-L6-v2"], "aliases": []}
    registry["profiles"]["shadowed"] = {
        "models": ["all-MiniLM-L6-v2"], "runners": registry["profiles"]["cpu"]["runners"],
        "routing": {"all-MiniLM-L6-v2": {"variants": {"a": {}, "b": {"model": "all-MiniLM-L6-v2-twin", "weight": 0}},
                                         "shadow": {"variant": "b", "fraction": 1.0}}}}
    (folder / "registry.yaml").write_text(yaml.safe_dump(registry))
    return str(folder / "registry.yaml")


@pytest.fixture(scope="module")
def shadowed_server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("shadowed")
    env = {"EMBED_REGISTRY": shadow_registry(tmp), "EMBED_PROFILE": "shadowed", "EMBED_API_KEYS": API_KEY}
    with bentoml_server(env, tmp / "serve.log") as url:
        yield url


@pytest.fixture(scope="module")
def prometheus(server, shadowed_server, tmp_path_factory):
    """Prometheus scraping the test server, the shadowed server and the stand-in GPU exporter every
    second, after some traffic; yields its HTTP API base URL once every target has been scraped."""
    tmp = tmp_path_factory.mktemp("prometheus")
    for url in (server, shadowed_server):
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30) as http:
            for body in (
                {"model": "all-MiniLM-L6-v2", "input": ["hello world", "a second text"]},
                {"model": "all-MiniLM-L6-v2", "input": [f"text {i}" for i in range(16)]},  # top-5 overlap
                {"model": "no-such-model", "input": "x"},  # 404
            ):
                http.post("/v1/embeddings", json=body)
                time.sleep(0.5)  # the shadow of each answer runs while no request waits
    gpu_port, prom_port = free_port(), free_port()
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "embedding"]
    job["static_configs"] = [{"targets": [urlparse(server).netloc, urlparse(shadowed_server).netloc]}]
    config["scrape_configs"].append(
        {"job_name": "gpu-stand-in", "static_configs": [{"targets": [f"127.0.0.1:{gpu_port}"]}]}
    )
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    shutil.copy(PROMETHEUS_DIR / "alerts.yml", tmp / "alerts.yml")
    api = f"http://127.0.0.1:{prom_port}/api/v1"
    with (
        running([sys.executable, "-m", "tests.support.fake_nvml", str(gpu_port)], tmp / "fake_nvml.log"),
        running(["prometheus", f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'data'}",
                 f"--web.listen-address=127.0.0.1:{prom_port}"], tmp / "prometheus.log") as process,
    ):
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, (tmp / "prometheus.log").read_text()[-3000:]
            # ValueError: a plain-text "Service Unavailable" while Prometheus starts
            with contextlib.suppress(httpx.HTTPError, ValueError):
                targets = httpx.get(f"{api}/targets", timeout=5).json()["data"]["activeTargets"]
                if len(targets) == 3 and all(t["health"] == "up" for t in targets):
                    break
            assert time.monotonic() < deadline, f"targets not up: {targets}"
            time.sleep(0.5)
        time.sleep(3)  # a few scrapes, so that rate() has two samples
        yield api


def series(api: str, metric: str) -> list[dict[str, str]]:
    answer = httpx.get(f"{api}/series", params={"match[]": f'{{__name__="{metric}"}}'}, timeout=10).json()
    assert answer["status"] == "success", answer
    return answer["data"]


@pytest.mark.parametrize("title, expr", panel_queries())
def test_every_dashboard_query_has_its_metrics_and_labels_in_prometheus(prometheus, title, expr):
    query = expr.replace("$__rate_interval", "1m")
    answer = httpx.get(f"{prometheus}/query", params={"query": query}, timeout=10).json()
    assert answer["status"] == "success", f"{title}: {answer}"
    wanted = labels_used(expr)
    for metric in set(METRIC.findall(expr)):
        found = series(prometheus, metric)
        assert found, f"{title}: no series of {metric} in Prometheus"
        assert any(wanted <= set(s) for s in found), f"{title}: {metric} lacks labels {wanted - set(found[0])}"


def test_the_server_without_gpu_exports_no_gpu_series(prometheus):
    for metric in ("embedding_gpu_memory_used_bytes", "embedding_gpu_utilization_ratio"):
        assert {s["job"] for s in series(prometheus, metric)} == {"gpu-stand-in"}


def test_alert_rules_are_loaded(prometheus):
    groups = httpx.get(f"{prometheus}/rules", timeout=10).json()["data"]["groups"]
    rules = {rule["name"]: rule for group in groups for rule in group["rules"]}
    assert set(rules) >= {"EmbeddingOverloaded", "EmbeddingRunnerNotReady", "EmbeddingGpuMemoryFull",
                          "EmbeddingRoutingNotApplied"}
    assert all(rule["health"] != "err" for rule in rules.values()), rules
