# The two commands a fresh machine needs: `make demo` and `make test` (see README.md).
# kftune is installed editable by default. KFTUNE_INSTALL=wheel (as .ci/run sets it) builds the
# wheel and installs it, with its extras [all], instead: what users install is what is tested.
PYTHON ?= python3
VENV ?= .venv
KFTUNE_INSTALL ?= editable
BIN := $(VENV)/bin
STAMP := $(VENV)/.kftune-installed
WHEEL_STAMP := $(VENV)/.kftune-wheel
# What the wheel is built from: a change (or a new or deleted module) rebuilds it.
PACKAGE_SOURCES := pyproject.toml setup.py __init__.py \
	$(shell find components pipelines -name __pycache__ -prune -o \( -type d -o -name '*.py' \) -print)

.PHONY: install demo test test-unit test-local lint

$(STAMP): pyproject.toml
	@echo "kftune: installing into $(VENV): CPU torch, then kftune and its extras (a few minutes, once)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The CPU torch wheel first: a looser requirement would pull a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[all]'
	touch $(STAMP)

# kftune from its wheel, built afresh (build/ would keep a deleted module), not from the tree.
$(WHEEL_STAMP): $(STAMP) $(PACKAGE_SOURCES)
	rm -rf build .whl
	$(BIN)/pip wheel -q --no-deps -w .whl .
	$(BIN)/pip uninstall -q -y kftune
	$(BIN)/pip install -q "$$(ls .whl/kftune-*.whl)[all]"
	touch $(WHEEL_STAMP)

ifeq ($(KFTUNE_INSTALL),wheel)
install: $(WHEEL_STAMP)
else ifeq ($(KFTUNE_INSTALL),editable)
install: $(STAMP)
	@if [ -e $(WHEEL_STAMP) ]; then \
		echo "kftune: back from the wheel to the editable install"; \
		$(BIN)/pip install -q --no-deps -e . && rm $(WHEEL_STAMP); fi
else
$(error KFTUNE_INSTALL must be editable or wheel, got '$(KFTUNE_INSTALL)')
endif

demo: install
	$(BIN)/kftune run

# The unit tier, then the local tier (kfp.local end to end, torchrun on CPU); not gpu, not images.
test: test-unit test-local

# pytest-xdist: one worker per core (at most 4), whole files to a worker, in the order collected;
# the local tier with -v (each test named as it ends); both list their slowest tests at the end.
XDIST := -n auto --maxprocesses 4 --dist loadfile --no-loadscope-reorder

test-unit: install
	$(BIN)/python -m pytest $(XDIST) --durations=10

test-local: install
	$(BIN)/python -m pytest -m "local and not gpu and not images" $(XDIST) -v --durations=20

# ruff, then pyright (about a minute): no unresolved import of kftune's own modules.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/pyright
