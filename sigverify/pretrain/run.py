"""Pretraining a cut backbone without ImageNet, on the training engine every experiment uses (`sigverify.training`):
SimCLR, MoCo v2, or triplet pretraining on synthetic writers. The run folder then holds the backbone's weights (what
`--weights <run folder>` loads into any experiment's model) and, as its evaluation, the verification metrics of the
frozen pretrained features (backbone + global average pooling, cosine distance, no fine-tuning) on the test pairs,
beside the same figures at the start of pretraining and on raw pixels.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras

from sigverify.data.augment import batch_augmenter, view_pair_augmenter
from sigverify.data.samplers import shuffled_batches, stream_batches, writer_and_forgery_batches
from sigverify.errors import ConfigError
from sigverify.evaluation.model import evaluate_model, reference_points
from sigverify.losses import MoCoLoss, NTXentLoss, TripletSemiHardLoss, count_positive_pairs, describe_loss
from sigverify.models.backbones import validate_model_settings
from sigverify.models.embedding import build_embedding_model
from sigverify.models.weights import PRETRAINED_INFO_FILE, PRETRAINED_WEIGHTS_FILE, build_cut_backbone, resolve_weights
from sigverify.pretrain.models import build_frozen_features_model, build_moco_model, build_simclr_model
from sigverify.pretrain.shipping import start_card
from sigverify.pretrain.sources import PretrainingImages, pretraining_images
from sigverify.reporting.run_files import training_facts, write_run_files
from sigverify.runs import RunFolder, write_json
from sigverify.settings import ExperimentConfig
from sigverify.steps import Prepared
from sigverify.training.engine import LabelledBatches, ViewBatches, make_optimizer

METHOD_NAMES = {"simclr": "SimCLR", "moco": "MoCo v2", "synthetic": "triplet pretraining on synthetic writers"}
SYNTHETIC_IMAGES_PER_CLASS = 4  # K of the synthetic writers' P×K batches


@dataclass
class PretrainPrepared:
    base: Prepared  # strategy, precision, and the chosen dataset (its test pairs evaluate the pretrained features)
    images: PretrainingImages  # what pretraining learns from


@dataclass
class PretrainingModel:
    model: keras.Model  # what the engine trains
    loss: keras.losses.Loss
    backbone: keras.Model  # the layers that are kept: the backbone up to the cut
    batch_has_signal: Callable | None = None


def with_method(config: ExperimentConfig, method: str) -> ExperimentConfig:
    sub = copy.deepcopy(config)
    sub.pretrain.method = method
    return sub


def as_pretraining_config(config: ExperimentConfig) -> ExperimentConfig:
    """The settings as pretraining runs them (its config.yaml and report): `--pretrain-*` length, batch and learning
    rate, a cosine schedule, augmentation on, shuffled batches of two augmented views (SimCLR, MoCo) or augmented P×K
    batches of synthetic writers with the semi-hard loss."""
    pretraining, pretrain = copy.deepcopy(config), config.pretrain
    synthetic = pretrain.method == "synthetic"
    batch = pretrain.pretrain_batch_size
    pretraining.train.epochs, pretraining.train.augment = pretrain.pretrain_epochs, True
    pretraining.optimizer.learning_rate, pretraining.optimizer.schedule = pretrain.pretrain_learning_rate, "cosine"
    pretraining.batches.batch_size, pretraining.batches.sampler = batch, "pk" if synthetic else "shuffled"
    if synthetic:
        pretraining.batches.classes_per_batch = batch // SYNTHETIC_IMAGES_PER_CLASS
        pretraining.batches.images_per_class = SYNTHETIC_IMAGES_PER_CLASS
    pretraining.loss.loss = {"simclr": "ntxent", "moco": "moco", "synthetic": "semihard"}[pretrain.method]
    return pretraining


def check_pretrain_settings(config: ExperimentConfig) -> None:
    """What can be refused before any data is read: the backend, the cut, the method's own settings."""
    if config.pretrain.method == "moco" and keras.backend.backend() != "tensorflow":
        raise ConfigError("--method moco: MoCo trains through the TensorFlow engine only (its model returns queries, "
                          "keys and the queue, which Keras's fit cannot hand to one loss); expected "
                          "KERAS_BACKEND=tensorflow, or --method simclr or synthetic")
    validate_model_settings(config.model.backbone, config.model.cut_layer, config.image.image_size)
    pretrain = config.pretrain
    if pretrain.method == "synthetic" and pretrain.pretrain_batch_size % (2 * SYNTHETIC_IMAGES_PER_CLASS):
        raise ConfigError(f"--pretrain-batch-size {pretrain.pretrain_batch_size}: synthetic-writer pretraining takes "
                          f"{SYNTHETIC_IMAGES_PER_CLASS} genuine signatures and {SYNTHETIC_IMAGES_PER_CLASS} forgeries "
                          f"of each writer of a batch; expected a multiple of {2 * SYNTHETIC_IMAGES_PER_CLASS}")
    if pretrain.method == "moco" and pretrain.pretrain_batch_size < 4:
        raise ConfigError(f"--pretrain-batch-size {pretrain.pretrain_batch_size}: MoCo normalizes its keys over two "
                          "halves of the batch; expected at least 4 images")
    if pretrain.method == "moco" and pretrain.queue_size < pretrain.pretrain_batch_size:
        raise ConfigError(f"--queue-size {pretrain.queue_size}: expected at least the batch (--pretrain-batch-size "
                          f"{pretrain.pretrain_batch_size}), so that a batch never overwrites its own keys")
    named_source = pretrain.unlabelled in ("train", "synthetic")
    if pretrain.method != "synthetic" and not named_source and not Path(pretrain.unlabelled).is_dir():
        raise ConfigError(f"--unlabelled {pretrain.unlabelled}: no such folder; expected train (the training writers' "
                          "images), synthetic, or a folder of images")


def prepare_pretraining(config: ExperimentConfig, base: Prepared) -> PretrainPrepared:
    """The method's images, checked against its batch, before any run folder exists."""
    pretrain = config.pretrain
    if pretrain.method == "moco" and base.engine.replicas > 1:
        raise ConfigError(f"--method moco: MoCo's queue and momentum encoder are one replica's state; this strategy has "
                          f"{base.engine.replicas} replicas: expected --strategy cpu or one GPU (SimCLR gathers its "
                          "negatives over replicas)")
    data = base.data
    images = pretraining_images(config, data.train.images, data.dataset, data.train_writers)
    batch = pretrain.pretrain_batch_size
    if len(images.images) < batch:
        raise ConfigError(f"--pretrain-batch-size {batch}: more than the {len(images.images)} pretraining images "
                          f"({images.description}); expected a smaller batch or more images")
    if images.labels is not None and batch // (2 * SYNTHETIC_IMAGES_PER_CLASS) > images.n_writers:
        raise ConfigError(f"--pretrain-batch-size {batch}: {batch // (2 * SYNTHETIC_IMAGES_PER_CLASS)} writers a "
                          f"batch, more than the {images.n_writers} synthetic writers; expected a smaller batch or "
                          "more --synthetic-writers")
    return PretrainPrepared(base, images)


def build_pretraining_model(config: ExperimentConfig, weights: str | None) -> PretrainingModel:
    """The method's model around a backbone cut at `--cut-layer`, starting from `weights` (resolved)."""
    model_settings, pretrain = config.model, config.pretrain
    shape = config.image.image_size
    if pretrain.method == "synthetic":
        # The triplet experiment's own model (conv head, L2 normalization); the head is dropped afterwards.
        embedding = build_embedding_model(model_settings.backbone, model_settings.cut_layer, shape, weights=weights,
                                          embedding_dim=model_settings.embedding_dim)
        backbone = keras.Model(embedding.input, embedding.get_layer(model_settings.cut_layer).output,
                               name=f"{model_settings.backbone}_to_{model_settings.cut_layer}")
        loss = TripletSemiHardLoss(margin=config.loss.margin)
        return PretrainingModel(embedding, loss, backbone, lambda labels: count_positive_pairs(labels) > 0)
    backbone = build_cut_backbone(model_settings.backbone, model_settings.cut_layer, shape, weights=weights)
    if pretrain.method == "simclr":
        return PretrainingModel(build_simclr_model(backbone, pretrain.projection_dim),
                                NTXentLoss(temperature=pretrain.temperature), backbone)
    key_backbone = build_cut_backbone(model_settings.backbone, model_settings.cut_layer, shape, weights=None,
                                      name="key_backbone")
    model = build_moco_model(backbone, key_backbone, pretrain.projection_dim, pretrain.queue_size, pretrain.momentum)
    return PretrainingModel(model, MoCoLoss(temperature=pretrain.temperature), backbone)


def pretraining_feed(config: ExperimentConfig, images: PretrainingImages) -> LabelledBatches | ViewBatches:
    """Two augmented views of shuffled images (SimCLR, MoCo), or augmented P×K batches of the synthetic writers'
    classes, each writer's genuine and forged classes together; `--pretrain-steps-per-epoch` batches an epoch (0: one
    pass over the images)."""
    batches, seed, strength = as_pretraining_config(config).batches, config.train.seed, config.pretrain.augment_strength
    if images.labels is not None:
        steps = config.pretrain.pretrain_steps_per_epoch or max(1, len(images.labels) // batches.batch_size)
        writers_per_batch = batches.classes_per_batch // 2
        return LabelledBatches(
            images.images, images.labels,
            lambda epoch: writer_and_forgery_batches(images.labels, images.n_writers, writers_per_batch,
                                                     batches.images_per_class, seed, epoch, steps),
            lambda epoch: batch_augmenter(seed, epoch, strength))
    n_images, steps = len(images.images), config.pretrain.pretrain_steps_per_epoch
    if steps:
        batches_of_epoch = lambda epoch: stream_batches(n_images, batches.batch_size, seed, epoch, steps)
    else:
        batches_of_epoch = lambda epoch: shuffled_batches(n_images, batches.batch_size, seed, epoch)
    return ViewBatches(images.images, batches_of_epoch, lambda epoch: view_pair_augmenter(seed, epoch, strength))


def save_backbone(run: RunFolder, backbone: keras.Model, info: dict) -> None:
    """backbone.weights.h5 (Keras's format needs that suffix, so the temporary file keeps it), then backbone.json,
    whose presence marks a finished pretraining run."""
    temporary = run.file(f".backbone.{os.getpid()}.tmp.weights.h5")
    try:
        backbone.save_weights(temporary)
        os.replace(temporary, run.file(PRETRAINED_WEIGHTS_FILE))
    finally:
        if temporary.exists():
            temporary.unlink()
    write_json(run.file(PRETRAINED_INFO_FILE), info)


def pretrain_and_report(run: RunFolder, config: ExperimentConfig, prepared: PretrainPrepared) -> dict:
    """Pretrain the backbone with `--method`, save it into the run folder, and evaluate its frozen features."""
    base, images, pretrain, model_settings = prepared.base, prepared.images, config.pretrain, config.model
    pretraining_config = as_pretraining_config(config)
    feed = pretraining_feed(config, images)
    with base.engine.scope():
        weights, start_description = resolve_weights(model_settings.weights, model_settings.backbone)
        start = start_card(weights, model_settings.backbone)  # read before training: a bad card loses no work
        setup = build_pretraining_model(config, weights)
        optimizer = make_optimizer(pretraining_config.optimizer, pretraining_config.train.epochs, feed.steps())
        features = build_frozen_features_model(setup.backbone)
    # Before pretraining: the figures of the start (random initialisation) and of raw pixels.
    references = reference_points(features, base.data)
    result = base.engine.fit(run.path, setup.model, setup.loss, feed, pretraining_config.train.epochs, optimizer,
                             batch_has_signal=setup.batch_has_signal)

    method_name = METHOD_NAMES[pretrain.method]
    info = {"method": pretrain.method, "method_name": method_name, "backbone": model_settings.backbone,
            "cut_layer": model_settings.cut_layer, "image_size": config.image.image_size, "images": images.description,
            "n_images": len(images.images), "epochs": pretraining_config.train.epochs,
            "batch_size": pretraining_config.batches.batch_size, "start": start_description, "run": str(run.path.resolve()),
            "dataset": base.data.dataset, "dataset_writers": images.dataset_writers,
            "start_card": start}
    save_backbone(run, setup.backbone, info)
    facts = training_facts(
        base.engine, features, f"pretrained by {method_name} in this run (from {start_description})",
        f"{model_settings.backbone} up to {model_settings.cut_layer} + global average pooling: frozen pretrained "
        "features, no fine-tuning", _describe_pretraining_loss(setup, pretrain), result, references)
    facts["pretraining"] = info
    return write_run_files(run, pretraining_config, features, base.data, evaluate_model(features, base.data, "cosine"),
                           facts, result.history)


def _describe_pretraining_loss(setup: PretrainingModel, pretrain) -> str:
    text = describe_loss(setup.loss)
    if pretrain.method == "synthetic":
        return f"{text} on synthetic writers (skilled forgeries as their own classes), augmented"
    text += f" on two augmented views of each image (projection head of {pretrain.projection_dim}, dropped after)"
    if pretrain.method == "moco":
        text += f"; queue of {pretrain.queue_size} negatives, key encoder momentum {pretrain.momentum}"
    return text

