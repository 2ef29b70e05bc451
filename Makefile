# sigverify — every target sets itself up: `make exp-triplet` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# Settings every experiment target accepts.
DATA ?=
PROFILE ?= quick
RUNS ?= runs
ARGS ?=
RESUME ?=
SEED ?=
STRATEGY ?=
CPU_DEVICES ?=
MIXED_PRECISION ?=
JIT ?=
MODELS ?=
SEEDS ?=
export SIGVERIFY_CACHE ?= $(CURDIR)/data/cache
export TF_CPP_MIN_LOG_LEVEL ?= 2

EXPERIMENT_FLAGS = --profile $(PROFILE) --runs $(RUNS) \
	$(if $(DATA),--data $(DATA)) $(if $(RESUME),--resume $(RESUME)) $(if $(SEED),--seed $(SEED)) \
	$(if $(STRATEGY),--strategy $(STRATEGY)) $(if $(CPU_DEVICES),--cpu-devices $(CPU_DEVICES)) \
	$(if $(filter 1,$(MIXED_PRECISION)),--mixed-precision) $(if $(filter 1,$(JIT)),--jit) $(ARGS)

.PHONY: install exp-triplet exp-contrastive exp-models data-synthetic test lint clean-cache

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

data-synthetic: install
	@if [ -d data/synthetic/full_org ]; then echo "data/synthetic exists"; \
	else $(VENV)/bin/sigverify data synthetic --out data/synthetic; fi

exp-triplet: install
	$(PY) experiments/triplet.py $(EXPERIMENT_FLAGS)

exp-contrastive: install
	$(PY) experiments/contrastive.py $(EXPERIMENT_FLAGS)

# MODELS=small_resnet50,base_cnn picks zoo models (default: all but the contrastive one); SEEDS=3 repeats each.
exp-models: install
	$(PY) experiments/models.py $(EXPERIMENT_FLAGS) $(if $(MODELS),--zoo $(MODELS)) $(if $(SEEDS),--seeds $(SEEDS))

test: install
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check sigverify experiments tests

clean-cache:
	rm -rf data/cache
