"""Hyperparameter search (Optuna): the loss comparison's model and losses, each trial sampling the loss, its margin,
the learning rate, the cut layer, the image size and the augmentation strength, scored on writer-disjoint validation
folds of the training writers only (the mean max accuracy on skilled forgeries; each fold's value is reported, so the
median pruner stops a bad trial after a fold); then the best settings trained once on every training writer and
scored once on the test writers, beside the profile's own settings.

The study is study.db (SQLite) in the run folder; each fold of a trial is a sub-run `trial<n>-fold<f>/`. Killed and
resumed (`--resume <run>`), the study keeps every finished trial and runs the one cut short again with its parameters
(its finished folds kept, the interrupted one continued from its checkpoint) until `--trials` have finished. The run
folder ends with trials.csv / trials.md, param_importances.png, optimization_history.png, the sub-runs `best/` and
(unless --no-compare-default) `default/` on the test writers, report.md, metrics.json and best.yaml: `python
experiments/losses.py --config best.yaml` reruns the best settings (the losses recipe is the one every trial ran).

    python experiments/tune.py --profile quick [--data DIR] [--trials 30] [--losses semihard,arcface]
    (or: make exp-tune TRIALS=30)
"""

import copy
import itertools
import json
import statistics
import sys

import optuna
import yaml
from losses import LOSS_NAMES, train_with_loss, with_loss
from losses import PROFILES as LOSSES_PROFILES
from losses import prepare as prepare_losses

from sigverify.data.prepare import prepare_data
from sigverify.errors import ConfigError
from sigverify.experiment import run_experiment
from sigverify.models.backbones import validate_model_settings
from sigverify.protocol import run_sub_run
from sigverify.runs import write_text
from sigverify.settings import comma_list, derived, settings_accepted_by
from sigverify.steps import Prepared, check_start_saw_no_test_writer
from sigverify.tuning import first_number, open_study, run_trials, write_study_report

# The cut layers and image sizes of each profile's search (every pair leaves the head 4×4 features or more; smoke: the
# two cheapest cuts, whose models trace fastest).
SEARCH = {
    "smoke": {"cut_layer": ("conv2_block2_out", "conv2_block3_out"), "image_size": (32, 40)},
    "quick": {"cut_layer": ("conv3_block4_add", "conv4_block6_add"), "image_size": (64, 80)},
    "full": {"cut_layer": ("conv3_block4_add", "conv4_block6_add", "conv5_block3_out"), "image_size": (128, 160, 224)},
}
MARGINS = (0.05, 2.0)  # log-uniform; the triplet and quadruplet losses' --margin (the margin-softmax losses have m)
LEARNING_RATES = (1e-4, 1e-2)  # log-uniform
PARAMETERS = ["loss", "margin", "learning_rate", "cut_layer", "image_size", "augment_level"]
# smoke: seconds a trial, for tests. quick: 10 trials of 2 folds of the losses recipe's quick runs (on CEDAR 4 to 5
# minutes a fold on a 2-core CPU: 5 trials and the two final runs took 53 minutes; less what the pruner stops). full:
# 40 trials of 3 folds of blog-length runs, for a GPU.
PROFILES = derived({"smoke": LOSSES_PROFILES["smoke"], "quick": LOSSES_PROFILES["quick"], "full": LOSSES_PROFILES["blog"]},
                   changes={
    "smoke": {"data": {"validation_folds": 2}, "train": {"epochs": 1}, "loss": {"losses": "semihard,arcface"},
              "tune": {"trials": 3, "compare_default": False}},
    "quick": {"data": {"validation_folds": 2}, "loss": {"losses": "semihard,hard,arcface,softmax,pair-ce"},
              "tune": {"trials": 10}},
    "full": {"data": {"validation_folds": 3}, "loss": {"losses": "semihard,hard,quadruplet,cosface,arcface,contrastive"},
             "tune": {"trials": 40}},
})


def trial_settings(config, trial):
    """The settings of one trial (an optuna.Trial, or optuna.trial.FixedTrial of a finished trial's parameters)."""
    space, sub = SEARCH[config.profile], copy.deepcopy(config)
    sub.model.cut_layer = trial.suggest_categorical("cut_layer", space["cut_layer"])
    if sub.model.unfreeze_from:  # quick fine-tunes the stage it cuts in (conv4_block6_add: from conv4_block1_1_conv)
        sub.model.unfreeze_from = sub.model.cut_layer.split("_")[0] + "_block1_1_conv"
    sub.image.image_size = trial.suggest_categorical("image_size", space["image_size"])
    sub.optimizer.learning_rate = trial.suggest_float("learning_rate", *LEARNING_RATES, log=True)
    sub.loss.margin = trial.suggest_float("margin", *MARGINS, log=True)
    sub.train.augment, sub.train.augment_level = True, trial.suggest_float("augment_level", 0.0, 1.0)
    loss = trial.suggest_categorical("loss", comma_list(config.loss.losses, "--losses", LOSS_NAMES, what="loss"))
    return with_loss(sub, loss)  # last, as exp-losses applies it: a contrastive trial keeps the post's margin


def on_test_writers(config):
    """The settings on the split's own writers: every training writer trains, the test writers are scored."""
    final = copy.deepcopy(config)
    final.data.validation_folds, final.data.validation_fold = 0, None
    return final


def on_validation_fold(config, fold: int):
    sub = copy.deepcopy(config)
    sub.data.validation_fold = fold
    return sub


def prepare(config):
    """The losses recipe's checks on validation fold 0 (its data: training writers only), every cut layer × image size
    of the search, and a start that saw no test writer."""
    if config.data.validation_folds < 2:
        raise ConfigError(f"--validation-folds {config.data.validation_folds}: the tune experiment scores each trial "
                          "on validation folds of the training writers; expected at least 2")
    if config.data.folds > 1 and config.data.fold is None:
        raise ConfigError(f"--folds {config.data.folds}: the tune experiment searches on one split; expected "
                          "--fold f with it")
    prepared = prepare_losses(on_validation_fold(config, 0))
    space = SEARCH[config.profile]
    for cut_layer, image_size in itertools.product(space["cut_layer"], space["image_size"]):
        validate_model_settings(config.model.backbone, cut_layer, image_size)
    check_start_saw_no_test_writer(on_test_writers(config), prepared.data)
    return prepared


def hard_max_accuracy(folder) -> float:
    return json.loads((folder / "metrics.json").read_text())["hard"]["max_accuracy"]


def tune(run, config, prepared) -> dict:
    engine, folds = prepared.engine, config.data.validation_folds

    def objective(trial):
        settings, number, scores = trial_settings(config, trial), first_number(trial), []
        for fold in range(folds):
            sub = on_validation_fold(settings, fold)
            folder = run_sub_run(run, f"trial{number:03d}-fold{fold}", sub,
                                 lambda sub=sub: Prepared(engine, prepare_data(sub)), train_with_loss)
            scores.append(hard_max_accuracy(folder))
            trial.report(scores[-1], fold)
            if fold < folds - 1 and trial.should_prune():
                raise optuna.TrialPruned()
        return statistics.mean(scores)

    study = open_study(run.path, config.train.seed)
    run_trials(study, config.tune.trials, objective)

    best = study.best_trial
    finals = {"best": on_test_writers(trial_settings(config, optuna.trial.FixedTrial(best.params)))}
    if config.tune.compare_default:
        finals["default"] = on_test_writers(with_loss(config, config.loss.loss))
    finished = {}
    for name, final in finals.items():
        folder = run_sub_run(run, name, final, lambda final=final: Prepared(engine, prepare_data(final)),
                             train_with_loss)
        finished[name] = (final, json.loads((folder / "metrics.json").read_text()))

    best_settings = settings_accepted_by(finals["best"], "losses")
    best_settings["loss"]["losses"] = best.params["loss"]
    write_text(run.file("best.yaml"), (
        f"# The best trial ({best.number}: mean validation max accuracy {best.value:.4f}) of {run.path}.\n"
        "# Rerun: python experiments/losses.py --config best.yaml\n" + yaml.safe_dump(best_settings, sort_keys=False)))
    summary = write_study_report(run.path, study, PARAMETERS, f"# Tuning: profile `{config.profile}`", finished)
    return {**summary, "hard": summary["best"]["hard"], "easy": summary["best"]["easy"]}


if __name__ == "__main__":
    sys.exit(run_experiment("tune", PROFILES, prepare, tune, description=__doc__))
