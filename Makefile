# One command to set up and run the main job, one to set up and run the tests.
# torch is pinned to 2.13.0: on these machines that takes the local CPU wheel; a range
# that admits a newer release pulls gigabytes of CUDA packages.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The tests' Triton server runs in its own environment: its Python backend stub needs numpy < 2.
TRITON_VENV ?= .venv-triton

.PHONY: setup demo test lint triton-venv

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0 -e ".[build,trt,dali,bench,serve,dev]"
	touch $@

triton-venv: $(TRITON_VENV)/.installed

$(TRITON_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/pip install --quiet --upgrade pip
	$(TRITON_VENV)/bin/pip install --quiet -e ".[triton-server]"
	touch $@

# The bundled checkpoint and sample clip ship inside the package (mirasol_edge/assets).
demo: setup
	$(BIN)/mirasol-build --recipe cpu --out engines/tiny-synthetic-cpu
	$(BIN)/mirasol-run --sample --engines engines/tiny-synthetic-cpu
	$(BIN)/mirasol-build --recipe rtx --out engines/tiny-synthetic-rtx

# ruff (lint, import order) and vermin (nothing newer than Python 3.10, JetPack 6's) before the tests.
lint: setup
	$(BIN)/ruff check src tests bench
	$(BIN)/vermin --target=3.10- --violations --no-tips --eval-annotations src tests bench

# The Triton tests must run here (MIRASOL_REQUIRE_TRITON): a missing server fails them instead of skipping.
test: lint triton-venv
	MIRASOL_TRITON_PYTHON=$(TRITON_VENV)/bin/python MIRASOL_REQUIRE_TRITON=1 $(BIN)/python -m pytest -q
