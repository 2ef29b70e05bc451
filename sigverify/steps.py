"""The steps that several experiments share, each a composition of the stages (data → models and losses → training →
evaluation → reporting): what an experiment has before its run folder exists, the feeds of its training and
validation writers, and the online-mining training of an embedding model followed by its evaluation and run files."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import keras

from sigverify.data.augment import FINE_TUNING_STRENGTH, batch_augmenter
from sigverify.data.prepare import ExperimentData, SplitData, prepare_data, test_writers_of_every_run
from sigverify.data.samplers import shuffled_batches, training_batches
from sigverify.distances import scoring_distance
from sigverify.errors import ConfigError
from sigverify.evaluation.model import evaluate_model, reference_points
from sigverify.losses import MarginSoftmaxLoss, count_positive_pairs, describe_loss, loss_from_settings
from sigverify.models.weights import pretraining_info
from sigverify.models.zoo import embedding_model_from_settings
from sigverify.reporting.run_files import training_facts, write_run_files
from sigverify.runs import RunFolder
from sigverify.settings import ExperimentConfig
from sigverify.training import make_engine
from sigverify.training.engine import LabelledBatches, TrainingEngine, TrainResult, make_optimizer


@dataclass
class Prepared:
    """What an experiment has before its run folder exists: the training engine (strategy or distribution, precision)
    and the data."""

    engine: TrainingEngine
    data: ExperimentData


def prepare_experiment(config: ExperimentConfig, check_settings: Callable[[], object] | None = None,
                       labelled_batches: bool = True) -> Prepared:
    """The engine first (logical CPU devices must be set before the backend starts), the experiment's own settings
    check (`check_settings()`, raising ConfigError), then data and preprocessing, and (`labelled_batches`) whether the
    sampler can draw its batches from the training images: all before any run folder."""
    engine = make_engine(config.devices)
    if check_settings is not None:
        check_settings()
    data = prepare_data(config)
    check_start_saw_no_test_writer(config, data)
    if labelled_batches:
        labelled_feed(data.train, config).steps()
    return Prepared(engine, data)


def check_start_saw_no_test_writer(config: ExperimentConfig, data: ExperimentData) -> None:
    """Refuse a start (`--weights <pretraining run>`) whose pretraining learnt from writers that a run of these settings
    tests on (self-supervised pretraining on another split's training writers, say)."""
    info = pretraining_info(config.model.weights, config.model.backbone)
    if info is None or info.get("dataset") != data.dataset:
        return
    seen = sorted(set(info.get("dataset_writers") or []) & test_writers_of_every_run(data, config))
    if seen:
        raise ConfigError(f"--weights {config.model.weights}: that pretraining learnt from writers {seen[:10]} of "
                          f"{data.dataset}, which these settings test on; expected a start that never saw a test writer "
                          "(pretrain on this split's training writers, on synthetic writers, or on another folder)")


def labelled_feed(split: SplitData, config: ExperimentConfig) -> LabelledBatches:
    """The training writers' images in the batches of `config.batches`, augmented with `--augment` (at
    `--augment-level`)."""
    seed, level = config.train.seed, config.train.augment_level
    strength = FINE_TUNING_STRENGTH if level is None else level
    augment = (lambda epoch: batch_augmenter(seed, epoch, strength)) if config.train.augment else None
    return LabelledBatches(split.images, split.labels, training_batches(split.labels, config.batches, seed), augment)


def validation_feed(split: SplitData, config: ExperimentConfig) -> LabelledBatches:
    """The test writers' images in fixed batches (for the history plot and the best checkpoint only)."""
    batches = shuffled_batches(len(split.labels), min(config.batches.batch_size, len(split.labels)), config.train.seed, 0)
    return LabelledBatches(split.images, split.labels, lambda epoch: batches)


def train_and_report(run: RunFolder, config: ExperimentConfig, prepared: Prepared,
                     build_model: Callable[[], tuple[keras.Model, str, str]] | None = None,
                     build_loss: Callable[[SplitData], keras.losses.Loss] | None = None,
                     loss_description: str | None = None) -> dict:
    """Online-mining training of an embedding model on labelled images, then its evaluation and run files.

    `build_model()` → (model, weights description, model description, the variables of its pretrained layers, which
    learn at `--backbone-rate-scale` of the rate) and `build_loss(training split)` → loss are called inside the
    engine's scope (a loss may own variables); by default the model and the loss of the settings. The loss
    description defaults to the loss's class and settings."""
    if build_model is None:
        build_model = lambda: embedding_model_from_settings(config.model, config.image.image_size)
    if build_loss is None:
        build_loss = lambda train: loss_from_settings(
            config.loss, train.labels, config.model.embedding_dim, genuine_labels=train.labels[train.index["genuine"].to_numpy()])
    engine, data = prepared.engine, prepared.data
    train_feed = labelled_feed(data.train, config)
    with engine.scope():
        model, weights_description, model_description, pretrained_variables = build_model()
        loss = build_loss(data.train)
        optimizer = make_optimizer(config.optimizer, config.train.epochs, train_feed.steps(), pretrained_variables)
    references = reference_points(model, data)
    classifies = isinstance(loss, MarginSoftmaxLoss)  # every batch teaches it: no positive pair is needed
    # A margin-softmax loss has no class weights for the test writers' classes: it has no validation loss.
    result: TrainResult = engine.fit(
        run.path, model, loss, train_feed, config.train.epochs, optimizer,
        validation=None if classifies else validation_feed(data.test, config),
        batch_has_signal=None if classifies else lambda labels: count_positive_pairs(labels) > 0)
    facts = training_facts(engine, model, weights_description, model_description,
                           loss_description or describe_loss(loss), result, references)
    if pretrained_variables and config.optimizer.backbone_rate_scale != 1.0:  # as make_optimizer applies it
        facts["backbone_rate"] = (f"the pretrained layers' {len(pretrained_variables)} variables at "
                                  f"{config.optimizer.backbone_rate_scale:g} of it")
    # Margin-softmax losses train angles (cosines to class weights): they are scored by cosine distance.
    distance = "cosine" if classifies else scoring_distance(config.loss.distance, l2_normalized=config.model.normalize)
    return write_run_files(run, config, model, data, evaluate_model(model, data, distance), facts, result.history)
