# The README's two commands are `make run` and `make test`; CI runs `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NODE_DIR := tests/js
NODE_STAMP := $(NODE_DIR)/node_modules/.installed
# The benchmarks' peer servers (PostGraphile v4 and v5, and the Node 22 they run on).
PEERS := bench/peers
PEERS_STAMP := $(PEERS)/node_modules/.installed

.PHONY: install peers run test lint typecheck check bench schema constraints clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# The browser and JS-client tests run from tests/js; npm ci installs its lockfile exactly.
$(NODE_STAMP): $(NODE_DIR)/package-lock.json
	npm ci --prefix $(NODE_DIR) --no-audit --no-fund
	touch $(NODE_STAMP)

$(PEERS_STAMP): $(PEERS)/package.json $(PEERS)/package-lock.json
	npm ci --prefix $(PEERS) --no-audit --no-fund
	touch $(PEERS_STAMP)

install: $(STAMP)

peers: $(PEERS_STAMP)

run: $(STAMP)
	$(BIN)/blueline serve

# The bench smoke test runs the peers too, and fails without them.
test: $(STAMP) $(NODE_STAMP) $(PEERS_STAMP)
	$(BIN)/ruff check src tests $(wildcard bench)
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache
	$(BIN)/pytest -n 2 --dist worksteal

lint: $(STAMP)
	$(BIN)/ruff check src tests $(wildcard bench)
	$(BIN)/ruff format --check src tests $(wildcard bench)

typecheck: $(STAMP)
	$(BIN)/mypy

schema: $(STAMP)
	$(BIN)/blueline schema --output schema.graphql

bench: $(STAMP) $(PEERS_STAMP)
	$(BIN)/python -m bench

# Newest releases the pyproject ranges allow, resolved in a scratch venv; run the suite
# before committing the result.
constraints:
	rm -rf .constraints-venv
	$(PYTHON) -m venv .constraints-venv
	.constraints-venv/bin/pip install --quiet --upgrade pip
	.constraints-venv/bin/pip install --quiet -e '.[dev]'
	{ sed -n '1,2p' constraints.txt; .constraints-venv/bin/pip freeze --exclude-editable; } \
		> constraints.txt.new
	mv constraints.txt.new constraints.txt
	rm -rf .constraints-venv

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache blueline.db .blueline-keyring \
		$(NODE_DIR)/node_modules $(PEERS)/node_modules
