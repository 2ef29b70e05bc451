"""Pretraining a cut backbone without ImageNet, on the training loop every experiment uses (`sigverify.train`):
SimCLR, MoCo v2, or triplet pretraining on synthetic writers. The run folder then holds the backbone's weights (what
`--weights <run folder>` loads into any experiment's model) and, as its evaluation, the verification metrics of the
frozen pretrained features (backbone + global average pooling, cosine distance, no fine-tuning) on the test pairs,
beside the same figures at the start of pretraining and on raw pixels.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras

from sigverify.augment import batch_augmenter, view_pair_augmenter
from sigverify.config import ExperimentConfig, TrainSettings
from sigverify.data.samplers import check_pk, pk_batches, shuffled_batches
from sigverify.errors import ConfigError
from sigverify.losses import MoCoLoss, NTXentLoss, TripletSemiHardLoss, count_positive_pairs, describe_loss
from sigverify.models import (
    PRETRAINED_INFO_FILE,
    PRETRAINED_WEIGHTS_FILE,
    build_cut_backbone,
    build_embedding_model,
    resolve_weights,
    validate_model_settings,
)
from sigverify.pipeline import Prepared, evaluate_and_report, reference_points, training_facts
from sigverify.pretrain.models import build_frozen_features_model, build_moco_model, build_simclr_model
from sigverify.pretrain.sources import PretrainingImages, pretraining_images
from sigverify.runs import RunFolder, write_json
from sigverify.train_common import make_optimizer

METHOD_NAMES = {"simclr": "SimCLR", "moco": "MoCo v2", "synthetic": "triplet pretraining on synthetic writers"}
SYNTHETIC_IMAGES_PER_CLASS = 4  # K of the synthetic writers' P×K batches


@dataclass
class PretrainPrepared:
    base: Prepared  # strategy, precision, and the chosen dataset (its test pairs evaluate the pretrained features)
    images: PretrainingImages  # what pretraining learns from


@dataclass
class PretrainingModel:
    model: keras.Model  # what the loop trains
    loss: keras.losses.Loss
    loss_fn: Callable  # loss(targets, outputs) as the loop calls it
    backbone: keras.Model  # the layers that are kept: the backbone up to the cut
    batch_has_signal: Callable | None = None


def with_method(config: ExperimentConfig, method: str) -> ExperimentConfig:
    sub = copy.deepcopy(config)
    sub.pretrain.method = method
    return sub


def pretraining_settings(config: ExperimentConfig) -> TrainSettings:
    """The train section as pretraining runs it: `--pretrain-*` length, batch and learning rate, a cosine schedule,
    shuffled batches of two augmented views (SimCLR, MoCo) or augmented P×K batches of synthetic writers."""
    pretrain, train = config.pretrain, config.train
    synthetic = pretrain.method == "synthetic"
    batch = pretrain.pretrain_batch_size
    return dataclasses.replace(
        train, epochs=pretrain.pretrain_epochs, batch_size=batch, learning_rate=pretrain.pretrain_learning_rate,
        schedule="cosine", sampler="pk" if synthetic else "shuffled", augment=True,
        classes_per_batch=batch // SYNTHETIC_IMAGES_PER_CLASS if synthetic else train.classes_per_batch,
        images_per_class=SYNTHETIC_IMAGES_PER_CLASS if synthetic else train.images_per_class,
        loss={"simclr": "ntxent", "moco": "moco", "synthetic": "semihard"}[pretrain.method])


def as_pretraining_config(config: ExperimentConfig) -> ExperimentConfig:
    """The settings with the train section replaced by what pretraining ran (for its config.yaml and report)."""
    pretraining = copy.deepcopy(config)
    pretraining.train = pretraining_settings(config)
    return pretraining


def check_pretrain_settings(config: ExperimentConfig) -> None:
    """What can be refused before any data is read: the backend, the cut, the method's own settings."""
    if keras.backend.backend() != "tensorflow":
        raise ConfigError(f"pretraining runs on the TensorFlow loop; this process runs the {keras.backend.backend()} "
                          "backend: expected KERAS_BACKEND=tensorflow")
    validate_model_settings(config.model.backbone, config.model.cut_layer, config.image.image_size)
    pretrain = config.pretrain
    if pretrain.method == "synthetic" and pretrain.pretrain_batch_size % SYNTHETIC_IMAGES_PER_CLASS:
        raise ConfigError(f"--pretrain-batch-size {pretrain.pretrain_batch_size}: synthetic-writer pretraining takes "
                          f"P×K batches of K = {SYNTHETIC_IMAGES_PER_CLASS}; expected a multiple of "
                          f"{SYNTHETIC_IMAGES_PER_CLASS}")
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
    if pretrain.method == "moco" and base.strategy.num_replicas_in_sync > 1:
        raise ConfigError(f"--method moco: MoCo's queue and momentum encoder are one replica's state; this strategy has "
                          f"{base.strategy.num_replicas_in_sync} replicas: expected --strategy cpu or one GPU (SimCLR "
                          "gathers its negatives over replicas)")
    data = base.data
    images = pretraining_images(config, data.train.images, data.dataset, len(data.train_writers))
    batch = pretrain.pretrain_batch_size
    if len(images.images) < batch:
        raise ConfigError(f"--pretrain-batch-size {batch}: more than the {len(images.images)} pretraining images "
                          f"({images.description}); expected a smaller batch or more images")
    if images.labels is not None:
        check_pk(images.labels, batch // SYNTHETIC_IMAGES_PER_CLASS, SYNTHETIC_IMAGES_PER_CLASS)
    return PretrainPrepared(base, images)


def build_pretraining_model(config: ExperimentConfig, weights: str | None) -> PretrainingModel:
    """The method's model around a backbone cut at `--cut-layer`, starting from `weights` (resolved)."""
    model_settings, pretrain = config.model, config.pretrain
    shape = (config.image.image_size, config.image.image_size, 3)
    if pretrain.method == "synthetic":
        # The triplet experiment's own model (conv head, L2 normalization); the head is dropped afterwards.
        embedding = build_embedding_model(model_settings.backbone, model_settings.cut_layer, shape, weights=weights,
                                          embedding_dim=model_settings.embedding_dim)
        backbone = keras.Model(embedding.input, embedding.get_layer(model_settings.cut_layer).output,
                               name=f"{model_settings.backbone}_to_{model_settings.cut_layer}")
        loss = TripletSemiHardLoss(margin=config.train.margin)
        return PretrainingModel(embedding, loss, loss, backbone, lambda labels: count_positive_pairs(labels) > 0)
    backbone = build_cut_backbone(model_settings.backbone, model_settings.cut_layer, shape, weights=weights)
    if pretrain.method == "simclr":
        from sigverify.pretrain.distributed import CrossReplicaViews

        loss = NTXentLoss(temperature=pretrain.temperature)
        return PretrainingModel(build_simclr_model(backbone, pretrain.projection_dim), loss, CrossReplicaViews(loss),
                                backbone)
    key_backbone = build_cut_backbone(model_settings.backbone, model_settings.cut_layer, shape, weights=None,
                                      name="key_backbone")
    loss = MoCoLoss(temperature=pretrain.temperature)
    model = build_moco_model(backbone, key_backbone, pretrain.projection_dim, pretrain.queue_size, pretrain.momentum)
    return PretrainingModel(model, loss, loss, backbone)


def batches_of_epoch(config: ExperimentConfig, images: PretrainingImages) -> tuple[Callable, int]:
    """(epoch → tf.data dataset, steps per epoch): two augmented views of shuffled images (SimCLR, MoCo), or augmented
    P×K batches of the synthetic writers' classes."""
    from sigverify.data.feed import image_batches, view_pair_batches

    settings, pretrain, backbone = pretraining_settings(config), config.pretrain, config.model.backbone
    seed, strength = settings.seed, pretrain.augment_strength
    if images.labels is not None:
        def labelled(epoch):
            batches = pk_batches(images.labels, settings.classes_per_batch, settings.images_per_class, seed, epoch)
            return image_batches(images.images, images.labels, batches, backbone,
                                 augment=batch_augmenter(seed, epoch, strength))

        return labelled, len(pk_batches(images.labels, settings.classes_per_batch, settings.images_per_class, seed, 0))

    def two_views(epoch):
        batches = shuffled_batches(len(images.images), settings.batch_size, seed, epoch)
        return view_pair_batches(images.images, batches, backbone, view_pair_augmenter(seed, epoch, strength))

    return two_views, len(images.images) // settings.batch_size


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
    from sigverify.distribute import is_chief
    from sigverify.train import Trainer

    base, images, pretrain, model_settings = prepared.base, prepared.images, config.pretrain, config.model
    pretraining_config = as_pretraining_config(config)
    settings = pretraining_config.train
    batches, steps = batches_of_epoch(config, images)
    with base.strategy.scope():
        weights, start_description = resolve_weights(model_settings.weights, model_settings.backbone)
        setup = build_pretraining_model(config, weights)
        optimizer = make_optimizer(settings, steps_per_epoch=steps)
        features = build_frozen_features_model(setup.backbone)
    # Before pretraining: the figures of the start (random initialisation) and of raw pixels.
    references = reference_points(features, base.data, model_settings.backbone)
    trainer = Trainer(setup.model, setup.loss_fn, optimizer, base.strategy, run.path, write_files=is_chief(base.strategy),
                      batch_has_signal=setup.batch_has_signal, jit=settings.jit)
    result = trainer.fit(batches, epochs=settings.epochs, steps_per_epoch=steps)

    method_name = METHOD_NAMES[pretrain.method]
    info = {"method": pretrain.method, "method_name": method_name, "backbone": model_settings.backbone,
            "cut_layer": model_settings.cut_layer, "image_size": config.image.image_size, "images": images.description,
            "n_images": len(images.images), "epochs": settings.epochs, "batch_size": settings.batch_size,
            "start": start_description, "run": str(run.path.resolve())}
    save_backbone(run, setup.backbone, info)
    facts = training_facts(
        base, features, f"pretrained by {method_name} in this run (from {start_description})",
        f"{model_settings.backbone} up to {model_settings.cut_layer} + global average pooling: frozen pretrained "
        "features, no fine-tuning", _describe_pretraining_loss(setup, pretrain), result, references)
    facts["pretraining"] = info
    return evaluate_and_report(run, pretraining_config, features, base.data, facts, result.history, metric="cosine")


def _describe_pretraining_loss(setup: PretrainingModel, pretrain) -> str:
    text = describe_loss(setup.loss)
    if pretrain.method == "synthetic":
        return f"{text} on synthetic writers (skilled forgeries as their own classes), augmented"
    text += f" on two augmented views of each image (projection head of {pretrain.projection_dim}, dropped after)"
    if pretrain.method == "moco":
        text += f"; queue of {pretrain.queue_size} negatives, key encoder momentum {pretrain.momentum}"
    return text

