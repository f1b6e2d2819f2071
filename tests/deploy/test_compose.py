"""deploy/compose/docker-compose.yml, read by podman-compose's own parser (`podman-compose --dry-run
config`: no podman needed) and validated against the Compose Specification's schema, fits the rest
of deploy/: Prometheus scrapes the platform's service and port, every mounted folder exists with
what Prometheus and Grafana read from it, Grafana is in its own profile (Docker Hub only), and the
pieces `make compose-up` adds (the Prometheus image recipe, the podman settings,
deploy/compose/podman.sh) agree with it. The stack itself runs in `make compose-test` (it needs the
image, which CI does not build)."""

from __future__ import annotations

import os
import re
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "deploy/compose/docker-compose.yml"
PODMAN_COMPOSE = ROOT / ".venv/bin/podman-compose"


def config(*args: str, env: dict[str, str] | None = None) -> dict:
    """The compose file as podman-compose resolves it (variables, profiles, depends_on)."""
    done = subprocess.run([str(PODMAN_COMPOSE), "--dry-run", "-f", str(COMPOSE), *args, "config"],
                          capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    return yaml.safe_load(done.stdout)


@pytest.fixture(scope="module")
def services() -> dict:
    return config("--profile", "grafana")["services"]


def test_podman_compose_parses_it_and_grafana_is_a_profile(services):
    assert set(services) == {"embedding", "prometheus", "grafana"}
    assert set(config()["services"]) == {"embedding", "prometheus"}  # what runs without Docker Hub


def test_compose_file_validates_against_the_compose_spec():
    """The Compose Specification's schema, as check-jsonschema ships it (offline)."""
    done = subprocess.run([str(ROOT / ".venv/bin/check-jsonschema"), "--builtin-schema", "vendor.compose-spec",
                           str(COMPOSE)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_compose_wires_the_platform_prometheus_and_grafana(services):
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
    assert host == "embedding" and services["embedding"]["ports"] == [f"3000:{port}"]
    assert services["embedding"]["command"][:3] == ["serve", "--port", port]
    assert services["prometheus"]["depends_on"] == {"embedding": {"condition": "service_started"}}

    datasource = yaml.safe_load((mounts["/etc/grafana/provisioning"] / "datasources/prometheus.yml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    assert services["prometheus"]["ports"] == ["9090:9090"]
    dashboards = yaml.safe_load((mounts["/etc/grafana/provisioning"] / "dashboards/embedding.yml").read_text())
    assert dashboards["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"


def test_images_and_ports_are_settable_as_podman_sh_sets_them():
    env = {**os.environ, "EMBEDDING_PORT": "3917", "PROMETHEUS_PORT": "19090",
           "PROMETHEUS_IMAGE": "localhost/embedding-platform-prometheus:bookworm"}
    services = config(env=env)["services"]
    assert services["embedding"]["ports"] == ["3917:3000"]
    assert services["prometheus"]["ports"] == ["19090:9090"]
    assert services["prometheus"]["image"] == "localhost/embedding-platform-prometheus:bookworm"
    script = (ROOT / "deploy/compose/podman.sh").read_text()
    assert "PROMETHEUS_IMAGE=${PROMETHEUS_IMAGE:-localhost/embedding-platform-prometheus:bookworm}" in script
    assert subprocess.run(["bash", "-n", str(ROOT / "deploy/compose/podman.sh")]).returncode == 0


def test_the_debian_prometheus_image_takes_the_compose_command(services):
    """deploy/compose/prometheus/Containerfile: prometheus is the entrypoint (the compose command
    is its flags, as with prom/prometheus), its data folder is the volume's mount point."""
    recipe = (ROOT / "deploy/compose/prometheus/Containerfile").read_text()
    assert re.search(r'^ENTRYPOINT \["/usr/bin/prometheus"\]$', recipe, re.M)
    assert "apt-get install -y -q --no-install-recommends prometheus" in recipe
    command = services["prometheus"]["command"]
    assert all(flag.startswith("--") for flag in command)
    assert "--storage.tsdb.path=/prometheus" in command
    assert "prometheus-data:/prometheus" in services["prometheus"]["volumes"]
    assert "/prometheus" in re.search(r"^WORKDIR (\S+)$", recipe, re.M).group(1)


def test_podman_settings_get_past_this_machines_refusals():
    """Each setting answers an error measured here (README, "Compose"): ulimits under the hard
    limits a process without CAP_SYS_RESOURCE cannot raise, runc (crun refuses hybrid cgroups)."""
    settings = tomllib.loads((ROOT / "deploy/compose/podman/containers.conf").read_text())
    ulimits = dict(u.split("=") for u in settings["containers"]["default_ulimits"])
    assert set(ulimits) == {"nofile", "nproc"}
    assert all(int(soft) <= int(hard) <= 16384 for soft, hard in (v.split(":") for v in ulimits.values()))
    assert settings["engine"]["runtime"] == "runc"
