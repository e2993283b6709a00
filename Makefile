# One command to set up and run the main job, one to set up and run the tests.
# torch is pinned to 2.13.0: on these machines that takes the local CPU wheel; a range
# that admits a newer release pulls gigabytes of CUDA packages.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0 -e ".[build,trt,dali,bench,dev]"
	touch $@

demo: setup
	$(BIN)/mirasol-build --recipe cpu --checkpoint models/tiny-synthetic.safetensors --out engines/tiny-synthetic-cpu
	$(BIN)/mirasol-run samples/sample.mp4 --engines engines/tiny-synthetic-cpu --questions samples/sample.json
	$(BIN)/mirasol-build --recipe rtx --checkpoint models/tiny-synthetic.safetensors --out engines/tiny-synthetic-rtx

test: setup
	$(BIN)/python -m pytest -q
