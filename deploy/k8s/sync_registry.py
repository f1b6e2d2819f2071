"""Copy models/registry.yaml into the registry ConfigMap (deploy/k8s/registry.yaml): `make k8s-registry`."""

from pathlib import Path

K8S = Path(__file__).resolve().parent
MARK = "  registry.yaml: |\n"

configmap = K8S / "registry.yaml"
head = configmap.read_text().split(MARK)[0]
source = (K8S.parent.parent / "models/registry.yaml").read_text()
configmap.write_text(head + MARK + "".join("    " + line if line.strip() else "\n" for line in source.splitlines(True)))
