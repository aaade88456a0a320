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
BENCH_STAMP := $(VENV)/.bench-deps-stamp
CUDA_HOME   ?= $(shell $(PYTHON) csrc/find_cuda_home.py 2>/dev/null)
export CUDA_HOME
CSRC        := $(shell find csrc -type f 2>/dev/null)
# escnn caches Clebsch-Gordan coefficients and group data inside its package
# folder (minutes to compute without py3nj); share that cache across venvs.
ESCNN_CACHE ?= $(HOME)/.cache/pyg_implicit/escnn

.PHONY: all venv build test test-cuda-emulated bench clean escnn-cache

all: test

venv: $(DEPS_STAMP)

$(DEPS_STAMP): requirements.txt
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip setuptools wheel
	$(PIP) install $(TORCH_PIN)
	$(PIP) install $(TORCH_PIN) -r requirements.txt
	$(PIP) install --no-deps $(ESCNN_PIN)
	$(MAKE) escnn-cache
	# torch-scatter/cluster build from source against the pinned torch; never with
	# FORCE_CUDA (they would compile their CUDA code for a very long time).
	env -u FORCE_CUDA $(PIP) install --no-build-isolation $(PYG_EXT)
	touch $@

escnn-cache:
	@d=$$($(VPY) -c "import importlib.util, os; print(os.path.join(os.path.dirname(importlib.util.find_spec('escnn').origin), 'group', '_cache'))"); \
	mkdir -p $(ESCNN_CACHE); \
	if [ ! -L "$$d" ]; then \
		if [ -d "$$d" ]; then cp -rn "$$d"/. $(ESCNN_CACHE)/; rm -rf "$$d"; fi; \
		ln -s $(ESCNN_CACHE) "$$d"; \
	fi; echo "escnn cache: $$d -> $(ESCNN_CACHE)"

build: $(BUILD_STAMP)

$(BUILD_STAMP): $(DEPS_STAMP) setup.py pyproject.toml $(CSRC)
	$(PIP) install --no-build-isolation --no-deps -e .
	touch $@

test: build
	$(VPY) -m pytest -q tests

# The CUDA kernels' source run on CPU threads (no GPU needed): a check of their
# indexing, shared-memory layout and host logic, not a substitute for a GPU run.
test-cuda-emulated: build
	$(VPY) csrc/cuda/emulate_on_cpu.py

$(BENCH_STAMP): $(DEPS_STAMP) benchmarks/requirements.txt
	$(PIP) install $(TORCH_PIN) -r benchmarks/requirements.txt
	touch $@

# The microbenchmark (reference / factorized / fused), then the peers
# (e3nn, escnn) side by side at configuration M: benchmarks/results/.
bench: build $(BENCH_STAMP)
	$(VPY) benchmarks/bench_conv.py
	$(VPY) benchmarks/bench_conv.py --peers

clean:
	rm -rf build *.egg-info pyg_implicit/_C*.so $(BUILD_STAMP)
