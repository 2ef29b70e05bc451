"""Triplet experiment (the post's main model): a ResNet50 cut at an intermediate layer plus a small conv head with L2
normalization, trained with the semi-hard triplet loss (or the loss `--loss` names) on online-mined batches, evaluated
on held-out writers; `--folds k` / `--seeds n` repeat it over writer-disjoint folds and seeds.

    python experiments/triplet.py --profile quick [--data DIR] [--epochs 3] [--loss arcface] ...
    (or: make exp-triplet LOSS=arcface FOLDS=5)
"""

import sys

from sigverify.config import TRIPLET_PROFILES
from sigverify.experiment import run_experiment
from sigverify.pipeline import (
    check_embedding_model_settings,
    check_loss_settings,
    configured_embedding_model,
    prepare_experiment,
    train_and_report,
)
from sigverify.protocol import repeated


def prepare(config):
    def check_settings():
        check_embedding_model_settings(config)
        check_loss_settings(config)

    return prepare_experiment(config, check_settings)


def train_and_evaluate(run, config, prepared):
    return train_and_report(run, config, prepared, lambda: configured_embedding_model(config))


if __name__ == "__main__":
    sys.exit(run_experiment("triplet", TRIPLET_PROFILES, prepare, repeated(train_and_evaluate), description=__doc__))
