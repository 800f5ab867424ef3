# Sluice — two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install node-clients chromium run test lint format bench bench-read bench-codecs wrk clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The real Node SDKs the suite runs (tests/test_sdk_node.py), pinned by the lockfile:
# installed when node_modules is missing or the lockfile is newer than the last install.
NODE_CLIENTS := clients/node
NODE_STAMP   := $(NODE_CLIENTS)/node_modules/.installed

$(NODE_STAMP): $(NODE_CLIENTS)/package-lock.json $(NODE_CLIENTS)/package.json
	@command -v npm >/dev/null || { echo "make test needs node 18+ and npm (apt-get install nodejs npm)"; exit 2; }
	npm ci --prefix $(NODE_CLIENTS) --no-audit --no-fund --loglevel=error
	touch $(NODE_STAMP)

# Debian's Chromium, for the browser SDK tests (tests/test_sdk_browser.py; playwright-core
# drives it: Playwright's own browser download is not used). Installed as `make bench`
# installs wrk: as root with apt-get, if it is missing.
chromium:
	@test -x /usr/bin/chromium || { [ "$$(id -u)" = 0 ] && apt-get install -y -qq chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium); } || { echo "make test needs /usr/bin/chromium: apt-get install chromium"; exit 2; }

node-clients: $(NODE_STAMP)

## make run: install, start `sluice serve` on the embedded stores, print a token + curl
run: install
	LOG_FORMAT=$${LOG_FORMAT:-console} $(BIN)/sluice serve --demo

## make test: lint, format check, then the whole suite (chaos tests included)
test: install node-clients chromium
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -q

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

## make bench: real server + load generator + baseline; writes bench/results/latest.json
## (the read phase included: 10M events seeded over 90 days, stats endpoints, ingest under reads)
bench: install wrk
	$(BIN)/python bench/run.py

## make bench-read: only the read phase (BENCH_READ_EVENTS=1000000 while iterating);
## its figures replace the `read` part of bench/results/latest.json
bench-read: install wrk
	$(BIN)/python bench/read.py

## make bench-codecs: bytes on disk and insert cost of candidate column codecs (migration 0006)
bench-codecs: install
	$(BIN)/python bench/codecs.py

wrk:
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get install -y -qq wrk >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq wrk); } || { echo "make bench needs wrk: apt-get install wrk"; exit 2; }

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache $(NODE_CLIENTS)/node_modules
