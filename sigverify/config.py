"""Experiment settings: one dataclass per concern, the run profiles, and the flags/YAML that fill them.

Every field is a command-line flag (`--epochs 3`, `--no-binarize`, `--image-size 96`) of every experiment script, and the
whole configuration is saved as `config.yaml` in each run folder.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from dataclasses import dataclass, field

import yaml

from sigverify.errors import ConfigError

PROFILES = ("smoke", "quick", "blog")
STRATEGIES = ("auto", "cpu", "mirrored", "multiworker")
SAMPLERS = ("shuffled", "pk")
SCHEDULES = ("exponential", "epoch-exponential", "cosine", "constant")
WEIGHTS_HELP = ("auto (imagenet if it can be loaded, else random), imagenet, none, a pretraining run folder "
                "(runs/pretrain/<id>), or a path to a weights file")
PRETRAIN_METHODS = ("simclr", "moco", "synthetic")


@dataclass
class DataSettings:
    data: str | None = None  # None: the embedded synthetic set, generated on first use
    layout: str = "auto"
    skip_bad_images: bool = False
    max_writers: int | None = None  # keep only the first N train and N test writers (smoke runs)
    max_samples: int | None = None  # keep only the first N genuine and N forged images per writer
    cache_dir: str | None = None
    folds: int = 1  # k > 1: k writer-disjoint folds, each in turn the test writers (CEDAR, k = 5: fold 0 is the post's)
    fold: int | None = None  # with folds > 1: run this fold only (None: every fold, one sub-run each)


@dataclass
class ImageSettings:
    image_size: int = 224
    binarize: bool = True
    keep_aspect: bool = False


@dataclass
class ModelSettings:
    backbone: str = "resnet50"
    cut_layer: str | None = "conv4_block6_add"
    weights: str = "auto"
    normalize: bool = True
    embedding_dim: int = 256
    unfreeze_from: str | None = None  # contrastive: fine-tune the backbone from this layer on (image path)
    zoo: str | None = None  # models experiment: comma-separated MODEL_ZOO names (None: every triplet model and baseline)


@dataclass
class TrainSettings:
    epochs: int = 25
    batch_size: int = 64
    sampler: str = "shuffled"  # the original: shuffled batches from all training classes
    classes_per_batch: int = 16  # P of the P×K sampler
    images_per_class: int = 4  # K of the P×K sampler
    loss: str = "semihard"  # a name of sigverify.losses.LOSSES
    losses: str | None = None  # losses experiment: comma-separated loss names (None: all of them)
    margin: float = 1.0  # triplet, quadruplet (first margin) and contrastive losses
    margin2: float = 0.5  # quadruplet loss: the margin of the negative-pair term
    scale: float | None = None  # margin-softmax losses: s (None: the loss's own default)
    softmax_margin: float | None = None  # margin-softmax losses: m (None: the loss's own default)
    distance_metric: str = "L2"
    learning_rate: float = 1e-3
    schedule: str = "exponential"
    decay_steps: int = 10
    decay_rate: float = 0.7
    seed: int = 0
    seeds: int = 1  # repeat each run with seeds seed, seed + 1, …, seed + seeds - 1 (one sub-run each)
    deterministic: bool = False
    strategy: str = "auto"
    cpu_devices: int | None = None
    mixed_precision: bool = False
    jit: bool = False
    augment: bool = False  # augment the training images (sigverify.augment) at FINE_TUNING_STRENGTH


@dataclass
class ReportSettings:
    umap: bool = True
    gradcam_images: int = 4


@dataclass
class PretrainSettings:
    """Backbone pretraining without ImageNet (make exp-pretrain, exp-pretrain-compare; sigverify.pretrain). Its own
    length, batch and learning rate: the train section's are the fine-tuning's in exp-pretrain-compare."""

    method: str = "simclr"  # simclr, moco or synthetic (triplet pretraining on synthetic writers)
    starts: str | None = None  # exp-pretrain-compare: comma-separated starts (None: random, the methods, imagenet)
    unlabelled: str = "train"  # SimCLR/MoCo images: train (the training writers of --data), synthetic, or a folder
    pretrain_epochs: int = 20
    pretrain_batch_size: int = 64  # images a step (SimCLR and MoCo see two views of each)
    pretrain_learning_rate: float = 1e-3
    temperature: float = 0.2  # NT-Xent and InfoNCE
    projection_dim: int = 128
    queue_size: int = 1024  # MoCo's negatives; keep it below the number of images (or stale copies become negatives)
    momentum: float = 0.99  # MoCo's key encoder (the paper's 0.999 suits runs of many more steps)
    synthetic_writers: int = 2000
    synthetic_samples: int = 12  # genuine signatures per synthetic writer, and as many skilled forgeries
    augment_strength: float = 1.0


@dataclass
class ExperimentConfig:
    experiment: str
    profile: str = "quick"
    runs: str = "runs"
    resume: str | None = None
    backend: str | None = None  # the Keras backend the run trains on, recorded when it starts (None: TensorFlow)
    data: DataSettings = field(default_factory=DataSettings)
    image: ImageSettings = field(default_factory=ImageSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    report: ReportSettings = field(default_factory=ReportSettings)
    pretrain: PretrainSettings = field(default_factory=PretrainSettings)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


SECTIONS = {"data": DataSettings, "image": ImageSettings, "model": ModelSettings, "train": TrainSettings,
            "report": ReportSettings, "pretrain": PretrainSettings}

# Profiles of the triplet experiment. smoke: seconds, for tests. quick: the default, minutes on a 2-core CPU, with a
# schedule that keeps learning. blog: the post's protocol (224×224, batch 64, 25 epochs, ExponentialDecay(10, 0.7)).
TRIPLET_PROFILES = {
    "smoke": {
        "data": {"max_writers": 4, "max_samples": 6},
        "image": {"image_size": 32},
        "model": {"cut_layer": "conv3_block4_add"},
        "train": {"epochs": 2, "batch_size": 16, "sampler": "pk", "classes_per_batch": 4, "images_per_class": 4,
                  "schedule": "constant"},
        "report": {"umap": False, "gradcam_images": 2},
    },
    "quick": {
        "image": {"image_size": 96},
        "model": {"cut_layer": "conv3_block4_add"},
        "train": {"epochs": 6, "batch_size": 64, "sampler": "pk", "classes_per_batch": 16, "images_per_class": 4,
                  "schedule": "cosine", "learning_rate": 1e-3},
    },
    "blog": {},
}


def _merged(base: dict, profiles: dict) -> dict:
    return {name: {section: {**base.get(section, {}), **profile.get(section, {})}
                   for section in set(base) | set(profile)} for name, profile in profiles.items()}


# Profiles of the contrastive baseline (SPEC "Contrastive baseline": frozen backbone, GAP, Dense head, margin 0.5).
# blog: the post's settings, 224×224, 50 epochs, Adam 5e-4 decayed per epoch, checkpoint on validation loss.
CONTRASTIVE_PROFILES = _merged(
    {"model": {"cut_layer": None, "embedding_dim": 128},
     "train": {"loss": "contrastive", "margin": 0.5, "sampler": "shuffled", "distance_metric": "L2"},
     "report": {"gradcam_images": 0}},
    {
        "smoke": {"data": {"max_writers": 4, "max_samples": 6}, "image": {"image_size": 32},
                  "train": {"epochs": 2, "batch_size": 32, "schedule": "constant"}, "report": {"umap": False}},
        "quick": {"image": {"image_size": 96},
                  "train": {"epochs": 15, "batch_size": 64, "learning_rate": 5e-4, "schedule": "epoch-exponential",
                            "decay_rate": 0.9}},
        "blog": {"train": {"epochs": 50, "batch_size": 64, "learning_rate": 5e-4, "schedule": "epoch-exponential",
                           "decay_rate": 0.9}},
    },
)


# Profiles of the model zoo (every MODEL_ZOO model under one triplet training; experiments/models.py). A model whose cut
# needs bigger images than image_size runs at its own minimum (full ResNet50: 97, VGG16: 128). quick: 64×64, 8 genuine
# + 8 forged images per writer, 4 epochs: about 27 CPU-minutes for all models on CEDAR (VGG16 12, ResNet50 5), 15–20
# minutes on an idle 2-core CPU.
# blog: the post's protocol, as the triplet experiment's.
MODELS_PROFILES = _merged(
    {"model": {"cut_layer": None}},  # each model's backbone and cut layer come from MODEL_ZOO
    {
        "smoke": {"data": {"max_writers": 4, "max_samples": 6}, "image": {"image_size": 32},
                  "train": {"epochs": 2, "batch_size": 16, "sampler": "pk", "classes_per_batch": 4,
                            "images_per_class": 4, "schedule": "constant"},
                  "report": {"umap": False, "gradcam_images": 2}},
        "quick": {"data": {"max_samples": 8}, "image": {"image_size": 64},
                  "train": {"epochs": 4, "batch_size": 64, "sampler": "pk", "classes_per_batch": 16,
                            "images_per_class": 4, "schedule": "cosine", "learning_rate": 1e-3}},
        "blog": {},
    },
)


# Profiles of the loss comparison (experiments/losses.py): the triplet experiment's model and P×K batches for every
# loss; no UMAP or Grad-CAM per run (many runs). quick: 64×64 images, 16 genuine + 16 forged per writer (K = 12
# references leave 4 questioned genuine), 3 epochs: about 2 minutes a run on a busy 2-core CPU, so 7 losses × 5 folds
# take over an hour there. blog: the post's protocol, with P×K batches of 16 × 4 = 64 so that every batch-mining loss
# has positives.
LOSSES_PROFILES = _merged(
    {"report": {"umap": False, "gradcam_images": 0}},
    {
        "smoke": {"data": {"max_writers": 4, "max_samples": 6}, "image": {"image_size": 32},
                  "model": {"cut_layer": "conv3_block4_add"},
                  "train": {"epochs": 2, "batch_size": 16, "sampler": "pk", "classes_per_batch": 4,
                            "images_per_class": 4, "schedule": "constant"}},
        "quick": {"data": {"max_samples": 16}, "image": {"image_size": 64}, "model": {"cut_layer": "conv3_block4_add"},
                  "train": {"epochs": 3, "batch_size": 64, "sampler": "pk", "classes_per_batch": 16,
                            "images_per_class": 4, "schedule": "cosine", "learning_rate": 1e-3}},
        "blog": {"train": {"sampler": "pk", "classes_per_batch": 16, "images_per_class": 4}},
    },
)


# Profiles of backbone pretraining (experiments/pretrain.py; the pretrain section's settings): from random weights,
# the cut of the triplet experiment's quick profile, no UMAP or Grad-CAM (the evaluation is of frozen features).
# smoke: seconds, for tests. quick: 64×64 images, about a quarter of an hour per method on a busy 2-core CPU.
# blog: for a GPU: the post's Small ResNet50 at 224×224, long pretraining, 2,000 synthetic writers × 12.
_PRETRAINING = {
    "smoke": {"data": {"max_writers": 4, "max_samples": 6}, "image": {"image_size": 32},
              "pretrain": {"pretrain_epochs": 2, "pretrain_batch_size": 8, "queue_size": 16, "projection_dim": 32,
                           "synthetic_writers": 6, "synthetic_samples": 4}},
    "quick": {"image": {"image_size": 64},
              "pretrain": {"pretrain_epochs": 8, "pretrain_batch_size": 32, "queue_size": 1024,
                           "synthetic_writers": 150, "synthetic_samples": 12}},
    "blog": {"model": {"cut_layer": "conv4_block6_add"}, "image": {"image_size": 224},
             "pretrain": {"pretrain_epochs": 100, "pretrain_batch_size": 128, "queue_size": 1024,
                          "momentum": 0.995, "synthetic_writers": 2000, "synthetic_samples": 12}},
}
PRETRAIN_PROFILES = _merged(
    {"model": {"weights": "none", "cut_layer": "conv3_block4_add"}, "report": {"umap": False, "gradcam_images": 0}},
    _PRETRAINING,
)

# Profiles of the pretraining comparison (experiments/pretrain_compare.py): each method pretrained as exp-pretrain's
# profile does, then the same triplet fine-tuning (the train section) from each start.
PRETRAIN_COMPARE_PROFILES = _merged(
    {"model": {"cut_layer": "conv3_block4_add"}, "report": {"umap": False, "gradcam_images": 0}},
    {
        "smoke": {**_PRETRAINING["smoke"],
                  "train": {"epochs": 2, "batch_size": 16, "sampler": "pk", "classes_per_batch": 4,
                            "images_per_class": 4, "schedule": "constant"}},
        "quick": {**_PRETRAINING["quick"],
                  "train": {"epochs": 4, "batch_size": 64, "sampler": "pk", "classes_per_batch": 16,
                            "images_per_class": 4, "schedule": "cosine", "learning_rate": 1e-3}},
        "blog": {**_PRETRAINING["blog"], "train": {"sampler": "pk", "classes_per_batch": 16, "images_per_class": 4}},
    },
)


def _field_type(cls, name):
    hint = typing.get_type_hints(cls)[name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


def _apply(section_obj, values: dict, where: str) -> None:
    valid = {f.name for f in dataclasses.fields(section_obj)}
    for name, value in values.items():
        if name not in valid:
            raise ConfigError(f"{where}: unknown setting {name!r}; expected one of {sorted(valid)}")
        setattr(section_obj, name, value)


def build_config(experiment: str, profile: str, profiles: dict, overrides: dict | None = None, **top) -> ExperimentConfig:
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile {profile!r}: expected one of {', '.join(PROFILES)}")
    config = ExperimentConfig(experiment=experiment, profile=profile, **top)
    for source, layer in (("profile " + profile, profiles.get(profile, {})), ("settings", overrides or {})):
        for section, values in layer.items():
            if section not in SECTIONS:
                raise ConfigError(f"{source}: unknown section {section!r}; expected one of {sorted(SECTIONS)}")
            _apply(getattr(config, section), values, source)
    validate(config)
    return config


def validate(config: ExperimentConfig) -> None:
    """Settings checks that need no data and no model (those are checked where they are known)."""
    train = config.train
    checks = [
        (train.strategy in STRATEGIES, f"unknown strategy {train.strategy!r}: expected one of {', '.join(STRATEGIES)}"),
        (train.sampler in SAMPLERS, f"unknown sampler {train.sampler!r}: expected one of {', '.join(SAMPLERS)}"),
        (train.schedule in SCHEDULES, f"unknown schedule {train.schedule!r}: expected one of {', '.join(SCHEDULES)}"),
        (train.margin > 0, f"--margin {train.margin}: expected a margin > 0"),
        (train.epochs >= 1, f"--epochs {train.epochs}: expected at least 1"),
        (train.batch_size >= 2, f"--batch-size {train.batch_size}: expected at least 2"),
        (train.learning_rate > 0, f"--learning-rate {train.learning_rate}: expected > 0"),
        (train.images_per_class >= 2 or train.sampler != "pk",
         f"--images-per-class {train.images_per_class}: expected K >= 2 so that every batch has positive pairs"),
        (train.sampler != "pk" or train.classes_per_batch * train.images_per_class == train.batch_size,
         (f"P×K sampler: --classes-per-batch {train.classes_per_batch} × --images-per-class {train.images_per_class} "
          f"= {train.classes_per_batch * train.images_per_class} images, but --batch-size is {train.batch_size}; "
          "expected P × K = batch size")),
        (train.cpu_devices is None or train.cpu_devices >= 1, f"--cpu-devices {train.cpu_devices}: expected >= 1"),
        (config.image.image_size >= 8, f"--image-size {config.image.image_size}: expected at least 8 pixels"),
        (train.seeds >= 1, f"--seeds {train.seeds}: expected at least 1"),
        (config.data.folds >= 1, f"--folds {config.data.folds}: expected at least 1 (1: the single default split)"),
        (config.data.fold is None or 0 <= config.data.fold < config.data.folds,
         f"--fold {config.data.fold}: expected a fold from 0 to {config.data.folds - 1} (--folds {config.data.folds})"),
        (train.margin2 > 0, f"--margin2 {train.margin2}: expected a margin > 0"),
        (train.scale is None or train.scale > 0, f"--scale {train.scale}: expected s > 0"),
        *_pretrain_checks(config.pretrain),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def _pretrain_checks(pretrain: PretrainSettings) -> list[tuple[bool, str]]:
    return [
        (pretrain.method in PRETRAIN_METHODS,
         f"--method {pretrain.method}: expected one of {', '.join(PRETRAIN_METHODS)}"),
        (pretrain.pretrain_epochs >= 1, f"--pretrain-epochs {pretrain.pretrain_epochs}: expected at least 1"),
        (pretrain.pretrain_batch_size >= 2, f"--pretrain-batch-size {pretrain.pretrain_batch_size}: expected at least 2"),
        (pretrain.pretrain_learning_rate > 0, f"--pretrain-learning-rate {pretrain.pretrain_learning_rate}: expected > 0"),
        (pretrain.temperature > 0, f"--temperature {pretrain.temperature}: expected τ > 0"),
        (pretrain.projection_dim >= 1, f"--projection-dim {pretrain.projection_dim}: expected at least 1"),
        (pretrain.queue_size >= 1, f"--queue-size {pretrain.queue_size}: expected at least 1"),
        (0 <= pretrain.momentum < 1, f"--momentum {pretrain.momentum}: expected a value in [0, 1)"),
        (pretrain.synthetic_writers >= 2, f"--synthetic-writers {pretrain.synthetic_writers}: expected at least 2"),
        (pretrain.synthetic_samples >= 4,
         f"--synthetic-samples {pretrain.synthetic_samples}: expected at least 4 (the P×K batches take 4 per class)"),
        (0 <= pretrain.augment_strength <= 1, f"--augment-strength {pretrain.augment_strength}: expected 0 to 1"),
    ]


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per dataclass field (`--name-with-dashes`); booleans get `--x/--no-x`. Defaults are None so that only
    what the user sets overrides the profile."""
    parser.add_argument("--profile", default="quick", help=f"one of {', '.join(PROFILES)} (default quick)")
    parser.add_argument("--runs", default="runs", help="folder that receives run folders (default runs/)")
    parser.add_argument("--resume", default=None, help="an interrupted run folder to continue")
    parser.add_argument("--config", default=None,
                        help="a YAML file of settings, by section (data, image, model, train, report, pretrain)")
    for section, cls in SECTIONS.items():
        group = parser.add_argument_group(section)
        for f in dataclasses.fields(cls):
            flag = "--" + f.name.replace("_", "-")
            kind = _field_type(cls, f.name)
            dest = f"{section}.{f.name}"
            if kind is bool:
                group.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=None)
            else:
                help_text = WEIGHTS_HELP if f.name == "weights" else None
                group.add_argument(flag, dest=dest, type=kind, default=None, metavar=f.name.upper(), help=help_text)


def overrides_from_args(args: argparse.Namespace) -> dict:
    overrides: dict = {}
    if args.config:
        try:
            with open(args.config) as handle:
                loaded = yaml.safe_load(handle) or {}
        except (OSError, yaml.YAMLError) as error:
            raise ConfigError(f"--config {args.config}: cannot read it as YAML ({error})") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"--config {args.config}: expected a mapping of sections ({', '.join(SECTIONS)})")
        for section, values in loaded.items():
            if section not in SECTIONS or not isinstance(values, dict):
                raise ConfigError(f"--config {args.config}: unknown section {section!r}; expected one of {sorted(SECTIONS)}")
            overrides.setdefault(section, {}).update(values)
    for dest, value in vars(args).items():
        if "." in dest and value is not None:
            section, name = dest.split(".", 1)
            overrides.setdefault(section, {})[name] = value
    return overrides


def config_from_args(experiment: str, profiles: dict, args: argparse.Namespace) -> ExperimentConfig:
    return build_config(experiment, args.profile, profiles, overrides_from_args(args), runs=args.runs, resume=args.resume)


def config_from_dict(values: dict) -> ExperimentConfig:
    """The inverse of `ExperimentConfig.to_dict` (reads a run folder's config.yaml)."""
    top = {k: v for k, v in values.items() if k not in SECTIONS}
    config = ExperimentConfig(**top)
    for section in SECTIONS:
        _apply(getattr(config, section), values.get(section, {}), "config.yaml")
    return config
