# Two entry points for a fresh machine: `make test` and `make bench`.
# Both create .venv when missing, install the pinned dependencies once (stamp file),
# build the extension (again only when csrc/ or setup.py changed) and then run.

PYTHON      ?= python3
VENV        := .venv
VPY         := $(VENV)/bin/python
PIP         := $(VPY) -m pip
TORCH_PIN   := torch==2.14.1
ESCNN_PIN   := escnn==1.0.11
PYG_EXT     := torch-scatter==2.1.2 torch-cluster==1.6.3
DEPS_STAMP  := $(VENV)/.deps-stamp
BUILD_STAMP := $(VENV)/.build-stamp
CUDA_HOME   ?= $(firstword $(wildcard /usr/local/cuda-13.0 /usr/local/cuda))
export CUDA_HOME
CSRC        := $(shell find csrc -type f 2>/dev/null)

.PHONY: all venv build test bench clean

all: test

venv: $(DEPS_STAMP)

$(DEPS_STAMP): requirements.txt
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip setuptools wheel
	$(PIP) install $(TORCH_PIN)
	$(PIP) install $(TORCH_PIN) -r requirements.txt
	$(PIP) install --no-deps $(ESCNN_PIN)
	# torch-scatter/cluster build from source against the pinned torch; never with
	# FORCE_CUDA (they would compile their CUDA code for a very long time).
	env -u FORCE_CUDA $(PIP) install --no-build-isolation $(PYG_EXT)
	touch $@

build: $(BUILD_STAMP)

$(BUILD_STAMP): $(DEPS_STAMP) setup.py pyproject.toml $(CSRC)
	$(PIP) install --no-build-isolation --no-deps -e .
	touch $@

test: build
	$(VPY) -m pytest -q tests

bench: build
	$(VPY) benchmarks/bench_conv.py

clean:
	rm -rf build *.egg-info pyg_implicit/_C*.so $(BUILD_STAMP)
