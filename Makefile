# One command each on a fresh machine with Python 3.11+: `make run`, `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: run test install test-deps bench-ingest bench-worker bench-gateway simulate clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/attune run

# Debian's chromium for the dashboard's browser tests (apt-get as root; never a browser download).
test-deps:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian's chromium for the browser tests"; \
	    DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium is missing: run 'sudo apt-get install -y chromium'"; exit 1; fi; }

test: $(STAMP) test-deps
	$(PY) -m pytest $(PYTEST_ARGS)

bench-ingest: $(STAMP)
	$(PY) bench/ingest.py

bench-worker: $(STAMP)
	$(PY) bench/worker.py

bench-gateway: $(STAMP)
	$(PY) bench/gateway.py

simulate: $(STAMP)
	$(PY) bench/simulate.py

clean:
	rm -rf $(VENV) var test-artifacts
