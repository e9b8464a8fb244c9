# Two entry points (see README.md):
#   make study   set up .venv (pinned, CPU torch 2.13.0) and run the default study offline
#   make test    set up .venv and run lint + format checks + the test suite
#   (make test-fast: the unit tests only, no end-to-end workflow runs; the quick loop)
#   make rehearsal  config/paper.yaml's whole DAG on tiny local models and data (docs/slurm.md);
#                   REHEARSAL_ARGS="--profile profiles/slurm" runs it through SLURM
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CORES ?= all
SNAKEMAKE_ARGS ?=
REHEARSAL_DIR ?= rehearsal
REHEARSAL_ARGS ?=
# Every job is a new Python process: with PYTHONDONTWRITEBYTECODE set (some machines set it, ours
# does) each would compile torch and transformers again (up to ~14 s). make's commands cache bytecode.
unexport PYTHONDONTWRITEBYTECODE
# uv by default; INSTALLER=pip installs with pip alone (e.g. for an index only pip can reach).
INSTALLER ?= uv
UV_VERSION := 0.13.9
UV := $(BIN)/uv pip

.PHONY: setup study test test-fast lint unit clean-results storage-plan rehearsal
.DEFAULT_GOAL := study

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml envs/uv_index_args.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
ifeq ($(INSTALLER),uv)
	# uv unpacks the wheels on every core (~7 s here, pip ~40 s). It is bootstrapped by pip and
	# given pip's own index settings, so both install the same files. No bytecode at install
	# (compiling all 16,000 modules took 20 s here): Python caches that of the ~4,500 the jobs
	# import on first use (see PYTHONDONTWRITEBYTECODE above).
	$(BIN)/python -m pip install --quiet uv==$(UV_VERSION)
	# unsafe-best-match: the best version over all the indexes, as pip picks it.
	$(UV) install --python $(BIN)/python --quiet --index-strategy unsafe-best-match \
		$$($(BIN)/python envs/uv_index_args.py) -r requirements-dev.txt
	# The package was distributed as "ntps" before it became ntps-workflow: drop that editable copy.
	$(UV) uninstall --python $(BIN)/python --quiet ntps 2>/dev/null || true
	$(UV) install --python $(BIN)/python --quiet --no-deps $$($(BIN)/python envs/uv_index_args.py) -e .
else
	$(BIN)/python -m pip install --quiet --no-compile -r requirements-dev.txt
	$(BIN)/python -m pip uninstall --quiet --yes ntps 2>/dev/null || true
	$(BIN)/python -m pip install --quiet --no-deps -e .
endif
	touch $(STAMP)

setup: $(STAMP)

study: $(STAMP)
	$(BIN)/snakemake --profile profiles/default --cores $(CORES) $(SNAKEMAKE_ARGS)
	$(MAKE) --no-print-directory results/report.html

# Rebuilt only when the study's results changed (summary.md is rewritten by every analysis run).
results/report.html: results/summary.md
	$(BIN)/snakemake --profile profiles/default --report $@ $(SNAKEMAKE_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/snakefmt --check .
	$(BIN)/snakemake --lint --cores 1

# Whole modules per worker, in the order tests/conftest.py gives them (longest first).
unit: $(STAMP)
	$(BIN)/pytest -n 2 --dist loadfile --no-loadscope-reorder --durations=15

# Lint beside the tests: the lint takes ~6 s of one core while pytest starts its workers.
test: $(STAMP)
	$(MAKE) --no-print-directory -j2 lint unit

test-fast: $(STAMP)
	$(BIN)/pytest -q -m "not slow" --durations=10

# Estimated disk per stage of a study (docs/cluster.md, "Disk"): make storage-plan CONFIG=config/paper.yaml
CONFIG ?= config/config.yaml
storage-plan: $(STAMP)
	$(BIN)/python -m ntps.storage $(CONFIG) --verbose

# The paper-scale dress rehearsal on CPU (docs/slurm.md): make rehearsal [REHEARSAL_ARGS=...]
rehearsal: $(STAMP)
	$(BIN)/python tests/rehearsal.py --workdir $(REHEARSAL_DIR) $(REHEARSAL_ARGS)

clean-results:
	rm -rf results/* .snakemake
