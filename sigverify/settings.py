"""Experiment settings: one dataclass per concern, and the flags/YAML that fill them (each experiment script holds its
own profiles).

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

PROFILES = ("smoke", "quick", "full", "blog")
MAX_IMAGE_SIZE = 1024
STRATEGIES = ("auto", "cpu", "mirrored", "multiworker")
# Keras dtype policies (the losses and the L2 normalization stay float32 under the mixed ones). float32 is the default
# by measurement: see `sigverify.training.engine.set_precision`.
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
SAMPLERS = ("shuffled", "pk")
HEADS = ("conv", "gap")  # the builders: sigverify.models.embedding.HEAD_BUILDERS
SCHEDULES = ("exponential", "epoch-exponential", "cosine", "constant")
WEIGHTS_HELP = ("auto (imagenet if it can be loaded, else the shipped signature weights, else random), imagenet, "
                "signatures, none, a pretraining run folder "
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
    # k >= 2: the test writers become validation fold `validation_fold` of k writer-disjoint folds of the split's
    # training writers, the others train; the split's own test writers are not loaded (tuning, make exp-tune). 0: off
    validation_folds: int = 0
    validation_fold: int | None = None  # with validation_folds >= 2 (None: fold 0; exp-tune runs every one)


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
    head: str = "conv"  # of HEADS: "conv" (the post's) or "gap"
    unfreeze_from: str | None = None  # fine-tune a pretrained backbone from this layer on, the earlier layers frozen
    zoo: str | None = None  # models experiment: comma-separated MODEL_ZOO names (None: every triplet model and baseline)


@dataclass
class LossSettings:
    loss: str = "semihard"  # a name of sigverify.losses.LOSSES
    losses: str | None = None  # losses experiment: comma-separated loss names (None: all of them)
    margin: float = 1.0  # triplet, quadruplet (first margin) and contrastive losses
    margin2: float = 0.5  # quadruplet loss: the margin of the negative-pair term
    scale: float | None = None  # margin-softmax losses: s (None: the loss's own default)
    softmax_margin: float | None = None  # margin-softmax losses: m (None: the loss's own default)
    distance: str = "euclidean"  # of sigverify.distances.METRICS: what the loss measures between embeddings


@dataclass
class BatchSettings:
    batch_size: int = 64
    sampler: str = "shuffled"  # the original: shuffled batches from all training classes
    classes_per_batch: int = 16  # P of the P×K sampler
    images_per_class: int = 4  # K of the P×K sampler


@dataclass
class OptimizerSettings:
    learning_rate: float = 1e-3
    schedule: str = "exponential"
    decay_steps: int = 10
    decay_rate: float = 0.7
    # the layers a pretrained start gave (the backbone up to the cut) learn at this fraction of learning_rate, the new
    # head at learning_rate; a random start trains every layer at learning_rate
    backbone_rate_scale: float = 1.0


@dataclass
class TrainSettings:
    epochs: int = 25
    seed: int = 0
    seeds: int = 1  # repeat each run with seeds seed, seed + 1, …, seed + seeds - 1 (one sub-run each)
    augment: bool = False  # augment the training images (sigverify.data.augment) at `augment_level`
    augment_level: float | None = None  # the augmentations' strength, 0 to 1 (None: FINE_TUNING_STRENGTH, 0.5)


@dataclass
class DeviceSettings:
    strategy: str = "auto"
    cpu_devices: int | None = None
    precision: str = "float32"  # one of PRECISIONS
    jit: bool = False
    deterministic: bool = False


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
    synthetic_writers: int = 5000
    synthetic_samples: int = 12  # genuine signatures per synthetic writer, and as many skilled forgeries
    pretrain_steps_per_epoch: int = 0  # batches an epoch, between checkpoints (0: one pass over the images)
    augment_strength: float = 1.0


@dataclass
class TuneSettings:
    """The hyperparameter search of make exp-tune (experiments/tune.py: its search space per profile)."""

    trials: int = 20  # trials to finish (complete or pruned); a resumed study runs until this many have
    compare_default: bool = True  # also train the profile's own settings on the test writers, beside the best ones


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
    loss: LossSettings = field(default_factory=LossSettings)
    batches: BatchSettings = field(default_factory=BatchSettings)
    optimizer: OptimizerSettings = field(default_factory=OptimizerSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    devices: DeviceSettings = field(default_factory=DeviceSettings)
    report: ReportSettings = field(default_factory=ReportSettings)
    pretrain: PretrainSettings = field(default_factory=PretrainSettings)
    tune: TuneSettings = field(default_factory=TuneSettings)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


SECTIONS = {"data": DataSettings, "image": ImageSettings, "model": ModelSettings, "loss": LossSettings,
            "batches": BatchSettings, "optimizer": OptimizerSettings, "train": TrainSettings, "devices": DeviceSettings,
            "report": ReportSettings, "pretrain": PretrainSettings, "tune": TuneSettings}
# Which section holds each setting: reads the config.yaml of runs made before the settings had their own sections
# (every training setting then sat under `train`).
SECTION_OF_SETTING = {f.name: section for section, cls in SECTIONS.items() for f in dataclasses.fields(cls)}
LEGACY_DISTANCES = {"L2": "euclidean", "squared-L2": "squared-euclidean", "angular": "cosine"}  # TensorFlow Addons'


def with_base(base: dict, profiles: dict) -> dict:
    """Profiles (name → {section: {setting: value}}) with the settings of `base` under each, the profile's own winning:
    what an experiment script writes once for all its profiles."""
    return {name: {section: {**base.get(section, {}), **profile.get(section, {})}
                   for section in set(base) | set(profile)} for name, profile in profiles.items()}


def derived(profiles: dict, changes: dict | None = None, everywhere: dict | None = None) -> dict:
    """Another recipe's profiles with this one's differences: the `everywhere` settings in each profile, then the
    profile's own `changes` ({profile: {section: {setting: value}}}), each winning over what it lands on."""
    def merged(*layers: dict) -> dict:
        return {section: {key: value for layer in layers for key, value in layer.get(section, {}).items()}
                for section in dict.fromkeys(section for layer in layers for section in layer)}

    return {name: merged(profile, everywhere or {}, (changes or {}).get(name, {})) for name, profile in profiles.items()}


def _field_type(cls, name):
    hint = typing.get_type_hints(cls)[name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


_KIND_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _checked_value(cls, name: str, value, where: str):
    """`value` as the type of the setting `name` of `cls` (an int is a valid float), or a ConfigError naming it."""
    hint = typing.get_type_hints(cls)[name]
    optional = type(None) in typing.get_args(hint)
    kind = _field_type(cls, name)
    if value is None and optional:
        return None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, kind) and (kind is bool or not isinstance(value, bool)):
        return value
    flag = "--" + name.replace("_", "-")
    raise ConfigError(f"{where}: {flag} {value!r}: expected {_KIND_WORDS.get(kind, kind.__name__)}"
                      + (" or null" if optional else ""))


def _apply(section_obj, values: dict, where: str) -> None:
    valid = {f.name for f in dataclasses.fields(section_obj)}
    for name, value in values.items():
        if name not in valid:
            raise ConfigError(f"{where}: unknown setting {name!r}; expected one of {sorted(valid)}")
        setattr(section_obj, name, _checked_value(type(section_obj), name, value, where))


# Settings that only some experiments use: set for another one they would be silently ignored, so they are refused.
PRETRAINING_EXPERIMENTS = ("pretrain", "pretrain-compare", "pretrain-backbone")
EXPERIMENTS_OF_SETTING = {
    "unfreeze_from": ("contrastive", "triplet", "losses", "pretrain-compare", "tune"),
    "zoo": ("models",),
    "losses": ("losses", "tune"),
    **{f.name: ("tune",) for f in dataclasses.fields(TuneSettings)},
    **{f.name: PRETRAINING_EXPERIMENTS for f in dataclasses.fields(PretrainSettings)},
    "starts": ("pretrain-compare",),
}
# Settings an experiment fixes itself (its recipe), refused when given: (settings, what to use instead).
FIXED_BY_EXPERIMENT = {
    "contrastive": (("loss", "losses", "sampler", "classes_per_batch", "images_per_class", "cut_layer", "normalize",
                     "distance"), "the post's Siamese recipe: frozen backbone, pairs, Euclidean distance"),
    "models": (("loss", "backbone", "cut_layer", "normalize"), "each zoo model's own, and the semi-hard loss"),
    "losses": (("loss",), "--losses names the losses compared"),
    "pretrain": (("loss", "epochs", "batch_size", "sampler", "classes_per_batch", "images_per_class", "learning_rate",
                  "schedule", "decay_steps", "decay_rate", "augment"),
                 "pretraining has its own: --method, --pretrain-epochs, --pretrain-batch-size, --pretrain-learning-rate"),
}
FIXED_BY_EXPERIMENT["tune"] = (("loss", "margin", "learning_rate", "cut_layer", "image_size", "augment", "augment_level",
                                "validation_fold", "seeds"),
                               ("each trial samples them from the profile's search space (experiments/tune.py) and "
                                "scores every validation fold of one seed; --losses names the candidate losses"))
FIXED_BY_EXPERIMENT["pretrain-backbone"] = (FIXED_BY_EXPERIMENT["pretrain"][0] + ("method", "unlabelled", "starts"),
                                            ("SimCLR on synthetic writers with its own --pretrain-* length, batch "
                                             "and learning rate; exp-pretrain runs the other methods"))


def _check_used_by(experiment: str, overrides: dict) -> None:
    for values in overrides.values():
        for name in values:
            flag = "--" + name.replace("_", "-")
            users = EXPERIMENTS_OF_SETTING.get(name)
            if users is not None and experiment not in users:
                raise ConfigError(f"{flag}: a setting of {' and '.join(f'exp-{user}' for user in users)}; the "
                                  f"{experiment} experiment does not use it: leave it out")
            fixed, instead = FIXED_BY_EXPERIMENT.get(experiment, ((), ""))
            if name in fixed:
                raise ConfigError(f"{flag}: the {experiment} experiment sets it itself ({instead}); leave it out")


def settings_accepted_by(config: ExperimentConfig, experiment: str, leave_out=("devices",)) -> dict:
    """The settings of `config` by section, as `--config` of `experiment` takes them: without another experiment's
    settings, the ones `experiment` fixes itself, and the `leave_out` sections (the machine's, by default)."""
    fixed = FIXED_BY_EXPERIMENT.get(experiment, ((), ""))[0]
    accepted = {}
    for section in SECTIONS:
        values = {name: value for name, value in dataclasses.asdict(getattr(config, section)).items()
                  if experiment in EXPERIMENTS_OF_SETTING.get(name, (experiment,)) and name not in fixed}
        if values and section not in leave_out:
            accepted[section] = values
    return accepted


def build_config(experiment: str, profile: str, profiles: dict, overrides: dict | None = None, **top) -> ExperimentConfig:
    known = [name for name in PROFILES if name in profiles] or list(PROFILES)  # no profiles: the defaults, by any name
    if profile not in known:
        raise ConfigError(f"unknown profile {profile!r}: expected one of {', '.join(known)}")
    config = ExperimentConfig(experiment=experiment, profile=profile, **top)
    _check_used_by(experiment, overrides or {})
    for source, layer in (("profile " + profile, profiles.get(profile, {})), ("the settings given", overrides or {})):
        for section, values in layer.items():
            if section not in SECTIONS:
                raise ConfigError(f"{source}: unknown section {section!r}; expected one of {sorted(SECTIONS)}")
            _apply(getattr(config, section), values, source)
    validate(config)
    return config


def validate(config: ExperimentConfig) -> None:
    """Settings checks that need no data and no model (those are checked where they are known)."""
    train, batches, loss, optimizer, devices = config.train, config.batches, config.loss, config.optimizer, config.devices
    pk = batches.classes_per_batch * batches.images_per_class
    checks = [
        (devices.strategy in STRATEGIES, f"unknown strategy {devices.strategy!r}: expected one of {', '.join(STRATEGIES)}"),
        (devices.precision in PRECISIONS,
         f"--precision {devices.precision}: expected one of {', '.join(PRECISIONS)}"),
        (config.model.head in HEADS, f"--head {config.model.head}: expected one of {', '.join(HEADS)}"),
        (batches.sampler in SAMPLERS, f"unknown sampler {batches.sampler!r}: expected one of {', '.join(SAMPLERS)}"),
        (optimizer.schedule in SCHEDULES,
         f"unknown schedule {optimizer.schedule!r}: expected one of {', '.join(SCHEDULES)}"),
        (loss.margin > 0, f"--margin {loss.margin}: expected a margin > 0"),
        (train.epochs >= 1, f"--epochs {train.epochs}: expected at least 1"),
        (batches.batch_size >= 2, f"--batch-size {batches.batch_size}: expected at least 2"),
        (optimizer.learning_rate > 0, f"--learning-rate {optimizer.learning_rate}: expected > 0"),
        (0 < optimizer.backbone_rate_scale <= 1,
         f"--backbone-rate-scale {optimizer.backbone_rate_scale}: expected a fraction of --learning-rate in (0, 1]"),
        (batches.images_per_class >= 2 or batches.sampler != "pk",
         f"--images-per-class {batches.images_per_class}: expected K >= 2 so that every batch has positive pairs"),
        (batches.sampler != "pk" or pk == batches.batch_size,
         (f"P×K sampler: --classes-per-batch {batches.classes_per_batch} × --images-per-class "
          f"{batches.images_per_class} = {pk} images, but --batch-size is {batches.batch_size}; "
          "expected P × K = batch size")),
        (devices.cpu_devices is None or devices.cpu_devices >= 1, f"--cpu-devices {devices.cpu_devices}: expected >= 1"),
        (config.image.image_size >= 8, f"--image-size {config.image.image_size}: expected at least 8 pixels"),
        (train.seeds >= 1, f"--seeds {train.seeds}: expected at least 1"),
        (config.data.folds >= 1, f"--folds {config.data.folds}: expected at least 1 (1: the single default split)"),
        (config.data.fold is None or 0 <= config.data.fold < config.data.folds,
         f"--fold {config.data.fold}: expected a fold from 0 to {config.data.folds - 1} (--folds {config.data.folds})"),
        (config.data.validation_folds == 0 or config.data.validation_folds >= 2,
         f"--validation-folds {config.data.validation_folds}: expected 0 (off) or at least 2"),
        (config.data.validation_fold is None
         or config.data.validation_folds >= 2 and 0 <= config.data.validation_fold < config.data.validation_folds,
         (f"--validation-fold {config.data.validation_fold}: expected a fold from 0 to "
          f"{config.data.validation_folds - 1} (--validation-folds {config.data.validation_folds})"
          if config.data.validation_folds >= 2 else
          f"--validation-fold {config.data.validation_fold}: expected --validation-folds k >= 2 with it")),
        (train.augment_level is None or 0 <= train.augment_level <= 1,
         f"--augment-level {train.augment_level}: expected 0 to 1"),
        (config.tune.trials >= 1, f"--trials {config.tune.trials}: expected at least 1"),
        (loss.margin2 > 0, f"--margin2 {loss.margin2}: expected a margin > 0"),
        (loss.scale is None or loss.scale > 0, f"--scale {loss.scale}: expected s > 0"),
        (config.model.embedding_dim >= 1, f"--embedding-dim {config.model.embedding_dim}: expected at least 1"),
        (config.image.image_size <= MAX_IMAGE_SIZE,
         (f"--image-size {config.image.image_size}: expected at most {MAX_IMAGE_SIZE} pixels (no backbone here needs "
          "more; the post uses 224)")),
        (config.data.max_writers is None or config.data.max_writers >= 1,
         f"--max-writers {config.data.max_writers}: expected at least 1"),
        (config.data.max_samples is None or config.data.max_samples >= 1,
         f"--max-samples {config.data.max_samples}: expected at least 1"),
        (config.report.gradcam_images >= 0, f"--gradcam-images {config.report.gradcam_images}: expected 0 or more"),
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
        (pretrain.pretrain_steps_per_epoch >= 0,
         f"--pretrain-steps-per-epoch {pretrain.pretrain_steps_per_epoch}: expected 0 (one pass) or more"),
        (pretrain.synthetic_writers >= 2, f"--synthetic-writers {pretrain.synthetic_writers}: expected at least 2"),
        (pretrain.synthetic_samples >= 4,
         f"--synthetic-samples {pretrain.synthetic_samples}: expected at least 4 (the P×K batches take 4 per class)"),
        (0 <= pretrain.augment_strength <= 1, f"--augment-strength {pretrain.augment_strength}: expected 0 to 1"),
    ]


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per dataclass field (`--name-with-dashes`); booleans get `--x/--no-x`. Defaults are None so that only
    what the user sets overrides the profile."""
    parser.add_argument("--profile", default=None, help=f"one of {', '.join(PROFILES)} (default quick)")
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
            if section not in SECTIONS:
                raise ConfigError(f"--config {args.config}: unknown section {section!r}; expected one of {sorted(SECTIONS)}")
            if not isinstance(values, dict):
                raise ConfigError(f"--config {args.config}: section {section!r} is {values!r}; expected a mapping of "
                                  f"its settings (e.g. {section}: {{{dataclasses.fields(SECTIONS[section])[0].name}: ...}})")
            fields = {f.name for f in dataclasses.fields(SECTIONS[section])}
            for name, value in values.items():
                if name not in fields:
                    raise ConfigError(f"--config {args.config}: unknown setting {name!r} in section {section!r}; "
                                      f"expected one of {sorted(fields)}")
                overrides.setdefault(section, {})[name] = _checked_value(SECTIONS[section], name, value,
                                                                         f"--config {args.config}")
    for dest, value in vars(args).items():
        if "." in dest and value is not None:
            section, name = dest.split(".", 1)
            overrides.setdefault(section, {})[name] = value
    return overrides


def config_from_args(experiment: str, profiles: dict, args: argparse.Namespace) -> ExperimentConfig:
    return build_config(experiment, args.profile or "quick", profiles, overrides_from_args(args), runs=args.runs,
                        resume=args.resume)


def contradicted_settings(config: ExperimentConfig, args: argparse.Namespace) -> list[str]:
    """The flags (and --config settings, and --profile) given with --resume that differ from the run's settings."""
    contradicted = [f"--profile {args.profile} (the run: {config.profile})"] if args.profile not in (None,
                                                                                                     config.profile) else []
    for section, values in overrides_from_args(args).items():
        for name, value in values.items():
            recorded = getattr(getattr(config, section), name)
            try:
                given = _checked_value(SECTIONS[section], name, value, "--resume")
            except ConfigError:
                given = value
            if given != recorded:
                contradicted.append(f"--{name.replace('_', '-')} {value} (the run: {recorded})")
    return contradicted


def config_from_dict(values: dict) -> ExperimentConfig:
    """The inverse of `ExperimentConfig.to_dict` (reads a run folder's config.yaml, also one written before the
    training settings had sections of their own and the distances one vocabulary)."""
    top = {k: v for k, v in values.items() if k not in SECTIONS}
    config = ExperimentConfig(**top)
    sections = {section: dict(values.get(section) or {}) for section in SECTIONS}
    legacy = sections["train"]
    if "distance_metric" in legacy:
        legacy["distance"] = LEGACY_DISTANCES.get(legacy["distance_metric"], legacy.pop("distance_metric"))
        legacy.pop("distance_metric", None)
    for name in [name for name in legacy if SECTION_OF_SETTING.get(name, "train") != "train"]:
        sections[SECTION_OF_SETTING[name]].setdefault(name, legacy.pop(name))
    for old in (legacy, sections["devices"]):  # before --precision: a switch, mixed meaning bfloat16 on our CPUs
        if "mixed_precision" in old:
            sections["devices"].setdefault("precision", "mixed_bfloat16" if old.pop("mixed_precision") else "float32")
    for section, settings in sections.items():
        _apply(getattr(config, section), settings, "config.yaml")
    return config


def comma_list(value: str | None, flag: str, choices, default=None, what: str = "name") -> list[str]:
    """The names of a comma-separated setting (`--losses semihard,arcface`) in order, once each, all from `choices`;
    `default` (or every choice) when the setting is unset. `what` names one entry in the error ("unknown loss 'x'")."""
    if value is None:
        return list(default if default is not None else choices)
    names = list(dict.fromkeys(name.strip() for name in str(value).split(",") if name.strip()))
    unknown = [name for name in names if name not in choices]
    if not names or unknown:
        problem = f"unknown {what} {unknown[0]!r}" if unknown else "no names"
        raise ConfigError(f"{flag} {value!r}: {problem}; expected comma-separated names from {', '.join(choices)}")
    return names
