"""Triplet experiment (the post's main model): a ResNet50 cut at an intermediate layer plus a small conv head with L2
normalization, trained with the semi-hard triplet loss (or the loss `--loss` names) on online-mined batches of the
training writers, evaluated on held-out writers (the post's pairs, metrics and figures); `--folds k` / `--seeds n`
repeat it over writer-disjoint folds and seeds.

    python experiments/triplet.py --profile quick [--data DIR] [--epochs 3] [--loss arcface] ...
    (or: make exp-triplet LOSS=arcface FOLDS=5)
"""

import sys

from sigverify.experiment import run_experiment
from sigverify.losses import loss_from_settings
from sigverify.models.backbones import validate_model_settings
from sigverify.models.embedding import validate_unfreeze_layer
from sigverify.protocol import repeated
from sigverify.steps import prepare_experiment, train_and_report

# smoke: seconds, for tests. quick: the default, minutes on a 2-core CPU: ResNet50 cut at conv4_block6_add (Small
# ResNet50 + skip's backbone) at 96×96 from the shipped signature weights (--weights auto here), its first three stages
# frozen, then global average pooling → Dense → L2 (--head gap) instead of the post's conv head; everything at Adam
# 1e-4, cosine, augmented, 3 epochs. Chosen on validation folds of CEDAR's training writers (skilled max accuracy /
# honest accuracy): at 64×64 the conv head at 1e-3 with the backbone at a tenth gave 0.710 / 0.676 and 0.670 / 0.612
# on folds 0 and 1, the gap head at the same rates 0.712 / 0.710 on fold 0, the gap head at 1e-4 for 6 epochs 0.718 /
# 0.713, 0.684 / 0.667, 0.697 / 0.660 and 0.739 / 0.677 on folds 0 to 3 (4 epochs: 0.699 / 0.695 and 0.671 / 0.668 on
# folds 0 and 1). 96×96 for 4 epochs trains in about the time of 64×64 for 6 (an epoch 1.5× as long) and gave 0.725 /
# 0.720, 0.702 / 0.695, 0.728 / 0.710 and 0.727 / 0.694 (mean 0.721 / 0.705 against 0.710 / 0.679; honest accuracy
# higher on every fold), but took 12 minutes wall on a 2-core AMD EPYC; 3 epochs at 96×96 gave 0.716 / 0.714 and
# 0.704 / 0.697 on folds 0 and 1 (mean 0.710 / 0.706 against 0.714 / 0.708) in three quarters of the training time.
# full: the quick recipe at 160×160 for 10 epochs on the post's Small ResNet50 + skip backbone, about 28 minutes on a
# 2-core Intel Xeon with AMX (not measured on a 2-core AMD EPYC, where training steps take about 2.5× as long). On
# validation folds 0 and 1, against 64×64 for 6 epochs: 10 epochs at 96×96 0.741 / 0.731 and 0.713 / 0.635, 128×128
# 0.777 / 0.761 and 0.745 / 0.720, 160×160 0.801 / 0.775 and 0.761 / 0.743; on fold 0 16 epochs at 64×64 0.722 / 0.656
# (bigger images pay, longer training alone does not), the conv head at 128×128 0.714 / 0.633.
# blog: the post's protocol (224×224, batch 64, 25 epochs, ExponentialDecay(10, 0.7)): the settings' defaults.
QUICK = {
    "image": {"image_size": 96},
    "model": {"cut_layer": "conv4_block6_add", "head": "gap", "unfreeze_from": "conv4_block1_1_conv"},
    "train": {"epochs": 3, "augment": True},
    "batches": {"batch_size": 64, "sampler": "pk", "classes_per_batch": 16, "images_per_class": 4},
    "optimizer": {"schedule": "cosine", "learning_rate": 1e-4},
}
PROFILES = {
    "smoke": {
        "data": {"max_writers": 4, "max_samples": 6},
        "image": {"image_size": 32},
        "model": {"cut_layer": "conv3_block4_add"},
        "train": {"epochs": 2},
        "batches": {"batch_size": 16, "sampler": "pk", "classes_per_batch": 4, "images_per_class": 4},
        "optimizer": {"schedule": "constant"},
        "report": {"umap": False, "gradcam_images": 2},
    },
    "quick": QUICK,
    "full": {**QUICK, "image": {"image_size": 160}, "train": {**QUICK["train"], "epochs": 10}},
    "blog": {},
}
# The profiles the other recipes build on (the zoo, the losses, the pretraining starts): full is this one's alone
SHARED_PROFILES = {name: profile for name, profile in PROFILES.items() if name != "full"}
# The quick profile's model and rates where random starts train beside pretrained ones (the zoo, the pretraining
# starts): the post's conv head, Adam 1e-3, a pretrained backbone at a tenth of it (1e-4 leaves a random start untrained)
QUICK_FOR_RANDOM_STARTS = {"model": {"head": "conv"}, "optimizer": {"learning_rate": 1e-3, "backbone_rate_scale": 0.1}}


def prepare(config):
    """Data: the training and test writers of `--data`, preprocessed; every setting checked before any work."""
    def check_settings():
        validate_model_settings(config.model.backbone, config.model.cut_layer, config.image.image_size)
        if config.model.unfreeze_from:
            validate_unfreeze_layer(config.model.backbone, config.model.unfreeze_from, config.model.cut_layer)
        loss_from_settings(config.loss)

    return prepare_experiment(config, check_settings)


def train_and_evaluate(run, config, prepared):
    """Model and loss of the settings, online-mining training, evaluation on the test writers, run files."""
    return train_and_report(run, config, prepared)


if __name__ == "__main__":
    sys.exit(run_experiment("triplet", PROFILES, prepare, repeated(train_and_evaluate), description=__doc__))
