# Every target creates .venv on first use and installs the project into it (editable).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test test-slow test-all quickstart bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,tensorboard,mlflow]'
	touch $(STAMP)

install: $(STAMP)

# Fast suite (CI): everything but tests marked slow. Exit code 5 (no tests ran) is a failure.
test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" -p no:cacheprovider

# The slow end-to-end tests (kill -9 resume, torchrun, real quickstart-sized runs).
test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow -p no:cacheprovider

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider

quickstart: $(STAMP)
	$(BIN)/daat quickstart

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf artifacts quickstart_out report .pytest_cache
