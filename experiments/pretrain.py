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

from sigverify.experiment import run_experiment
from sigverify.pretrain.run import check_pretrain_settings, prepare_pretraining, pretrain_and_report
from sigverify.settings import with_base
from sigverify.steps import prepare_experiment

# From random weights, the cut of the triplet experiment's quick profile, no UMAP or Grad-CAM (the evaluation is of
# frozen features). smoke: seconds, for tests. quick: 64×64 images, about a quarter of an hour per method on a busy
# 2-core CPU. blog: for a GPU: the post's Small ResNet50 at 224×224, long pretraining, 2,000 synthetic writers × 12.
PRETRAINING = {
    "smoke": {"data": {"max_writers": 4, "max_samples": 6}, "image": {"image_size": 32},
              "pretrain": {"pretrain_epochs": 2, "pretrain_batch_size": 8, "queue_size": 16, "projection_dim": 32,
                           "synthetic_writers": 6, "synthetic_samples": 4}},
    "quick": {"image": {"image_size": 64},
              "pretrain": {"pretrain_epochs": 8, "pretrain_batch_size": 32, "queue_size": 1024,
                           "synthetic_writers": 150, "synthetic_samples": 12}},
    "blog": {"model": {"cut_layer": "conv4_block6_add"}, "image": {"image_size": 224},
             "pretrain": {"pretrain_epochs": 100, "pretrain_batch_size": 128, "queue_size": 1024,
                          "momentum": 0.995, "synthetic_writers": 2000, "synthetic_samples": 12}},
}
PROFILES = with_base(
    {"model": {"weights": "none", "cut_layer": "conv3_block4_add"}, "report": {"umap": False, "gradcam_images": 0}},
    PRETRAINING)


def prepare(config):
    return prepare_pretraining(config, prepare_experiment(config, lambda: check_pretrain_settings(config),
                                                          labelled_batches=False))


if __name__ == "__main__":
    sys.exit(run_experiment("pretrain", PROFILES, prepare, pretrain_and_report, description=__doc__))
