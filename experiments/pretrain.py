"""Backbone pretraining without ImageNet (issue: what features fit signatures?): SimCLR or MoCo v2 on unlabelled
signatures (`--unlabelled train`: the training writers' images of `--data`, never the test writers'; `synthetic`; or a
folder), or semi-hard triplet pretraining on thousands of synthetic writers (`--method synthetic`). The run folder holds
the pretrained backbone (`backbone.weights.h5`, loaded by any experiment with `--weights <this run folder>`), the
pretraining loss curve, and as its evaluation the post's verification metrics from the frozen pretrained features (no
fine-tuning) beside the random-initialisation and raw-pixel figures.

Pretraining length, batch and learning rate are `--pretrain-epochs`, `--pretrain-batch-size`,
`--pretrain-learning-rate` (the train section's `--epochs` etc. are fine-tuning settings, used by exp-pretrain-compare).

    python experiments/pretrain.py --profile quick --method moco [--data DIR] [--unlabelled DIR]
    (or: make exp-pretrain METHOD=moco)
"""

import sys

from sigverify.config import PRETRAIN_PROFILES
from sigverify.experiment import run_experiment
from sigverify.pipeline import prepare_experiment
from sigverify.pretrain.run import check_pretrain_settings, prepare_pretraining, pretrain_and_report


def prepare(config):
    return prepare_pretraining(config, prepare_experiment(config, lambda: check_pretrain_settings(config)))


if __name__ == "__main__":
    sys.exit(run_experiment("pretrain", PRETRAIN_PROFILES, prepare, pretrain_and_report, description=__doc__))
