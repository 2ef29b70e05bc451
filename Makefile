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
PRECISION ?=
JIT ?=
MODELS ?=
SEEDS ?=
FOLDS ?=
LOSS ?=
LOSSES ?=
METHOD ?=
STARTS ?=
UNLABELLED ?=
TRIALS ?=
export SIGVERIFY_CACHE ?= $(CURDIR)/data/cache
export TF_CPP_MIN_LOG_LEVEL ?= 2

EXPERIMENT_FLAGS = --profile $(PROFILE) --runs $(RUNS) \
	$(if $(DATA),--data $(DATA)) $(if $(RESUME),--resume $(RESUME)) $(if $(SEED),--seed $(SEED)) \
	$(if $(STRATEGY),--strategy $(STRATEGY)) $(if $(CPU_DEVICES),--cpu-devices $(CPU_DEVICES)) \
	$(if $(PRECISION),--precision $(PRECISION)) $(if $(filter 1,$(JIT)),--jit) \
	$(if $(FOLDS),--folds $(FOLDS)) $(if $(SEEDS),--seeds $(SEEDS)) $(if $(LOSS),--loss $(LOSS)) $(ARGS)

.PHONY: install exp-triplet exp-contrastive exp-models exp-losses exp-tune exp-pretrain exp-pretrain-compare pretrain-backbone ship-weights data-synthetic test lint clean-cache bench-gpu

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
	$(PY) experiments/models.py $(EXPERIMENT_FLAGS) $(if $(MODELS),--zoo $(MODELS))

# LOSSES=semihard,arcface picks losses (default: all ten, the cross-entropy pipelines softmax, softmax-genuine and
# pair-ce among them); FOLDS=5 (writer-disjoint folds) and SEEDS=3 repeat each.
exp-losses: install
	$(PY) experiments/losses.py $(EXPERIMENT_FLAGS) $(if $(LOSSES),--losses $(LOSSES))

# Optuna search over loss, margin, learning rate, cut layer, image size and augmentation strength, on validation folds
# of the training writers: TRIALS=30 trials to finish, LOSSES=semihard,arcface the candidate losses. A killed study
# continues with RESUME=runs/tune/<id> (and the PROFILE it started with).
exp-tune: install
	$(PY) experiments/tune.py $(EXPERIMENT_FLAGS) $(if $(LOSSES),--losses $(LOSSES)) $(if $(TRIALS),--trials $(TRIALS))

# METHOD=simclr|moco|synthetic (default simclr); UNLABELLED=synthetic or a folder of images (default: the training
# writers' images of DATA). Pretraining length: ARGS="--pretrain-epochs 50".
exp-pretrain: install
	$(PY) experiments/pretrain.py $(EXPERIMENT_FLAGS) $(if $(METHOD),--method $(METHOD)) $(if $(UNLABELLED),--unlabelled $(UNLABELLED))

# STARTS=random,simclr,moco,synthetic,signatures,imagenet picks the starts (default: all; signatures and imagenet where
# they can be loaded);
# SEEDS=3 repeats each fine-tuning; FOLDS=5 ARGS="--fold 2" runs one fold (pretraining sees that fold's training writers).
exp-pretrain-compare: install
	$(PY) experiments/pretrain_compare.py $(EXPERIMENT_FLAGS) $(if $(STARTS),--starts $(STARTS)) $(if $(UNLABELLED),--unlabelled $(UNLABELLED))

# The shipped signature-pretrained backbones (sigverify/weights/): PROFILE=full trains the shipped ResNet50 file, and with
# ARGS="--backbone vgg16 --cut-layer block3_conv1 --pretrain-steps-per-epoch 150" the VGG16 one (resumable:
# RESUME=runs/pretrain-backbone/<id>); then make ship-weights RUN=<that run> installs it with its model card.
pretrain-backbone: install
	$(PY) experiments/pretrain_backbone.py $(EXPERIMENT_FLAGS)

RUN ?=
ship-weights: install
	$(VENV)/bin/sigverify weights install $(RUN)

# Two pytest workers by default (TEST_WORKERS=0 runs in one process): most tests wait on one core (process start-up,
# TensorFlow's tracing), so two of them fill a 2-core machine. Each test file stays on one worker, with its fixtures.
TEST_WORKERS ?= 2
test: install
	$(PY) -m pytest -q -rs --durations=15 $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile)

# Training speed of the blog profile on the JAX backend (float32 and mixed_bfloat16: images/s, TFLOP/s, peak memory).
# BENCH_ARGS="--loss-sweep --profile-step" adds the loss at B = 1024..16384 and a step's parts; on a CPU pass a small
# size: BENCH_ARGS="--image-size 64 --batch-size 8 --steps 3".
bench-gpu: install
	KERAS_BACKEND=jax $(PY) -m sigverify.bench_gpu $(BENCH_ARGS)

lint: install
	$(VENV)/bin/ruff check sigverify experiments tests benchmarks

clean-cache:
	rm -rf data/cache

# Multi-worker training on this machine: WORKERS processes of one MultiWorkerMirroredStrategy cluster, each with its
# own TF_CONFIG on loopback ports; worker 0 (the chief) writes the run folder (README, "Scaling").
WORKERS ?= 2
.PHONY: exp-triplet-multiworker bench bench-loss bench-train bench-pipeline bench-contrastive bench-gallery bench-verify bench-synthetic

exp-triplet-multiworker: install $(if $(DATA),,data-synthetic)
	$(PY) -m sigverify.launch --workers $(WORKERS) experiments/triplet.py $(EXPERIMENT_FLAGS)

# Benchmarks (not tests; CI does not run them): results in benchmarks/results/<name>.json, the table in
# benchmarks/README.md. BENCH_ARGS="--full" gives bench-train, bench-pipeline and bench-contrastive more steps.
BENCH_ARGS ?=
bench: bench-loss bench-train bench-pipeline bench-contrastive bench-gallery bench-verify bench-synthetic
	$(PY) benchmarks/table.py

bench-loss: install
	$(PY) benchmarks/bench_loss.py

bench-train: install
	$(PY) benchmarks/bench_train.py $(BENCH_ARGS)

bench-pipeline: install
	$(PY) benchmarks/bench_pipeline.py $(BENCH_ARGS)

bench-contrastive: install
	$(PY) benchmarks/bench_contrastive.py $(BENCH_ARGS)

bench-gallery: install
	$(PY) benchmarks/bench_gallery.py $(BENCH_ARGS)

bench-verify: install
	$(PY) benchmarks/bench_verify.py

bench-synthetic: install
	$(PY) benchmarks/bench_synthetic.py
