# The two first commands of the README:
#   make run    set everything up, create development certificates, start a local Loom
#   make test   set everything up, run lint, types and the whole test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint soak bench cluster-bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/python scripts/run_local.py

lint: $(STAMP)
	$(BIN)/ruff check loom tests bench scripts
	$(BIN)/mypy

test: $(STAMP)
	bash scripts/test.sh

# Long simulation soak: make soak SEEDS=100000 SECONDS=3600
SEEDS   ?= 100000
SECONDS ?= 3600
soak: $(STAMP)
	$(BIN)/python -m loom.sim --seeds $(SEEDS) --time-limit $(SECONDS)

bench: $(STAMP)
	$(BIN)/python bench/node_bench.py

# 3-node Loom against 3-node etcd in one run, three times alternating (medians): a table and a
# chart under bench/out/ (installs the chart library here, and etcd from Debian's packages when
# it can); about 5 minutes
BENCH_STAMP := $(VENV)/.installed-bench
$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $(BENCH_STAMP)

cluster-bench: $(BENCH_STAMP)
	$(BIN)/python bench/cluster_bench.py --lease-reads --repeat 3

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache run
