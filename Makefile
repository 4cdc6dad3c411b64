# Two commands on a fresh machine: `make run` (default experiment) and `make test`.
# Both create the environment (.venv) first if it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Offline by default: a hub call without this hangs ~45 s before failing on a closed network.
export HF_HUB_OFFLINE ?= 1
export PATH := $(CURDIR)/$(BIN):$(PATH)
EXPERIMENT ?= experiments/smoke.yaml

# The HF stack's hash-locked CPU variant (containers/locks/); on a GPU host without containers:
# make env LOCK=containers/locks/hf-cuda.txt PYTHON=python3.12 (the CUDA locks target 3.12).
LOCK ?= containers/locks/hf-cpu.txt
# The Python a lock was resolved for (containers/lock.sh): the CUDA locks 3.12, the others 3.11.
LOCK_PYTHON = $(if $(findstring cuda,$(notdir $(LOCK))),3.12,3.11)

.PHONY: env run test test-fast lint format schema lock test-container llamacpp-check gpu-wheels \
	gpu-check clean-results

env: $(VENV)/.installed

# Only what the lock pins, each file checked against its hash (torch included: a CPU build here,
# so nothing can pull GBs of CUDA wheels); then tunebench itself, and a record of the lock that
# every result carries (with any drift from it). PyPI lacks torch's CPU build: envs/wheel_source.py
# names a local wheel folder that holds it, else PyTorch's CPU index.
$(VENV)/.installed: $(LOCK) pyproject.toml
	@# Fail at once, naming the version found, rather than deep inside pip (the lock's wheels
	@# are for one Python version). An existing .venv is checked, else $(PYTHON).
	@py=$(PYTHON); [ -x $(BIN)/python ] && py=$(BIN)/python; \
	found=$$($$py -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null); \
	if [ "$$found" != "$(LOCK_PYTHON)" ]; then \
		echo "error: $(LOCK) needs Python $(LOCK_PYTHON); $$py is Python $${found:-(not found)}." \
			"Install Python $(LOCK_PYTHON) and run: make $(MAKECMDGOALS) PYTHON=python$(LOCK_PYTHON)" \
			"(and remove $(VENV) if it was made with another version)" >&2; \
		exit 2; \
	fi
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --require-hashes --no-deps \
		$$($(PYTHON) src/tunebench/envs/wheel_source.py $(LOCK)) -r $(LOCK)
	$(BIN)/pip install -q --no-deps -e .
	$(BIN)/tunebench env record hf $(LOCK)
	touch $@

run: env
	$(BIN)/tunebench run $(EXPERIMENT)

test: env
	$(BIN)/pytest -q

# The edit loop: everything but the end-to-end Snakemake, Slurm and Unsloth runs (marked slow).
test-fast: env
	$(BIN)/pytest -q -m "not slow"

lint: env
	$(BIN)/ruff check src tests benchmarks experiments
	$(BIN)/ruff format --check src tests benchmarks experiments
	$(BIN)/snakefmt --check workflow
	$(BIN)/snakemake --lint --configfile $(EXPERIMENT)

format: env
	$(BIN)/ruff format src tests benchmarks experiments
	$(BIN)/ruff check --fix src tests benchmarks experiments
	$(BIN)/snakefmt workflow

# The JSON schema and the reference of every key, both generated from src/tunebench/spec.py.
schema: env
	$(BIN)/tunebench schema --out workflow/schemas/experiment.schema.json
	$(BIN)/tunebench schema --markdown --out docs/experiment.md

# Regenerate the four locks from pyproject.toml (UPGRADE=1 moves every pin to the newest allowed),
# and the lock hashes the image records in containers/images.json will carry.
lock: env
	bash containers/lock.sh
	containers/build.sh hf --no-build && containers/build.sh unsloth --no-build

# Heavy, outside the default suite: build the HF image with podman on a local Debian base and
# run a tiny experiment inside it to a finished table.
test-container: env
	bash containers/test-container.sh

# Heavy, on demand: build llama.cpp (llama-cpp-python from the converter's pinned source
# distribution, into the cache: 7 min 50 s of CPU time on 2 cores) and compare an export's GGUF files
# run by llama.cpp with its merged model (benchmarks/llamacpp_agreement.py):
#   make llamacpp-check EXPORT=results/<experiment>/exports/runs/<run-id>
LLAMA_CPP := $(HOME)/.cache/tunebench/llama-cpp-python-0.3.36
llamacpp-check: env $(LLAMA_CPP)/llama_cpp/__init__.py
	PYTHONPATH=$(LLAMA_CPP) $(BIN)/python benchmarks/llamacpp_agreement.py $(EXPORT)

# llama_cpp imports diskcache, which the lock does not hold: pinned here by its hash.
$(LLAMA_CPP)/llama_cpp/__init__.py:
	echo "diskcache==5.6.3 --hash=sha256:5e31b2d5fbad117cc363ebaf6b689474db18a1f6438bc82358b024abd4c2ca19" \
		| $(BIN)/pip install -q --no-deps --require-hashes --target $(LLAMA_CPP) -r /dev/stdin
	CMAKE_ARGS="-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF \
		-DLLAMA_BUILD_SERVER=OFF -DLLAMA_CURL=OFF" $(BIN)/pip install -q --no-deps \
		--target $(LLAMA_CPP) "$$($(BIN)/python -c \
		'from tunebench.export import convert; print(convert.source_archive())')"

# The GPU check (docs/gpu.md): stage here, with network, the packages a GPU machine without
# network lacks (chunks of at most 48 MiB), then run the check there with its own python3.
gpu-wheels: env
	$(BIN)/python benchmarks/gpu_wheels.py --out .gpu-wheels

OUT ?= gpu-check
gpu-check:
	python3 benchmarks/gpu_check.py --wheels .gpu-wheels --out $(OUT)

clean-results:
	rm -rf results/*/ .snakemake
