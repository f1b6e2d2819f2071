"""deploy/compose/docker-compose.yml fits the rest of deploy/ (no Docker engine runs here, so the
file is checked for what it refers to): Prometheus scrapes the platform's service and port,
and every mounted folder exists with what Prometheus and Grafana read from it."""

from pathlib import Path

import yaml

COMPOSE = Path(__file__).resolve().parent.parent / "deploy/compose/docker-compose.yml"


def test_compose_wires_the_platform_prometheus_and_grafana():
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    assert set(services) == {"embedding", "prometheus", "grafana"}
    mounts = {
        target: (COMPOSE.parent / source).resolve()
        for service in services.values()
        for source, target, *_ in (v.split(":") for v in service.get("volumes", []))
        if source.startswith(".")
    }
    assert (mounts["/etc/prometheus"] / "prometheus.yml").is_file()
    assert (mounts["/etc/prometheus"] / "alerts.yml").is_file()
    assert (mounts["/etc/grafana/provisioning"] / "datasources/prometheus.yml").is_file()
    assert (mounts["/var/lib/grafana/dashboards"] / "embedding.json").is_file()

    prometheus = yaml.safe_load((mounts["/etc/prometheus"] / "prometheus.yml").read_text())
    (job,) = [j for j in prometheus["scrape_configs"] if j["job_name"] == "embedding"]
    host, port = job["static_configs"][0]["targets"][0].split(":")
    assert host == "embedding" and f"{port}:{port}" in services["embedding"]["ports"][0]
    assert services["embedding"]["command"][:3] == ["serve", "--port", port]

    datasource = yaml.safe_load((mounts["/etc/grafana/provisioning"] / "datasources/prometheus.yml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    dashboards = yaml.safe_load((mounts["/etc/grafana/provisioning"] / "dashboards/embedding.yml").read_text())
    assert dashboards["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
