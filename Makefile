# Two entry points (see README.md): `make demo` and `make test`; CI (.ci/run) runs
# `make test` and then `make test-slow`.
# Both create or refresh the local virtual environment .venv from
# requirements.txt when it is missing or older than requirements.txt / pyproject.toml.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# CPU speed and log hygiene for TensorFlow (BUILD_NOTES.md explains).
export TF_ENABLE_ONEDNN_OPTS ?= 1
export TF_CPP_MIN_LOG_LEVEL ?= 2
export PYTHONHASHSEED ?= 0

# The tests run in pytest-xdist worker processes (BUILD_NOTES.md: why, and the times); PYTEST_WORKERS=0 runs
# them in this process. Tests go to the workers one by one, except that the tests of one xdist_group stay on one
# worker (--dist loadgroup; a module whose fixture trains or runs a binary is one group, so the fixture runs
# once; needs the pinned pytest < 9.2: BUILD_NOTES.md).
PYTEST_WORKERS ?= 2
# The slow tests spend much of their time waiting on the processes they start (start-up, signals, kills,
# sockets), so they run in three workers (BUILD_NOTES.md: the measurement); 0 with PYTEST_WORKERS=0.
PYTEST_SLOW_WORKERS ?= $(if $(filter 0,$(PYTEST_WORKERS)),0,3)

.PHONY: venv demo test test-all test-slow bench clean

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements.txt
	$(PY) -m pip install --disable-pip-version-check -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m experiments.demo --output_dir runs/demo

test: $(STAMP)
	$(PY) -m pytest -m "not slow" -q -n $(PYTEST_WORKERS) --dist loadgroup

test-slow: $(STAMP)
	$(PY) -m pytest -m slow -q -n $(PYTEST_SLOW_WORKERS) --dist loadgroup

test-all: $(STAMP)
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadgroup

# Benchmarks (benchmarks/RESULTS.md): installs the optional `bench` extra
# (torch, pytorch-metric-learning) into .venv, then runs the scripts. Each run
# writes new, dated results files (never the ones RESULTS.md quotes).
BENCH_DATE := $(shell date +%Y-%m-%d-%H%M)
bench: $(STAMP)
	$(PY) -m pip install --disable-pip-version-check -q "torch==2.13.0" "pytorch-metric-learning==2.9.0"
	$(PY) benchmarks/loss_benchmark.py --out benchmarks/results/loss_$(BENCH_DATE).md
	$(PY) benchmarks/train_step_benchmark.py --out benchmarks/results/train_step_$(BENCH_DATE).md
	$(PY) benchmarks/pipeline_benchmark.py --out benchmarks/results/pipeline_$(BENCH_DATE).md
	$(PY) benchmarks/fault_tolerance_benchmark.py --out benchmarks/results/fault_tolerance_$(BENCH_DATE).md

clean:
	rm -rf $(VENV) runs .pytest_cache
