# Two commands do everything on a fresh machine: `make serve` and `make test` (see README.md).
# Each creates .venv if missing, installs the pinned requirements when they changed, and imports
# the profile's models into the Bento model store when they are not there yet.

PYTHON  ?= python3
VENV    := .venv
PY      := $(VENV)/bin/python
PORT    ?= 3000
PROFILE ?= $(or $(EMBED_PROFILE),cpu)
export EMBED_PROFILE := $(PROFILE)

.PHONY: serve test setup models build clean lock openapi

serve: models
	$(VENV)/bin/bentoml serve service:Gateway --port $(PORT)

test: models
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
