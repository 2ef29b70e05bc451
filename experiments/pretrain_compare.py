"""How much of the ImageNet gap does pretraining on signatures close? The same triplet fine-tuning (the triplet
experiment's model, loss and profile settings, the same seeds and folds) from each start: random initialisation,
SimCLR, MoCo v2, synthetic-writer pretraining, the shipped signature weights (make pretrain-backbone), and ImageNet
where its weights can be loaded; one table (table.md,
table.csv, runs.csv) and one figure (max accuracy on skilled forgeries per start, mean ± std over the runs).

Each method is pretrained once, as exp-pretrain does, into the sub-run `pretrain-<method>/` (a pretraining run folder:
`--weights <it>` works elsewhere too); the fine-tuning runs are the sub-runs `<start>-seed<s>` (or
`<start>-fold<f>-seed<s>`). A resumed run keeps the finished sub-runs.

    python experiments/pretrain_compare.py --profile quick [--data DIR] [--starts random,simclr] [--seeds 3]
    (or: make exp-pretrain-compare STARTS=random,simclr SEEDS=3)
"""

import copy
import sys
from dataclasses import dataclass

from pretrain import PRETRAINING  # each method pretrains as exp-pretrain's profile does
from triplet import QUICK_FOR_RANDOM_STARTS
from triplet import SHARED_PROFILES as TRIPLET_PROFILES  # and fine-tunes as the triplet experiment trains

from sigverify.errors import ConfigError
from sigverify.experiment import run_experiment
from sigverify.losses import loss_from_settings
from sigverify.models.backbones import validate_model_settings
from sigverify.models.weights import resolve_weights
from sigverify.pretrain.compare import (
    POST_BEST_MAX_ACCURACY,
    START_NAMES,
    check_no_test_writer_is_pretrained_on,
    frozen_feature_accuracies,
    gap_lines,
    pretraining_methods,
    selected_starts,
)
from sigverify.pretrain.run import (
    PretrainPrepared,
    as_pretraining_config,
    check_pretrain_settings,
    prepare_pretraining,
    pretrain_and_report,
    with_method,
)
from sigverify.protocol import run_repeats, run_sub_run
from sigverify.reporting.plots import plot_accuracy_by_start
from sigverify.reporting.tables import describe_training, summary_table, write_summary_tables
from sigverify.runs import writing
from sigverify.settings import derived
from sigverify.steps import Prepared, prepare_experiment, train_and_report

# The triplet experiment's fine-tuning (its profiles' train, batches and optimizer sections) from each start, each
# method pretrained as exp-pretrain's profile does (quick: QUICK_FOR_RANDOM_STARTS, a random start among them); no UMAP
# or Grad-CAM per run.
PROFILES = derived(TRIPLET_PROFILES, everywhere={"report": {"umap": False, "gradcam_images": 0}}, changes={
    "smoke": PRETRAINING["smoke"],
    "quick": {**PRETRAINING["quick"], **QUICK_FOR_RANDOM_STARTS, "train": {"epochs": 4}},
    "blog": {**PRETRAINING["blog"], "batches": TRIPLET_PROFILES["quick"]["batches"]},
})


@dataclass
class ComparePrepared:
    base: Prepared
    starts: list[str]
    pretraining: dict[str, PretrainPrepared]  # method -> its images
    skipped: dict[str, str]  # start -> why it is not in the comparison

    @property
    def engine(self):
        return self.base.engine


def prepare(config) -> ComparePrepared:
    starts = selected_starts(config.pretrain.starts)
    methods = pretraining_methods(starts)

    def check_settings():
        validate_model_settings(config.model.backbone, config.model.cut_layer, config.image.image_size)
        loss_from_settings(config.loss)
        for method in methods:
            check_pretrain_settings(with_method(config, method))

    base = prepare_experiment(config, check_settings)
    check_no_test_writer_is_pretrained_on(config, starts, base.data.train_writers)
    skipped = {}
    for start in ("signatures", "imagenet"):
        if start in starts:
            try:
                resolve_weights(start, config.model.backbone)
            except ConfigError as error:
                skipped[start] = str(error)
    pretraining = {method: prepare_pretraining(with_method(config, method), base) for method in methods}
    return ComparePrepared(base, [start for start in starts if start not in skipped], pretraining, skipped)


def pretrain_once(run, config, method: str, prepared: PretrainPrepared):
    """The method's pretraining sub-run (kept if finished): the start of that method's fine-tuning runs."""
    method_config = with_method(config, method)
    method_config.model.weights = "none"  # pretraining is the alternative to ImageNet: it starts from random weights
    return run_sub_run(run, f"pretrain-{method}", method_config, lambda: prepared, pretrain_and_report,
                       saved_config=as_pretraining_config(method_config))


def fine_tune(run, config, prepared):
    """The triplet experiment, from the start `--weights` names."""
    return train_and_report(run, config, prepared)


def compare(run, config, prepared: ComparePrepared) -> dict:
    pretraining_runs = {method: pretrain_once(run, config, method, images)
                        for method, images in prepared.pretraining.items()}
    weights = {"random": "none", "signatures": "signatures", "imagenet": "imagenet",
               **{m: str(path) for m, path in pretraining_runs.items()}}
    folders = {}
    for start in prepared.starts:
        start_config = copy.deepcopy(config)
        start_config.model.weights = weights[start]
        folders[start] = run_repeats(run, start_config, prepared.base, fine_tune, prefix=f"{start}-")
    summary, runs = summary_table(folders, "start")
    pretrain = config.pretrain
    skipped = [f"- {START_NAMES[start]}: not compared ({why})" for start, why in prepared.skipped.items()]
    markdown = write_summary_tables(run.path, summary, runs, "start", [
        f"# Pretraining starts: profile `{config.profile}`",
        "",
        (f"Fine-tuning from every start: {config.model.backbone} cut at {config.model.cut_layer} + conv head, "
         f"{config.image.image_size}×{config.image.image_size} images, {config.loss.loss} loss, "
         f"{describe_training(config)}. Pretraining (once per method, seed "
         f"{config.train.seed}): {pretrain.pretrain_epochs} epochs, batch {pretrain.pretrain_batch_size}; SimCLR and MoCo on "
         f"`--unlabelled {pretrain.unlabelled}`, synthetic on {pretrain.synthetic_writers} writers × "
         f"{pretrain.synthetic_samples} genuine + forgeries."),
        "",
        ("Max accuracy on skilled forgeries, and the gap to the post's best figure (Small ResNet50 + skip with "
         "ImageNet weights on CEDAR at 224×224; a different model size and image size here unless the profile is blog):"),
        "",
        *gap_lines(summary),
        *skipped,
    ])
    title = f"Fine-tuned from each start ({config.profile} profile)"
    with writing(run.file("accuracy_by_start.png")) as temporary:
        plot_accuracy_by_start(summary, frozen_feature_accuracies(pretraining_runs), START_NAMES, POST_BEST_MAX_ACCURACY,
                               temporary, title)
    print(markdown)
    return {"starts": summary.to_dict(orient="records")}


if __name__ == "__main__":
    sys.exit(run_experiment("pretrain-compare", PROFILES, prepare, compare, description=__doc__))
