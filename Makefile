# Every target creates .venv on first use and installs the project into it (editable).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install lint test test-slow test-all quickstart experiment bench gpu-check gpu-wheels clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,tensorboard,mlflow]'
	touch $(STAMP)

install: $(STAMP)

# Fast suite (CI): everything but tests marked slow. Exit code 5 (no tests ran) is a failure.
test: lint
	$(BIN)/python -m pytest -q -m "not slow" -p no:cacheprovider

# Lint and formatting (configured in pyproject.toml), before any test runs.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The slow end-to-end tests (kill -9 resume, torchrun, real quickstart-sized runs).
test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow -p no:cacheprovider

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider

quickstart: $(STAMP)
	$(BIN)/daat quickstart

# The shipped experiments (Table 1 and shape-vs-texture on the synthetic data), JOBS cells at once.
JOBS ?= 2
experiment: $(STAMP)
	$(BIN)/daat experiment experiments/table1-synthetic.yaml --jobs $(JOBS)
	$(BIN)/daat experiment experiments/texture-synthetic.yaml --jobs $(JOBS)

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

# The first GPU session's one command (docs/GPU.md): CUDA tests, `make bench` on the GPU, 200 steps
# of ImageNet-100-shaped training; everything into $(GPU_CHECK_OUT)/. No install step: it runs with
# the Python that already has torch (.venv if there is one), plus the wheels in WHEELS=DIR if given.
# DRY_RUN=1 runs the same steps on CPU at toy size (the test suite does too).
GPU_CHECK_OUT ?= gpu_check
GPU_PYTHON ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,python3)
gpu-check: $(if $(DRY_RUN),$(STAMP))
	$(GPU_PYTHON) benchmarks/gpu_check.py --out $(GPU_CHECK_OUT) $(if $(WHEELS),--wheels $(WHEELS)) $(if $(DRY_RUN),--dry-run)

# Wheels a GPU machine without internet lacks (webdataset, zarr, pyautoattack and their needs),
# for Python $(WHEELS_PYTHON) on x86-64 Linux, into $(WHEELS_DIR)/.
WHEELS_DIR ?= .whl
WHEELS_PYTHON ?= 3.12
gpu-wheels:
	$(GPU_PYTHON) benchmarks/gpu_check.py --download-wheels $(WHEELS_DIR) --python-version $(WHEELS_PYTHON)

clean:
	rm -rf artifacts quickstart_out report gpu_check .pytest_cache
