# Two commands on a fresh machine: `make run` (default experiment) and `make test`.
# Both create the environment (.venv) first if it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Offline by default: a hub call without this hangs ~45 s before failing on a closed network.
export HF_HUB_OFFLINE ?= 1
export PATH := $(CURDIR)/$(BIN):$(PATH)
EXPERIMENT ?= experiments/smoke.yaml

.PHONY: env run test lint format schema clean-results

env: $(VENV)/.installed

# torch first, from constraints.txt, so no dependency can pull a CUDA build of several GB.
$(VENV)/.installed: pyproject.toml constraints.txt
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt torch
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $@

run: env
	$(BIN)/tunebench run $(EXPERIMENT)

test: env
	$(BIN)/pytest -q

lint: env
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/snakefmt --check Snakefile workflow
	$(BIN)/snakemake --lint --configfile $(EXPERIMENT)

format: env
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks
	$(BIN)/snakefmt Snakefile workflow

schema: env
	$(BIN)/tunebench schema --output workflow/schemas/experiment.schema.json

clean-results:
	rm -rf results/*/ .snakemake
