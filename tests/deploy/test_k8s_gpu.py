"""deploy/k8s, the GPU parts: the TensorRT engine cache lands on its volume, and the one-card layout
(deploy/k8s/one-gpu: the NVIDIA device plugin's time-slicing config, one replica per GPU runner)
validates against the Kubernetes schemas and fits together: the card is advertised once per GPU
runner pod at full scale, and the patches hit the HPAs they name."""

import re
from pathlib import Path, PurePosixPath

import kubernetes_validate
import yaml

from models.registry import parse_registry
from models.schema import CACHE_PATH_OPTIONS, Engine
from tests.deploy.test_k8s import VERSION, of_kind

ROOT = Path(__file__).resolve().parents[2]
ONE_GPU = ROOT / "deploy/k8s/one-gpu"


def overlay() -> dict:
    return yaml.safe_load((ONE_GPU / "kustomization.yaml").read_text())


def one_gpu_hpas() -> dict[str, dict]:
    """The base's HPAs with the overlay's JSON patches applied (as kustomize would)."""
    hpas = of_kind("HorizontalPodAutoscaler")
    for patch in overlay()["patches"]:
        target = patch["target"]
        named = [name for name in hpas if re.fullmatch(target["name"], name)]
        assert target["kind"] == "HorizontalPodAutoscaler" and named, target
        for name in named:
            for op in yaml.safe_load(patch["patch"]):
                assert op["op"] == "replace"
                *parents, key = op["path"].strip("/").split("/")
                node = hpas[name]
                for part in parents:
                    node = node[part]
                assert key in node, f"{name}: no {op['path']} to replace"
                node[key] = op["value"]
    return hpas


def test_tensorrt_caches_resolve_onto_the_ort_runners_volume():
    settings = of_kind("ConfigMap")["embedding-settings"]["data"]
    cache_dir = PurePosixPath(settings["EMBED_CACHE_DIR"])
    pod = of_kind("Deployment")["embedding-ort-runner"]["spec"]["template"]["spec"]
    mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
    volume = next(v for v in pod["volumes"] if v["name"] == "trt-cache")
    assert "persistentVolumeClaim" in volume  # engines survive a restart (an emptyDir would not)
    mount = PurePosixPath(mounts["trt-cache"]["mountPath"])
    registry = parse_registry(of_kind("ConfigMap")["embedding-registry"]["data"]["registry.yaml"])
    folders = [cache_dir / option[key] for spec in registry.served(settings["EMBED_PROFILE"]).for_engine(Engine.ORT)
               for provider in spec.ort.providers if provider.name == "tensorrt"
               for option in [provider.options] for key in CACHE_PATH_OPTIONS if key in option]
    assert folders and all(folder.is_relative_to(mount) for folder in folders), (folders, mount)


def test_one_gpu_overlay_validates_and_lists_its_files():
    kustomization = overlay()
    assert kustomization["resources"][0] == ".."
    listed = set(kustomization["resources"][1:])
    assert listed == {p.name for p in ONE_GPU.glob("*.yaml")} - {"kustomization.yaml"}
    for name in listed:
        for doc in yaml.safe_load_all((ONE_GPU / name).read_text()):
            kubernetes_validate.validate(doc, VERSION, strict=True)
    for hpa in one_gpu_hpas().values():
        kubernetes_validate.validate(hpa, VERSION, strict=True)


def test_the_card_is_advertised_once_per_gpu_runner_pod_at_full_scale():
    (sharing,) = yaml.safe_load_all((ONE_GPU / "time-slicing.yaml").read_text())
    config = yaml.safe_load(sharing["data"]["any"])
    assert config["version"] == "v1"
    slicing = config["sharing"]["timeSlicing"]
    assert slicing["failRequestsGreaterThanOne"] is True
    (resource,) = slicing["resources"]
    assert resource["name"] == "nvidia.com/gpu"
    hpas = {hpa["spec"]["scaleTargetRef"]["name"]: hpa for hpa in one_gpu_hpas().values()}
    gpu_pods = 0
    for name, deployment in of_kind("Deployment").items():
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        gpus = container["resources"]["limits"].get("nvidia.com/gpu", 0)
        if gpus:
            replicas = hpas[name]["spec"]["maxReplicas"] if name in hpas else deployment["spec"]["replicas"]
            assert replicas == 1, f"{name}: one card holds one replica of each runner (the memory plan)"
            gpu_pods += replicas * gpus
    assert resource["replicas"] == gpu_pods == 2


def test_runner_pods_are_sized_from_the_memory_plan():
    """Memory requests and limits and startup probes equal what the memory plan computes for the profile
    the manifests serve (`python -m models.memory_plan --k8s`): a plan change that is not carried into
    the manifests fails here."""
    from models.memory_plan import GIB, K8S_PROBE_PERIOD_S, VLLM_SHM_BYTES, kubernetes, plan

    settings = of_kind("ConfigMap")["embedding-settings"]["data"]
    registry = parse_registry(of_kind("ConfigMap")["embedding-registry"]["data"]["registry.yaml"])
    sizes = kubernetes(plan(settings["EMBED_PROFILE"], registry))
    assert set(sizes) == {Engine.ORT, Engine.VLLM}
    for engine, size in sizes.items():
        pod = of_kind("Deployment")[f"embedding-{engine.value}-runner"]["spec"]["template"]["spec"]
        (runner,) = pod["containers"]
        assert runner["resources"]["requests"]["memory"] == runner["resources"]["limits"]["memory"] == size.memory
        probe = runner["startupProbe"]
        assert probe["periodSeconds"] == K8S_PROBE_PERIOD_S
        assert probe["failureThreshold"] == size.startup_failure_threshold
        init = pod.get("initContainers", [])
        if size.build_memory is None:
            assert init == [], engine
            continue
        (build,) = init
        assert build["resources"]["requests"]["memory"] == build["resources"]["limits"]["memory"] == size.build_memory
    shm = next(v for v in of_kind("Deployment")["embedding-vllm-runner"]["spec"]["template"]["spec"]["volumes"]
               if v["name"] == "shm")
    assert shm["emptyDir"]["sizeLimit"] == f"{VLLM_SHM_BYTES // GIB}Gi"  # the plan counts all of it
    ort = sizes[Engine.ORT]
    assert ort.memory == "19Gi" and ort.build_memory == "23Gi"  # the fp32 graphs did not fit the old 16Gi


def test_tensorrt_engines_are_built_by_an_init_container_on_the_cache_volume_not_while_serving():
    settings = of_kind("ConfigMap")["embedding-settings"]["data"]
    assert settings["EMBED_BUILD_ENGINES"] == "0"  # the entrypoint leaves it to the init container
    pod = of_kind("Deployment")["embedding-ort-runner"]["spec"]["template"]["spec"]
    (build,) = pod["initContainers"]
    (runner,) = pod["containers"]
    assert build["image"] == runner["image"]
    assert build["args"] == ["python", "-m", "runners.ort.preflight", "--build"]
    assert build["workingDir"] == "/home/bentoml/bento/src"
    assert build["resources"]["limits"]["nvidia.com/gpu"] == 1  # TensorRT builds for the GPU it runs on
    assert build["envFrom"] == runner["envFrom"]
    mounts = {m["name"]: m["mountPath"] for m in build["volumeMounts"]}
    assert mounts == {m["name"]: m["mountPath"] for m in runner["volumeMounts"]}
    assert "startupProbe" not in build and "livenessProbe" not in build  # nothing times the build out
