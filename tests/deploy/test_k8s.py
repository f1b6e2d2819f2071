"""deploy/k8s: every manifest validates against the Kubernetes 1.37 schemas (kubernetes-validate,
strict: unknown fields fail), and the pieces fit together: each Deployment runs one BentoML
service of this repository with probes and limits, runners ask for a GPU on GPU nodes, the
gateway's runner URLs name Services that exist, HPAs scale existing Deployments, every volume's
claim exists, the registry ConfigMap equals models/registry.yaml and its lock, and the gateway
replicas share a routing file on a ReadWriteMany volume."""

import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from models.registry import parse_registry
from models.schema import Engine
from models.topology import url_variable

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy/k8s"
VERSION = "1.37.0"


def documents() -> list[dict]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    return [doc for name in kustomization["resources"] for doc in yaml.safe_load_all((K8S / name).read_text()) if doc]


def of_kind(kind: str) -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc for doc in documents() if doc["kind"] == kind}


def test_kustomization_lists_every_manifest():
    listed = set(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"])
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}


@pytest.mark.parametrize("doc", documents(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_manifest_validates_against_the_kubernetes_schema(doc):
    kubernetes_validate.validate(doc, VERSION, strict=True)


def test_the_validator_rejects_a_broken_deployment():
    broken = of_kind("Deployment")["embedding-gateway"]
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["pathh"] = "/readyz"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSION, strict=True)


@pytest.mark.parametrize("name", sorted(of_kind("Deployment")))
def test_each_deployment_runs_one_service_with_probes_limits_and_the_store(name):
    pod = of_kind("Deployment")[name]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    args = container["args"]
    assert args[:2] == ["bentoml", "serve"] and args[args.index("--working-dir") + 1] == "/home/bentoml/bento/src"
    module, _, cls = args[2].partition(":")
    source = ROOT / (module.replace(".", "/") + ".py")
    assert source.is_file(), f"{name}: no module {module}"
    # read, not imported: importing a service module starts BentoML machinery here
    assert re.search(rf"^class {cls}\b", source.read_text(), re.M), f"{name}: no class {cls} in {module}"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert {"cpu", "memory"} <= set(container["resources"]["limits"])
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["store"]["mountPath"] == "/var/lib/embedding/models" and mounts["store"]["readOnly"]
    assert mounts["registry"]["mountPath"] == "/etc/embedding"
    claims = {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
    assert claims <= set(of_kind("PersistentVolumeClaim"))
    if "runner" in name:
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert pod["nodeSelector"] and pod["tolerations"]
        assert "startupProbe" in container


def test_settings_point_the_gateway_at_the_runner_services():
    settings = of_kind("ConfigMap")["embedding-settings"]["data"]
    services = of_kind("Service")
    for engine in Engine:
        url = settings[url_variable(engine)]
        host, port = url.removeprefix("http://").split(":")
        assert host in services, f"{url_variable(engine)}: no Service {host}"
        assert int(port) in [p["port"] for p in services[host]["spec"]["ports"]]
    assert settings["BENTOML_HOME"] == "/var/lib/embedding"
    assert settings["EMBED_REGISTRY"] == "/etc/embedding/registry.yaml"
    assert settings["BENTOML_CONFIG_OPTIONS"] == "services.gateway.runner_probe.enabled=false"


def test_hpas_scale_runner_deployments_on_queue_wait():
    deployments = of_kind("Deployment")
    hpas = of_kind("HorizontalPodAutoscaler")
    assert set(hpas) == {name for name in deployments if "runner" in name}
    for hpa in hpas.values():
        assert hpa["spec"]["scaleTargetRef"]["name"] in deployments
        metrics = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
        assert metrics == ["embedding_queue_wait_seconds_mean"]
    adapter = of_kind("ConfigMap")["embedding-prometheus-adapter"]["data"]["config.yaml"]
    assert 'as: "embedding_queue_wait_seconds_mean"' in adapter


def test_registry_configmap_is_models_registry_yaml_and_its_lock():
    data = of_kind("ConfigMap")["embedding-registry"]["data"]
    assert data["registry.yaml"] == (ROOT / "models/registry.yaml").read_text(), "copy it: make k8s-registry"
    assert data["registry.lock"] == (ROOT / "models/registry.lock").read_text(), "copy it: make k8s-registry"
    settings = of_kind("ConfigMap")["embedding-settings"]["data"]
    assert settings["EMBED_REGISTRY"] == "/etc/embedding/registry.yaml"  # the lock is read beside it
    assert parse_registry(data["registry.yaml"], lock=data["registry.lock"]).served(settings["EMBED_PROFILE"]).models


def test_gateway_replicas_share_their_routing_file_on_a_read_write_many_volume():
    deployment = of_kind("Deployment")["embedding-gateway"]
    assert deployment["spec"]["replicas"] > 1
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e for e in container["env"]}
    path = env["EMBED_ROUTING_FILE"]["value"]
    (mount,) = [m for m in container["volumeMounts"] if path.startswith(m["mountPath"] + "/")]
    assert not mount.get("readOnly")
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    claim = of_kind("PersistentVolumeClaim")[volume["persistentVolumeClaim"]["claimName"]]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert env["EMBED_ADMIN_API_KEYS"]["valueFrom"]["secretKeyRef"]["optional"] is True  # else the API keys
    for name, other in of_kind("Deployment").items():  # runners never see routing: jobs name their variant
        if name != "embedding-gateway":
            assert "EMBED_ROUTING_FILE" not in {e["name"] for e in other["spec"]["template"]["spec"]["containers"][0]
                                                .get("env", [])}


def test_only_the_gateway_reaches_the_runners_api():
    (policy,) = of_kind("NetworkPolicy").values()
    runner_labels = policy["spec"]["podSelector"]["matchLabels"]
    labels = {name: d["spec"]["template"]["metadata"]["labels"].items() for name, d in of_kind("Deployment").items()}
    assert {name for name in labels if runner_labels.items() <= labels[name]} == {n for n in labels if "runner" in n}
    api_rule, metrics_rule = policy["spec"]["ingress"]
    (gateway_peer,) = api_rule["from"]
    allowed = {name for name in labels if gateway_peer["podSelector"]["matchLabels"].items() <= labels[name]}
    assert allowed == {"embedding-gateway"} and api_rule["ports"] == [{"port": "http", "protocol": "TCP"}]
    assert metrics_rule["ports"] == [{"port": "metrics", "protocol": "TCP"}]


def test_stopping_pods_finish_their_work():
    """preStop on every pod; the runners' outlasts a gateway's whole stop (its preStop, drain and
    request timeout), and each grace period outlasts its preStop plus the request it may finish."""
    served = parse_registry(of_kind("ConfigMap")["embedding-registry"]["data"]["registry.yaml"]).served(
        of_kind("ConfigMap")["embedding-settings"]["data"]["EMBED_PROFILE"])
    pods = {name: d["spec"]["template"]["spec"] for name, d in of_kind("Deployment").items()}
    pre_stop = {name: pod["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"] for name, pod in pods.items()}
    gateway_stop = pre_stop["embedding-gateway"] + served.server.drain_s + served.request_timeout_s
    assert pods["embedding-gateway"]["terminationGracePeriodSeconds"] > gateway_stop
    for name in pods:
        if "runner" in name:
            assert pre_stop[name] > gateway_stop
            slowest_call = max(r.timeout_s for r in served.runners.values())
            assert pods[name]["terminationGracePeriodSeconds"] > pre_stop[name] + slowest_call


def test_the_gateway_fails_closed_without_its_keys():
    settings = of_kind("ConfigMap")["embedding-settings"]["data"]
    assert settings["EMBED_REQUIRE_API_KEYS"] == "1"
    (container,) = of_kind("Deployment")["embedding-gateway"]["spec"]["template"]["spec"]["containers"]
    (keys,) = [e for e in container["env"] if e["name"] == "EMBED_API_KEYS"]
    assert keys["valueFrom"]["secretKeyRef"].get("optional", False) is False


def test_prometheus_scrapes_the_metrics_port():
    port = int(of_kind("ConfigMap")["embedding-settings"]["data"]["EMBED_METRICS_PORT"])
    for name, deployment in of_kind("Deployment").items():
        template = deployment["spec"]["template"]
        (container,) = template["spec"]["containers"]
        assert int(template["metadata"]["annotations"]["prometheus.io/port"]) == port, name
        assert {"name": "metrics", "containerPort": port} in container["ports"], name
