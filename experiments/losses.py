"""Loss comparison: the triplet experiment's backbone and head trained with each metric-learning loss of the reference
material (contrastive, semi-hard triplet, batch-hard triplet, quadruplet, CosFace, ArcFace, SphereFace), each evaluated
as exp-triplet, over writer-disjoint folds and seeds; then one table (mean ± std with bootstrap intervals) and one
figure of the skilled-forgery distance densities.

Every loss but contrastive trains on the same P×K batches of labelled images. Contrastive is a pair loss: the same
embedding model is the shared tower of a Siamese network trained on the training writers' verification pairs (those
of exp-contrastive: genuine–genuine 1, genuine–skilled and genuine–random 0) with the post's margin 0.5; each epoch
draws random pairs, batch size / 2 pairs a step (the same images per step) for as many steps as the other losses.

Each loss, fold and seed is a complete sub-run in its own folder (`<loss>-seed<s>/` or `<loss>-fold<f>-seed<s>/`); a
resumed run keeps the finished ones.

    python experiments/losses.py --profile quick [--data DIR] [--losses semihard,arcface] [--folds 5] [--seeds 2]
    (or: make exp-losses LOSSES=semihard,arcface FOLDS=5 SEEDS=2)
"""

import copy
import json
import sys

import keras
import numpy as np

from sigverify import plots
from sigverify.config import CONTRASTIVE_PROFILES, LOSSES_PROFILES
from sigverify.distances import evaluation_metric_for
from sigverify.errors import ConfigError
from sigverify.experiment import run_experiment
from sigverify.losses import ContrastiveLoss, describe_loss
from sigverify.models import build_siamese, resolve_weights
from sigverify.pipeline import (
    check_embedding_model_settings,
    check_loss_settings,
    configured_embedding_model,
    evaluate_and_report,
    prepare_experiment,
    reference_points,
    train_and_report,
    training_batches,
    training_facts,
)
from sigverify.protocol import run_repeats
from sigverify.runs import writing
from sigverify.tables import read_pair_scores, summary_table, write_summary_tables
from sigverify.train_common import make_optimizer

LOSS_NAMES = ("contrastive", "semihard", "hard", "quadruplet", "cosface", "arcface", "sphereface")
CONTRASTIVE_MARGIN = CONTRASTIVE_PROFILES["blog"]["train"]["margin"]  # the post's Siamese baseline: 0.5


def selected_losses(losses: str | None) -> list[str]:
    """The `--losses` names in order (default: all of LOSS_NAMES)."""
    if losses is None:
        return list(LOSS_NAMES)
    names = list(dict.fromkeys(name.strip() for name in losses.split(",") if name.strip()))
    unknown = [name for name in names if name not in LOSS_NAMES]
    if not names or unknown:
        raise ConfigError(f"--losses {losses!r}: expected comma-separated names from {', '.join(LOSS_NAMES)}")
    return names


def with_loss(config, name: str):
    """The settings of one loss's runs (saved in each sub-run's config.yaml)."""
    sub = copy.deepcopy(config)
    sub.train.loss, sub.train.losses = name, None
    if name == "contrastive":
        sub.train.margin = CONTRASTIVE_MARGIN
    return sub


def prepare(config):
    names = selected_losses(config.train.losses)

    def check_settings():
        check_embedding_model_settings(config)
        # Tried once per process, and a failed ImageNet download builds a throw-away model: done here, it cannot shift
        # the seeded initialisation of the first sub-run, so every loss starts from the same weights for a seed.
        resolve_weights(config.model.weights, config.model.backbone)
        for name in names:
            if name != "contrastive":
                check_loss_settings(with_loss(config, name))
        if "contrastive" in names and keras.backend.backend() != "tensorflow":
            raise ConfigError("--losses: contrastive trains on pairs with the TensorFlow loop; on the "
                              f"{keras.backend.backend()} backend leave it out (--losses semihard,hard,...)")

    return prepare_experiment(config, check_settings)


def train_on_pairs(run, config, prepared) -> dict:
    """The contrastive loss on the same embedding model: a Siamese network on random training pairs, as many images a
    step and steps an epoch as the labelled losses, then the same evaluation. TensorFlow's loop (checked in `prepare`)."""
    from sigverify.data.feed import pair_batches
    from sigverify.distribute import is_chief
    from sigverify.train import Trainer

    strategy, data, train, backbone = prepared.strategy, prepared.data, config.train, config.model.backbone
    steps = len(training_batches(data.train.labels, config, 0))
    pairs_per_step = max(1, train.batch_size // 2)
    with strategy.scope():
        model, weights_description, model_description = configured_embedding_model(config)
        siamese = build_siamese(model)
        optimizer = make_optimizer(train, steps_per_epoch=steps)
    references = reference_points(model, data, backbone)

    def batches(images, pairs, epoch, count):
        chosen = np.random.default_rng([train.seed, epoch, 3]).choice(len(pairs), size=min(count, len(pairs)),
                                                                       replace=False)
        rows = pairs.iloc[chosen]
        return pair_batches(images, rows["a"].to_numpy(), rows["b"].to_numpy(), rows["same"].to_numpy(), pairs_per_step,
                            train.seed, epoch, backbone=backbone, shuffle=False)

    loss = ContrastiveLoss(margin=train.margin)
    trainer = Trainer(siamese, loss, optimizer, strategy, run.path, write_files=is_chief(strategy), jit=train.jit)
    result = trainer.fit(lambda epoch: batches(data.train.images, data.train.pairs, epoch, steps * pairs_per_step),
                         train.epochs, steps,
                         validation_batches=lambda epoch: batches(data.test.images, data.test.pairs, 0, 4 * pairs_per_step))
    facts = training_facts(prepared, model, weights_description, model_description,
                           f"{describe_loss(loss)} on Euclidean distance, Siamese pairs", result, references)
    metric = evaluation_metric_for(train.distance_metric, l2_normalized=config.model.normalize)
    return evaluate_and_report(run, config, model, data, facts, result.history, metric=metric)


def train_with_loss(run, config, prepared) -> dict:
    if config.train.loss == "contrastive":
        return train_on_pairs(run, config, prepared)
    return train_and_report(run, config, prepared, lambda: configured_embedding_model(config))


def run_losses(run, config, prepared) -> dict:
    folders = {name: run_repeats(run, with_loss(config, name), prepared, train_with_loss, prefix=f"{name}-")
               for name in selected_losses(config.train.losses)}
    summary, runs = summary_table(folders, "loss")
    first_runs = {name: json.loads((paths[0] / "metrics.json").read_text()) for name, paths in folders.items()}
    train = config.train
    splits = (f"{config.data.folds} writer-disjoint folds" if config.data.folds > 1 and config.data.fold is None
              else "the default split" if config.data.folds == 1 else f"fold {config.data.fold} of {config.data.folds}")
    weights = next(iter(first_runs.values()))["weights"].split(" (")[0]  # "random initialisation (why...)"
    markdown = write_summary_tables(run.path, summary, runs, "loss", [
        f"# Losses: profile `{config.profile}`",
        "",
        (f"Every loss trains the same model ({next(iter(first_runs.values()))['model_description']}; weights: {weights}), "
         f"{train.epochs} epochs, batch {train.batch_size} ({train.sampler} sampler), Adam {train.learning_rate:g} with "
         f"the {train.schedule} schedule, on {splits} with seed(s) {train.seed}…{train.seed + train.seeds - 1}."),
        "",
        *[f"- {name}: {metrics['loss_description']}" for name, metrics in first_runs.items()],
    ])
    curves = {}
    for name, paths in folders.items():  # the first run of each loss
        hard = read_pair_scores(paths[0])["hard"]
        curves[name] = (hard.distances, hard.same)
    with writing(run.file("density_hard_losses.png")) as temporary:
        plots.plot_distance_density_overlay(curves, temporary, negative_label="skilled forgery",
                                            title="Cosine distances of test pairs by training loss")
    print(markdown)
    return {"losses": summary.to_dict(orient="records")}


if __name__ == "__main__":
    sys.exit(run_experiment("losses", LOSSES_PROFILES, prepare, run_losses, description=__doc__))
