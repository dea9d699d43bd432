# blockmix developer entry points. `make test` alone works on a fresh machine.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Where no NVIDIA GPU is present, install the CPU build of torch before the project, so that the
# project's torch range is already satisfied and pip does not pull a multi-GB CUDA build.
# Override TORCH_CPU_PIP_ARGS (e.g. with an --index-url of CPU wheels) on machines that need it.
TORCH_CPU_SPEC ?= torch==2.13.0
TORCH_CPU_PIP_ARGS ?=
HAS_GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo yes)

.PHONY: setup test lint bench-models bench-data bench-train

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
ifneq ($(HAS_GPU),yes)
	$(PY) -m pip install -q $(TORCH_CPU_PIP_ARGS) "$(TORCH_CPU_SPEC)"
endif
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench-models: $(STAMP)
	$(PY) tests/benchmarks/bench_models.py

bench-data: $(STAMP)
	$(PY) tests/benchmarks/bench_data.py

bench-train: $(STAMP)
	$(PY) tests/benchmarks/bench_train.py
