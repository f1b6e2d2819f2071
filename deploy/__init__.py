"""How the platform is installed and run: make serve on a workstation (workstation.py), the OCI
image (image/), Kubernetes (k8s/), compose, Prometheus and Grafana, the smoke test and the process
helpers (processes.py)."""
