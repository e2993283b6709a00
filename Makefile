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
	$(BIN)/pip install --quiet torch==2.13.0 -e ".[build,trt,dali,dev]"
	touch $@

demo: setup
	$(BIN)/python -m mirasol_edge.toolkit.summary
	$(BIN)/mirasol-build --recipe cpu --preset tiny --out engines/tiny-cpu
	$(BIN)/mirasol-build --recipe rtx --preset tiny --out engines/tiny-rtx
	$(BIN)/mirasol-run samples/colours.mp4 --engines engines/tiny-cpu \
		--ask "what colour is the square?" --ask "was there a beep?" --ask-every 6

test: setup
	$(BIN)/python -m pytest -q
