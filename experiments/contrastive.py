"""Contrastive baseline (the post's Siamese network): a frozen backbone with global average pooling and a small dense
head, trained with contrastive loss (margin 0.5) on the original genuine/skilled/random training pairs.

The backbone is frozen, so its features of each image never change: they are computed once (and cached on disk) and
the head trains on pairs of features. `--unfreeze-from LAYER` fine-tunes the backbone from that layer on, which needs
the images themselves. Either way `model.keras` is the whole embedding model: images in, embedding out.

    python experiments/contrastive.py --profile quick [--data DIR] [--backbone vgg16] ...   (or: make exp-contrastive)
"""

import sys

import keras
import numpy as np

from sigverify.config import CONTRASTIVE_PROFILES
from sigverify.data.feed import pair_batches
from sigverify.distances import evaluation_metric_for
from sigverify.distribute import describe_strategy, is_chief
from sigverify.errors import ConfigError
from sigverify.experiment import run_experiment
from sigverify.losses import ContrastiveLoss
from sigverify.models import (
    build_contrastive_embedding_model,
    build_siamese,
    resolve_weights,
    unfreeze_backbone_from,
    validate_pretrained_settings,
    validate_unfreeze_layer,
)
from sigverify.pipeline import cached_features, embed, environment, evaluate_and_report, prepare_experiment
from sigverify.plots import plot_embedding_3d
from sigverify.protocol import repeated
from sigverify.train import Trainer, make_optimizer


def prepare(config):
    if keras.backend.backend() != "tensorflow":
        raise ConfigError("the contrastive experiment trains through tf.distribute: run it with "
                          "KERAS_BACKEND=tensorflow (the triplet experiment also runs on JAX)")

    def check_settings():
        validate_pretrained_settings(config.model.backbone, config.image.image_size)
        if config.model.unfreeze_from:
            validate_unfreeze_layer(config.model.backbone, config.model.unfreeze_from)

    return prepare_experiment(config, check_settings)


def train_and_evaluate(run, config, prepared):
    strategy, data = prepared.strategy, prepared.data
    size, backbone, train = config.image.image_size, config.model.backbone, config.train
    with strategy.scope():
        weights, weights_description = resolve_weights(config.model.weights, backbone)
        embedding = build_contrastive_embedding_model(backbone, (size, size, 3), weights,
                                                      embedding_dim=config.model.embedding_dim)
        head, frozen = embedding.get_layer("contrastive_head"), embedding.get_layer(f"pretrained_{backbone}")
        if config.model.unfreeze_from:
            unfreeze_backbone_from(frozen, backbone, config.model.unfreeze_from)
            tower, train_inputs, test_inputs, input_backbone = embedding, data.train.images, data.test.images, backbone
        else:
            tower, input_backbone = head, None
            train_inputs = cached_features(frozen, data.train.images, backbone, config.data.cache_dir)
            test_inputs = cached_features(frozen, data.test.images, backbone, config.data.cache_dir)
        siamese = build_siamese(tower)
        steps = -(-len(data.train.pairs) // train.batch_size)
        optimizer = make_optimizer(train, steps_per_epoch=steps)

    def batches(inputs, pairs, epoch, shuffle=True):
        return pair_batches(inputs, pairs["a"].to_numpy(), pairs["b"].to_numpy(), pairs["same"].to_numpy(),
                            train.batch_size, train.seed, epoch, backbone=input_backbone, shuffle=shuffle)

    trainer = Trainer(siamese, ContrastiveLoss(margin=train.margin), optimizer, strategy, run.path,
                      write_files=is_chief(strategy), jit=train.jit)
    result = trainer.fit(lambda epoch: batches(train_inputs, data.train.pairs, epoch), train.epochs, steps,
                         validation_batches=lambda epoch: batches(test_inputs, data.test.pairs, 0, shuffle=False))

    embeddings = None
    if not config.model.unfreeze_from:  # the head alone turns the cached features into embeddings
        embeddings = tuple(embed(head, features, None) for features in (test_inputs, train_inputs))
    writers, genuine = data.test.index["writer"].to_numpy(), data.test.index["genuine"].to_numpy()
    facts = {
        "weights": weights_description,
        "params": embedding.count_params(),
        "trainable_params": int(sum(np.prod(w.shape) for w in tower.trainable_weights)),
        "model_description": f"Siamese: frozen {backbone} + global average pooling + dense head"
                             + (f", fine-tuned from {config.model.unfreeze_from}" if config.model.unfreeze_from else ""),
        "training_path": "images" if config.model.unfreeze_from else "cached backbone features",
        "loss_description": f"ContrastiveLoss(margin={train.margin}) on Euclidean distance",
        "n_train_pairs": len(data.train.pairs),
        "train_seconds": result.train_seconds,
        "epochs_resumed_from": result.initial_epoch,
        "strategy": describe_strategy(strategy),
        "precision": prepared.precision,
        "environment": environment(),
    }
    metric = evaluation_metric_for(train.distance_metric, l2_normalized=True)
    extra_plots = [("embedding_3d.png", lambda path, test_embeddings: plot_embedding_3d(test_embeddings, writers, genuine,
                                                                                       path))]
    return evaluate_and_report(run, config, embedding, data, facts, result.history, metric=metric,
                               extra_plots=extra_plots, embeddings=embeddings)


if __name__ == "__main__":
    sys.exit(run_experiment("contrastive", CONTRASTIVE_PROFILES, prepare, repeated(train_and_evaluate),
                            description=__doc__))
