# make serve / make test set themselves up: a .venv with the project and its extras.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
SOURCES := service client tests bench scripts examples

.PHONY: serve test lint format openapi check-openapi sync-clients container-test clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[server,postgres,dev]"
	@touch $(STAMP)

serve: $(STAMP)
	$(BIN)/runstore serve

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

.typecheck: | $(STAMP)
	@mkdir -p .typecheck/runstore
	@ln -sfn ../../service .typecheck/runstore/service
	@ln -sfn ../../client .typecheck/runstore/client

lint: $(STAMP) .typecheck
	$(BIN)/ruff check $(SOURCES)
	$(BIN)/ruff format --check $(SOURCES)
	$(BIN)/mypy
	$(BIN)/python scripts/generate_sync.py --check

format: $(STAMP)
	$(BIN)/ruff format $(SOURCES)
	$(BIN)/ruff check --fix $(SOURCES)

# The blocking client and hooks, generated from the async ones (see scripts/generate_sync.py).
sync-clients: $(STAMP)
	$(BIN)/python scripts/generate_sync.py

openapi: $(STAMP)
	$(BIN)/python scripts/generate_openapi.py

# Builds the Dockerfile with buildah and runs the image (root; see scripts/container-test).
container-test:
	scripts/container-test

clean:
	rm -rf $(VENV) .typecheck .pytest_cache .mypy_cache .ruff_cache build *.egg-info
