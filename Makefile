# The two first commands of the README:
#   make run    set everything up, create development certificates, start a local Loom
#   make test   set everything up, run lint, types and the whole test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint soak chaos bench cluster-bench native clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The compiled build (mypyc) where a C compiler exists, else pure Python; it says which. It runs
# every time: nothing to do when the manifest's source digests match, a rebuild when a source
# changed (loom/buildinfo.py). LOOM_PURE_PYTHON=1 removes it and selects pure Python.
native: $(STAMP)
	$(BIN)/python scripts/build_native.py

run: native
	$(BIN)/python scripts/run_local.py

lint: $(STAMP)
	$(BIN)/ruff check loom tests bench scripts
	$(BIN)/mypy

test: $(STAMP)
	bash scripts/test.sh

# Long simulation soak: make soak SEEDS=100000 [FIRST=K] [SECONDS=S]. Runs every seed from a
# fresh start (FIRST, default: from the clock) unless SECONDS is given, which stops it early;
# ends with one line: the seed range, seeds run, violations and time (exit 1 on a violation).
SEEDS   ?= 100000
FIRST   ?=
SOAK_FIRST := $(if $(FIRST),$(FIRST),$(shell date +%s))
soak: native
	$(BIN)/python -m loom.sim --seeds $(SEEDS) --first-seed $(SOAK_FIRST) \
		$(if $(filter command line environment,$(origin SECONDS)),--time-limit $(SECONDS))

# Long chaos run: make chaos RUNS=500 SECONDS=60 (real loomd processes under random faults,
# every history checked; failing runs are kept under CHAOS_DIR with the command that repeats
# them). SECONDS is per run here (60 unless given); SEED picks the first seed (default: from
# the clock).
RUNS      ?= 500
CHAOS_DIR ?= run/chaos
SEED      ?=
CHAOS_SECONDS := $(if $(filter command line environment,$(origin SECONDS)),$(SECONDS),60)
chaos: native
	mkdir -p $(CHAOS_DIR)
	$(BIN)/python -m loom.chaos --runs $(RUNS) --seconds $(CHAOS_SECONDS) --dir $(CHAOS_DIR) \
		$(if $(SEED),--seed $(SEED)) --json $(CHAOS_DIR)/summary.json

bench: native
	$(BIN)/python bench/node_bench.py

# 3-node Loom against 3-node etcd in one run, three times alternating (medians): a table and a
# chart under bench/out/ (installs the chart library here, and etcd from Debian's packages when
# it can); about 5 minutes
BENCH_STAMP := $(VENV)/.installed-bench
$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $(BENCH_STAMP)

cluster-bench: $(BENCH_STAMP) native
	$(BIN)/python bench/cluster_bench.py --lease-reads --repeat 3

clean:
	find loom -name '*.so' -delete
	rm -f loom/_native.json
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache run build/native
