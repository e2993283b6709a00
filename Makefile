# One command to set up and run the main job, one to set up and run the tests.
# torch is pinned to 2.13.0 (constraints.txt, given to every pip install here, and on the command
# line): on these machines that takes the local CPU wheel; a range that admits a newer release
# pulls gigabytes of CUDA packages. The package itself asks only for torch>=2.6.
PYTHON ?= python3
CONSTRAINTS := constraints.txt
VENV ?= .venv
BIN := $(VENV)/bin
# The tests' Triton server runs in its own environment: its Python backend stub needs numpy < 2.
TRITON_VENV ?= .venv-triton

# What the tests take from Debian: NGINX (the router in front of two Triton servers), GStreamer
# with its libav decoders, typelibs and RTSP server, what PyGObject builds against, and
# qemu-user-static (tests/package/test_arm.py runs the wheel in Debian's arm64 Python, emulated),
# Mosquitto (a real MQTT broker for the watch events' MQTT sink), and Chromium with its driver
# (mirasol-run --view's page, tested in a real headless browser).
DEBIAN_PACKAGES := nginx-light gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good \
	gstreamer1.0-plugins-bad gstreamer1.0-libav gir1.2-gstreamer-1.0 gir1.2-gst-plugins-base-1.0 \
	gir1.2-gst-rtsp-server-1.0 libgirepository1.0-dev libcairo2-dev pkg-config qemu-user-static mosquitto \
	chromium chromium-driver

.PHONY: setup demo test lint triton-venv debian-packages gstreamer-python

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c $(CONSTRAINTS) torch==2.13.0 -e ".[build,trt,dali,bench,serve,dev]"
	touch $@

triton-venv: $(TRITON_VENV)/.installed

$(TRITON_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/pip install --quiet --upgrade pip
	$(TRITON_VENV)/bin/pip install --quiet -c $(CONSTRAINTS) -e ".[triton-server]"
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

# Installed when missing and we are root (CI is); otherwise say what to install.
debian-packages:
	@missing=$$(for p in $(DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ]; then \
			apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
		else echo "the tests need Debian packages: sudo apt-get install $$missing"; exit 1; fi; \
	fi

# PyGObject (GStreamer sources) builds against Debian's libgirepository, so it comes after them.
gstreamer-python: $(VENV)/.gstreamer

$(VENV)/.gstreamer: pyproject.toml | debian-packages setup
	$(BIN)/pip install --quiet -c $(CONSTRAINTS) -e ".[gstreamer]"
	touch $@

# The Triton and GStreamer tests must run here (MIRASOL_REQUIRE_*): what is missing fails them, not skips
# them; so must the emulated Arm run where we are root (CI is; it needs dpkg, apt and mount).
test: lint triton-venv debian-packages gstreamer-python
	MIRASOL_TRITON_PYTHON=$(TRITON_VENV)/bin/python MIRASOL_REQUIRE_TRITON=1 MIRASOL_REQUIRE_GSTREAMER=1 MIRASOL_REQUIRE_MQTT=1 MIRASOL_REQUIRE_BROWSER=1 \
		MIRASOL_REQUIRE_ARM=$$([ "$$(id -u)" = 0 ] && echo 1) $(BIN)/python -m pytest -q
