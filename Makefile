# Every target sets up what it needs: a virtual environment with torch installed first
# (the local CPU build, so no CUDA wheels are pulled), then prefloop and its test tools.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install chromium postgresql demo demo-tiny test test-all lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[dev,app]"
	touch $(STAMP)

# Browser tests drive Debian's chromium through Playwright (Playwright's own browser download cannot work
# offline). Installed here when missing and when we may (root); otherwise those tests skip with a message.
chromium:
	@command -v chromium >/dev/null 2>&1 || [ "$$(id -u)" != 0 ] || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || \
		echo "warning: could not install chromium; browser tests will skip"

# The feedback app's tests also run against a throwaway PostgreSQL server on loopback (started by the tests
# from Debian's postgresql binaries, as the `postgres` user when run as root). Installed here when missing and
# when we may (root); otherwise those tests skip with a message.
postgresql:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || [ "$$(id -u)" != 0 ] || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) || \
		echo "warning: could not install postgresql; the PostgreSQL tests will skip"

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/prefloop demo --out runs/demo

demo-tiny: $(STAMP)
	$(VENV)/bin/prefloop demo --preset tiny --out runs/demo-tiny

test: $(STAMP) chromium postgresql
	$(PY) -m pytest -q -m "not slow"

test-all: $(STAMP) chromium postgresql
	$(PY) -m pytest -q

# ruff, then the layer contracts of .importlinter (lint-imports): bottom up, errors -> rl (torch only) -> data ->
# models -> rollout -> runtime -> world -> feedback -> eval -> recipes -> cli; each imports only those below it,
# no package has an import cycle, and the feedback app never loads torch, models or recipes (docs/DESIGN.md).
lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	PYTHONPATH=src $(VENV)/bin/lint-imports

bench: $(STAMP)
	$(PY) -m pip install -q -e ".[dev,bench]"
	$(PY) benchmarks/run.py

clean:
	rm -rf $(VENV) runs build *.egg-info
