"""Triplet experiment (the post's main model): a ResNet50 cut at an intermediate layer plus a small conv head with L2
normalization, trained with the semi-hard triplet loss on online-mined batches, evaluated on held-out writers.

    python experiments/triplet.py --profile quick [--data DIR] [--epochs 3] ...   (or: make exp-triplet)
"""

import sys

from sigverify.config import TRIPLET_PROFILES
from sigverify.distances import evaluation_metric_for
from sigverify.distribute import describe_strategy, make_strategy, set_precision
from sigverify.experiment import run_experiment
from sigverify.losses import TripletSemiHardLoss, count_positive_pairs
from sigverify.models import build_embedding_model, resolve_weights, validate_model_settings
from sigverify.pipeline import (
    environment,
    evaluate_and_report,
    fit_on_labelled_images,
    prepare_data,
    reference_points,
    training_batches,
)
from sigverify.preprocess import PreprocessConfig
from sigverify.train import make_optimizer


def prepare(config):
    strategy = make_strategy(config.train.strategy, config.train.cpu_devices)
    precision = set_precision(config.train.mixed_precision)
    validate_model_settings(config.model.backbone, config.model.cut_layer, config.image.image_size)
    image = config.image
    data = prepare_data(config, PreprocessConfig((image.image_size, image.image_size), image.binarize, image.keep_aspect))
    return strategy, precision, data


def train_and_evaluate(run, config, prepared):
    strategy, precision, data = prepared
    size, model_settings = config.image.image_size, config.model
    with strategy.scope():
        weights, weights_description = resolve_weights(model_settings.weights, model_settings.backbone)
        model = build_embedding_model(model_settings.backbone, model_settings.cut_layer, (size, size, 3), weights=weights,
                                      normalize=model_settings.normalize, embedding_dim=model_settings.embedding_dim)
        loss = TripletSemiHardLoss(margin=config.train.margin, distance_metric=config.train.distance_metric)
        optimizer = make_optimizer(config.train, steps_per_epoch=len(training_batches(data.train.labels, config, 0)))
    references = reference_points(model, data, model_settings.backbone)
    result = fit_on_labelled_images(run, config, strategy, data, model, loss, optimizer,
                                    batch_has_signal=lambda labels: count_positive_pairs(labels) > 0)
    facts = {
        "weights": weights_description,
        "params": model.count_params(),
        "model_description": f"{model_settings.backbone} cut at {model_settings.cut_layer} + conv head"
                             f"{'' if model_settings.normalize else ' (no L2 normalization)'}",
        "loss_description": f"TripletSemiHardLoss(margin={config.train.margin}, {config.train.distance_metric})",
        "train_seconds": result.train_seconds,
        "epochs_resumed_from": result.initial_epoch,
        "batches_without_positives": result.batches_without_positives,
        "strategy": describe_strategy(strategy),
        "precision": precision,
        "environment": environment(),
        "reference_points": references,
    }
    metric = evaluation_metric_for(config.train.distance_metric, l2_normalized=model_settings.normalize)
    return evaluate_and_report(run, config, model, data, facts, result.history, metric=metric)


if __name__ == "__main__":
    sys.exit(run_experiment("triplet", TRIPLET_PROFILES, prepare, train_and_evaluate, description=__doc__))
