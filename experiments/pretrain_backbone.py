"""The signature-pretrained backbones the package ships (`--weights signatures`): ResNet50 up to conv4_block6_add (and
VGG16 up to block3_conv1, with `--backbone vgg16 --cut-layer block3_conv1`) pretrained by SimCLR on thousands of
synthetic writers (`sigverify.data.synthetic_pool`: each writer's genuine signatures and skilled forgeries of them,
labels unused), evaluated as frozen features on the test writers of `--data`, and written in float16 with its model
card into the run folder's shipped/ (`make ship-weights RUN=...` installs it into sigverify/weights/). Resumable:
`--resume RUN` continues from the last checkpoint (one every `--pretrain-steps-per-epoch` batches).

SimCLR by measurement, on validation fold 0 of 4 of CEDAR's training writers (64×64; SimCLR: 500 writers, 748 batches):
frozen features 0.696 skilled max accuracy, fine-tuned (quick, Adam 1e-3 throughout) 0.673, against 0.624 and 0.659 from
the semi-hard triplet loss on the synthetic writers' classes (`--method synthetic`, the earlier shipped file) and 0.599
frozen from random weights.

    python experiments/pretrain_backbone.py --profile full [--data DIR]
    (or: make pretrain-backbone PROFILE=full)
"""

import sys

from sigverify.experiment import run_experiment
from sigverify.pretrain.run import check_pretrain_settings, prepare_pretraining, pretrain_and_report
from sigverify.pretrain.shipping import export_shipped_weights
from sigverify.settings import build_config, with_base
from sigverify.steps import prepare_experiment

# smoke: seconds, for tests. quick: about 10 minutes on a 2-core CPU. full: the shipped file, 5,000 writers (120,000
# images), 3,200 batches of 64 images (two views each) at 64×64 (the triplet quick profile's image size then; it is
# 96×96 now): 66 minutes on a 2-core AMD EPYC with native bfloat16 (PRECISION=mixed_bfloat16, other work beside it),
# about twice that in float32. The shipped VGG16 file (up to block3_conv1) is full with ARGS="--backbone vgg16
# --cut-layer block3_conv1 --pretrain-steps-per-epoch 150": 1,200 batches, 86 minutes in float32 on a 2-core AMD EPYC
# without AVX-512.
BACKBONE_PRETRAINING = {
    "smoke": {"data": {"max_writers": 4, "max_samples": 6}, "image": {"image_size": 64},
              "pretrain": {"pretrain_epochs": 2, "pretrain_steps_per_epoch": 2, "pretrain_batch_size": 16,
                           "synthetic_writers": 8, "synthetic_samples": 4}},
    "quick": {"pretrain": {"pretrain_epochs": 4, "pretrain_steps_per_epoch": 100, "synthetic_writers": 1000}},
    "full": {"pretrain": {"pretrain_epochs": 8, "pretrain_steps_per_epoch": 400, "synthetic_writers": 5000}},
}
PROFILES = with_base(
    {"model": {"weights": "none", "cut_layer": "conv4_block6_add"}, "image": {"image_size": 64},
     "report": {"umap": False, "gradcam_images": 0},
     "pretrain": {"method": "simclr", "unlabelled": "synthetic", "pretrain_batch_size": 64,
                  "pretrain_learning_rate": 1e-3, "synthetic_samples": 12}},
    BACKBONE_PRETRAINING)


def prepare(config):
    return prepare_pretraining(config, prepare_experiment(config, lambda: check_pretrain_settings(config),
                                                          labelled_batches=False))


def pretrain_and_ship(run, config, prepared):
    metrics = pretrain_and_report(run, config, prepared)
    export_shipped_weights(run, config, build_config(config.experiment, config.profile, PROFILES), metrics,
                           prepared.base.data.test.images[:64])
    return metrics


if __name__ == "__main__":
    sys.exit(run_experiment("pretrain-backbone", PROFILES, prepare, pretrain_and_ship, description=__doc__))
