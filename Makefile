# Homeport: `make run` starts the platform, `make test` runs the suite.
# Both install what is missing first (Debian packages, then a .venv) and are quick when it is there.

SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | sha256sum | cut -c1-12)
DATA  ?= .homeport
TEST_WORKERS ?= 4  # on 2 cores: the tests wait on servers part of the time (clean clone: 850 s with 4, 952 s with 3, 1,100-1,230 s with 2)

DASH  := services/gateway/dashboard
DASH_SRC := $(shell find $(DASH)/src $(DASH)/static -type f 2>/dev/null) $(DASH)/index.html $(DASH)/build.mjs

.PHONY: run test lint bench deps system clean dashboard

run: deps dashboard
	$(VENV)/bin/homeport up --data-dir $(DATA)

test: deps dashboard
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup --durations=60 $(PYTEST_ARGS)

lint: deps
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy libs services cli deploy bench

bench: deps
	$(PY) -m bench

deps: system $(STAMP)

system:
	@bash deploy/install-system-deps.sh

$(STAMP):
	@test -x $(PY) || python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev]'
	@rm -f $(VENV)/.installed-* && touch $@

# The dashboard: npm packages exactly as package-lock.json pins them, then one esbuild bundle.
dashboard: system $(DASH)/dist/index.html

$(DASH)/node_modules/.package-lock.json: $(DASH)/package-lock.json
	cd $(DASH) && npm ci --no-audit --no-fund --loglevel=error

$(DASH)/dist/index.html: $(DASH)/node_modules/.package-lock.json $(DASH_SRC)
	cd $(DASH) && node build.mjs

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache $(DASH)/node_modules $(DASH)/dist
