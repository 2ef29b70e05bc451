"""Loss comparison: the triplet experiment's backbone and head trained with each metric-learning loss of the reference
material (contrastive, semi-hard triplet, batch-hard triplet, quadruplet, CosFace, ArcFace, SphereFace) and with the
two cross-entropy pipelines a practitioner tries first (a writer classifier whose penultimate features are compared by
cosine; a pair classifier), each evaluated as exp-triplet, over writer-disjoint folds and seeds; then one table (mean ±
std with bootstrap intervals) and one figure of the skilled-forgery distance densities: metric learning against
cross-entropy on the same footing.

The labelled losses train on the same P×K batches of labelled images. `softmax` is plain cross-entropy over the
training labels (each writer's genuine signatures one class, their forgeries another, as the triplet losses see them),
`softmax-genuine` over the writers' genuine signatures only (forgeries unseen); both classify the head's output
unnormalized and are scored by cosine. Contrastive and pair-ce are pair losses on the training writers' verification
pairs (those of exp-contrastive), the same embedding model the shared tower of a Siamese model: contrastive with the
post's margin 0.5 on same/different; pair-ce a 3-way softmax (genuine, skilled forgery, random forgery) on
|e₁ − e₂| and e₁ ⊙ e₂ through one hidden layer, scored by 1 − P(genuine). Each epoch of a pair loss draws random
pairs, batch size / 2 pairs a step (the same images per step) for as many steps as the other losses.

Each loss, fold and seed is a complete sub-run in its own folder (`<loss>-seed<s>/` or `<loss>-fold<f>-seed<s>/`); a
resumed run keeps the finished ones.

    python experiments/losses.py --profile quick [--data DIR] [--losses semihard,arcface] [--folds 5] [--seeds 2]
    (or: make exp-losses LOSSES=semihard,arcface FOLDS=5 SEEDS=2)
"""

import copy
import json
import sys

from triplet import SHARED_PROFILES as TRIPLET_PROFILES  # every loss trains the triplet experiment's model

from sigverify.data.pairs import PAIR_KINDS, with_kind_classes
from sigverify.distances import scoring_distance
from sigverify.evaluation.model import evaluate_model, reference_points
from sigverify.experiment import run_experiment
from sigverify.losses import PAIR_LOSSES, ContrastiveLoss, PairCrossEntropyLoss, describe_loss, loss_from_settings
from sigverify.models.backbones import validate_model_settings
from sigverify.models.siamese import PairClassifierScore, build_pair_classifier, build_pair_head, build_siamese
from sigverify.models.weights import resolve_weights
from sigverify.models.zoo import embedding_model_from_settings
from sigverify.protocol import run_repeats
from sigverify.reporting.plots import plot_distance_density_overlay
from sigverify.reporting.run_files import training_facts, write_run_files
from sigverify.reporting.tables import describe_training, read_pair_scores, summary_table, write_summary_tables
from sigverify.runs import writing
from sigverify.settings import comma_list, derived
from sigverify.steps import labelled_feed, prepare_experiment, train_and_report
from sigverify.training.engine import PairBatches, make_optimizer, pair_steps
from sigverify.verification.trained_run import PAIR_HEAD_FILE

LOSS_NAMES = ("contrastive", "semihard", "hard", "quadruplet", "cosface", "arcface", "sphereface", "softmax",
              "softmax-genuine", "pair-ce")
SOFTMAX_LOSSES = ("softmax", "softmax-genuine")
CONTRASTIVE_MARGIN = 0.5  # the post's Siamese baseline

# The triplet experiment's profiles (its model and P×K batches for every loss), without UMAP or Grad-CAM per run (many
# runs). quick: 64×64 images, 16 genuine + 16 forged per writer (K = 12 references leave 4 questioned genuine), 3
# epochs: about 2 minutes a run on a busy 2-core CPU, so 7 losses × 5 folds take over an hour there. blog: the post's
# protocol, with P×K batches of 16 × 4 = 64 so that every batch-mining loss has positives.
PROFILES = derived(TRIPLET_PROFILES, everywhere={"report": {"umap": False, "gradcam_images": 0}}, changes={
    "quick": {"data": {"max_samples": 16}, "image": {"image_size": 64}, "train": {"epochs": 3}},
    "blog": {"batches": TRIPLET_PROFILES["quick"]["batches"]},
})


def with_loss(config, name: str):
    """The settings of one loss's runs (saved in each sub-run's config.yaml)."""
    sub = copy.deepcopy(config)
    sub.loss.loss, sub.loss.losses = name, None
    if name == "contrastive":
        sub.loss.margin = CONTRASTIVE_MARGIN
    if name in SOFTMAX_LOSSES:  # the classifier sits on the head's output, the penultimate layer: not normalized
        sub.model.normalize = False
    return sub


def prepare(config):
    names = comma_list(config.loss.losses, "--losses", LOSS_NAMES, what="loss")

    def check_settings():
        validate_model_settings(config.model.backbone, config.model.cut_layer, config.image.image_size)
        # Tried once per process, and a failed ImageNet download builds a throw-away model: done here, it cannot shift
        # the seeded initialisation of the first sub-run, so every loss starts from the same weights for a seed.
        resolve_weights(config.model.weights, config.model.backbone)
        for name in names:
            if name not in PAIR_LOSSES:  # train_on_pairs builds those
                loss_from_settings(with_loss(config, name).loss)

    return prepare_experiment(config, check_settings)


def train_on_pairs(run, config, prepared) -> dict:
    """A pair loss on the same embedding model, as many images a step and steps an epoch as the labelled losses, then
    the same evaluation: contrastive trains a Siamese network on the pairs' same/different labels (scored by the
    distance), pair-ce a pair classifier on their kind (genuine, skilled, random; scored by 1 − P(genuine), its head
    saved beside the model as pair_head.keras)."""
    engine, data, seed = prepared.engine, prepared.data, config.train.seed
    classifies = config.loss.loss == "pair-ce"
    target = "kind_class" if classifies else "same"
    train_pairs, test_pairs = (with_kind_classes(split.pairs) for split in (data.train, data.test))
    steps = labelled_feed(data.train, config).steps()
    pairs_per_step = max(1, config.batches.batch_size // 2)
    train_feed = PairBatches(data.train.images, lambda epoch: pair_steps(
        train_pairs, pairs_per_step, seed, epoch, limit=steps * pairs_per_step, target=target))
    validation = PairBatches(data.test.images, lambda epoch: pair_steps(
        test_pairs, pairs_per_step, seed, 0, limit=4 * pairs_per_step, target=target))
    with engine.scope():
        model, weights_description, model_description, pretrained_variables = embedding_model_from_settings(
            config.model, config.image.image_size)
        if classifies:
            head = build_pair_head(config.model.embedding_dim)
            pair_model, loss = build_pair_classifier(model, head), PairCrossEntropyLoss()
        else:
            pair_model, loss = build_siamese(model), ContrastiveLoss(margin=config.loss.margin)
        optimizer = make_optimizer(config.optimizer, config.train.epochs, steps, pretrained_variables)
    references = reference_points(model, data)
    result = engine.fit(run.path, pair_model, loss, train_feed, config.train.epochs, optimizer, validation)
    if classifies:
        distance, trained_on = PairClassifierScore(head), f"a pair classifier of {', '.join(PAIR_KINDS)} pairs"
        with writing(run.file(PAIR_HEAD_FILE)) as temporary:
            head.save(temporary)
    else:
        distance = scoring_distance(config.loss.distance, config.model.normalize)
        trained_on = "Euclidean distance, Siamese pairs"
    facts = training_facts(engine, model, weights_description, model_description,
                           f"{describe_loss(loss)} on {trained_on}", result, references)
    evaluation = evaluate_model(model, data, distance)
    return write_run_files(run, config, model, data, evaluation, facts, result.history)


def train_with_loss(run, config, prepared) -> dict:
    if config.loss.loss in PAIR_LOSSES:
        return train_on_pairs(run, config, prepared)
    return train_and_report(run, config, prepared)


def run_losses(run, config, prepared) -> dict:
    folders = {name: run_repeats(run, with_loss(config, name), prepared, train_with_loss, prefix=f"{name}-")
               for name in comma_list(config.loss.losses, "--losses", LOSS_NAMES, what="loss")}
    summary, runs = summary_table(folders, "loss")
    first_runs = {name: json.loads((paths[0] / "metrics.json").read_text()) for name, paths in folders.items()}
    first = next(iter(first_runs.values()))
    markdown = write_summary_tables(run.path, summary, runs, "loss", [
        f"# Losses: profile `{config.profile}`",
        "",
        (f"Every loss trains the same model ({first['model_description']}; weights: "
         f"{first['weights'].split(' (')[0]}), {describe_training(config)}."),
        "",
        *[f"- {name}: {metrics['loss_description']}" for name, metrics in first_runs.items()],
    ])
    curves = {}
    for name, paths in folders.items():  # the first run of each loss
        hard = read_pair_scores(paths[0])["hard"]
        curves[name] = (hard.distances, hard.same)
    with writing(run.file("density_hard_losses.png")) as temporary:
        plot_distance_density_overlay(curves, temporary, negative_label="skilled forgery",
                                      title="Cosine distances of test pairs by training loss")
    print(markdown)
    return {"losses": summary.to_dict(orient="records")}


if __name__ == "__main__":
    sys.exit(run_experiment("losses", PROFILES, prepare, run_losses, description=__doc__))
