"""Triplet experiment (the post's main model): a ResNet50 cut at an intermediate layer plus a small conv head with L2
normalization, trained with the semi-hard triplet loss on online-mined batches, evaluated on held-out writers.

    python experiments/triplet.py --profile quick [--data DIR] [--epochs 3] ...   (or: make exp-triplet)
"""

import sys

from sigverify.config import TRIPLET_PROFILES
from sigverify.experiment import run_experiment
from sigverify.losses import TripletSemiHardLoss
from sigverify.models import build_embedding_model, resolve_weights, validate_model_settings
from sigverify.pipeline import prepare_experiment, train_and_report


def prepare(config):
    model = config.model
    return prepare_experiment(config, lambda: validate_model_settings(model.backbone, model.cut_layer,
                                                                      config.image.image_size))


def train_and_evaluate(run, config, prepared):
    model, train, size = config.model, config.train, config.image.image_size

    def build_model():
        weights, weights_description = resolve_weights(model.weights, model.backbone)
        embedding = build_embedding_model(model.backbone, model.cut_layer, (size, size, 3), weights=weights,
                                          normalize=model.normalize, embedding_dim=model.embedding_dim)
        description = (f"{model.backbone} cut at {model.cut_layer} + conv head"
                       + ("" if model.normalize else " (no L2 normalization)"))
        return embedding, weights_description, description

    return train_and_report(run, config, prepared, build_model,
                            lambda: TripletSemiHardLoss(margin=train.margin, distance_metric=train.distance_metric),
                            loss_description=f"TripletSemiHardLoss(margin={train.margin}, {train.distance_metric})")


if __name__ == "__main__":
    sys.exit(run_experiment("triplet", TRIPLET_PROFILES, prepare, train_and_evaluate, description=__doc__))
