"""Contrastive baseline (the post's Siamese network): a frozen backbone with global average pooling and a small dense
head, trained with contrastive loss (margin 0.5) on the original genuine/skilled/random training pairs.

The backbone is frozen, so its features of each image never change: they are computed once (and cached on disk) and
the head trains on pairs of features. `--unfreeze-from LAYER` fine-tunes the backbone from that layer on, which needs
the images themselves. Either way `model.keras` is the whole embedding model: images in, embedding out.

    python experiments/contrastive.py --profile quick [--data DIR] [--backbone vgg16] ...   (or: make exp-contrastive)
"""

import sys

import numpy as np

from sigverify.distances import scoring_distance
from sigverify.evaluation.model import evaluate_model
from sigverify.experiment import run_experiment
from sigverify.losses import ContrastiveLoss, describe_loss
from sigverify.models.embedding import (
    build_contrastive_embedding_model,
    unfreeze_backbone_from,
    validate_pretrained_settings,
    validate_unfreeze_layer,
)
from sigverify.models.inference import cached_features, embed
from sigverify.models.siamese import build_siamese
from sigverify.models.weights import resolve_weights
from sigverify.protocol import repeated
from sigverify.reporting.plots import plot_embedding_3d
from sigverify.reporting.run_files import training_facts, write_run_files
from sigverify.settings import with_base
from sigverify.steps import prepare_experiment
from sigverify.training.engine import PairBatches, make_optimizer, pair_steps

# SPEC "Contrastive baseline": frozen backbone, GAP, Dense head, margin 0.5. blog: the post's settings, 224×224, 50
# epochs, Adam 5e-4 decayed per epoch, checkpoint on validation loss.
PROFILES = with_base(
    {"model": {"cut_layer": None, "embedding_dim": 128}, "loss": {"loss": "contrastive", "margin": 0.5},
     "batches": {"sampler": "shuffled"}, "report": {"gradcam_images": 0}},
    {
        "smoke": {"data": {"max_writers": 4, "max_samples": 6}, "image": {"image_size": 32}, "train": {"epochs": 2},
                  "batches": {"batch_size": 32}, "optimizer": {"schedule": "constant"}, "report": {"umap": False}},
        "quick": {"image": {"image_size": 96}, "train": {"epochs": 15}, "batches": {"batch_size": 64},
                  "optimizer": {"learning_rate": 5e-4, "schedule": "epoch-exponential", "decay_rate": 0.9}},
        "blog": {"train": {"epochs": 50}, "batches": {"batch_size": 64},
                 "optimizer": {"learning_rate": 5e-4, "schedule": "epoch-exponential", "decay_rate": 0.9}},
    },
)


def prepare(config):
    def check_settings():
        validate_pretrained_settings(config.model.backbone, config.image.image_size)
        if config.model.unfreeze_from:
            validate_unfreeze_layer(config.model.backbone, config.model.unfreeze_from)

    return prepare_experiment(config, check_settings, labelled_batches=False)


def train_and_evaluate(run, config, prepared):
    engine, data, backbone, fine_tune = prepared.engine, prepared.data, config.model.backbone, config.model.unfreeze_from
    seed, batch_size = config.train.seed, config.batches.batch_size
    with engine.scope():
        weights, weights_description = resolve_weights(config.model.weights, backbone)
        embedding = build_contrastive_embedding_model(backbone, config.image.image_size, weights,
                                                      embedding_dim=config.model.embedding_dim)
        head, frozen = embedding.get_layer("contrastive_head"), embedding.get_layer(f"pretrained_{backbone}")
        if fine_tune:
            unfreeze_backbone_from(frozen, backbone, fine_tune)
            tower, train_inputs, test_inputs = embedding, data.train.images, data.test.images
        else:  # the head alone trains, on the frozen backbone's features of each image
            tower = head
            train_inputs = cached_features(frozen, data.train.images, config.data.cache_dir)
            test_inputs = cached_features(frozen, data.test.images, config.data.cache_dir)
        siamese = build_siamese(tower)
        train_feed = PairBatches(train_inputs, lambda epoch: pair_steps(data.train.pairs, batch_size, seed, epoch))
        optimizer = make_optimizer(config.optimizer, config.train.epochs, train_feed.steps())
    loss = ContrastiveLoss(margin=config.loss.margin)
    validation = PairBatches(test_inputs, lambda epoch: pair_steps(data.test.pairs, batch_size, seed, 0, shuffle=False))
    result = engine.fit(run.path, siamese, loss, train_feed, config.train.epochs, optimizer, validation)

    embeddings = None if fine_tune else tuple(embed(head, features) for features in (test_inputs, train_inputs))
    facts = training_facts(
        engine, embedding, weights_description,
        f"Siamese: frozen {backbone} + global average pooling + dense head"
        + (f", fine-tuned from {fine_tune}" if fine_tune else ""),
        f"{describe_loss(loss)} on Euclidean distance", result)
    facts.update(trainable_params=int(sum(np.prod(w.shape) for w in tower.trainable_weights)),
                 training_path="images" if fine_tune else "cached backbone features", n_train_pairs=len(data.train.pairs))
    evaluation = evaluate_model(embedding, data, scoring_distance(config.loss.distance), embeddings)
    writers, genuine = data.test.index["writer"].to_numpy(), data.test.index["genuine"].to_numpy()
    figures = {"embedding_3d.png": lambda path, test_embeddings: plot_embedding_3d(test_embeddings, writers, genuine,
                                                                                   path)}
    return write_run_files(run, config, embedding, data, evaluation, facts, result.history, figures)


if __name__ == "__main__":
    sys.exit(run_experiment("contrastive", PROFILES, prepare, repeated(train_and_evaluate), description=__doc__))
