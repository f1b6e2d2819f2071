"""Copy models/registry.yaml and its lock (models/registry.lock) into the registry ConfigMap
(deploy/k8s/registry.yaml): `make k8s-registry`."""

from pathlib import Path

K8S = Path(__file__).resolve().parent
MODELS = K8S.parent.parent / "models"
MARK = "  registry.yaml: |\n"


def block(key: str, text: str) -> str:
    return f"  {key}: |\n" + "".join("    " + line if line.strip() else "\n" for line in text.splitlines(True))


configmap = K8S / "registry.yaml"
head = configmap.read_text().split(MARK)[0]
configmap.write_text(head + block("registry.yaml", (MODELS / "registry.yaml").read_text())
                     + block("registry.lock", (MODELS / "registry.lock").read_text()))
