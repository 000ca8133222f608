# The two commands a fresh machine needs: `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.kftune-installed

.PHONY: install demo test test-unit lint

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The CPU torch wheel first: a looser requirement would pull a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[all]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/kftune run

test: $(STAMP)
	$(BIN)/python -m pytest -m "not gpu and not images" -q

test-unit: $(STAMP)
	$(BIN)/python -m pytest -q

# ruff, then pyright (about a minute): no unresolved import of kftune's own modules.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/pyright
