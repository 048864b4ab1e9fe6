# make serve / make test set themselves up: a .venv with the project and its extras.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
SOURCES := service client tests bench scripts examples

.PHONY: serve test test-ts lint format openapi check-openapi sync-clients container-test clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[server,postgres,dev]"
	@touch $(STAMP)

serve: $(STAMP)
	$(BIN)/runstore serve

# TS_TESTS: auto runs the TypeScript client's tests when Node 20+ and npm are here and says why
# it skips them otherwise; required (as .ci/run sets it) fails without them; off skips them.
TS_TESTS ?= auto

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)
	@if [ "$(TS_TESTS)" = off ]; then exit 0; fi; \
	if command -v npm >/dev/null && node -e 'process.exit(parseInt(process.versions.node) >= 20 ? 0 : 1)' 2>/dev/null; then \
		$(MAKE) --no-print-directory test-ts; \
	elif [ "$(TS_TESTS)" = required ]; then \
		echo "typescript/ tests need Node 20+ and npm"; exit 1; \
	else \
		echo "SKIPPED typescript/ tests: Node 20+ and npm are not here (make test-ts runs them)"; \
	fi

# The TypeScript client (typescript/): its locked dev dependencies, generated types checked
# against openapi.json, a strict build, and node:test against a real runstore serve.
test-ts: $(STAMP)
	cd typescript && npm ci --no-audit --no-fund && npm test

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

# Also the TypeScript client's wire types (typescript/src/openapi.ts), once its dev tools are in.
openapi: $(STAMP)
	$(BIN)/python scripts/generate_openapi.py
	@if [ -x typescript/node_modules/.bin/openapi-typescript ]; then \
		cd typescript && npm run --silent generate; \
	else \
		echo "typescript/src/openapi.ts not regenerated: make test-ts once (npm ci), then again"; \
	fi

# Builds the Dockerfile with buildah and runs the image (root; see scripts/container-test).
container-test:
	scripts/container-test

clean:
	rm -rf $(VENV) .typecheck .pytest_cache .mypy_cache .ruff_cache build *.egg-info
	rm -rf typescript/node_modules typescript/dist
