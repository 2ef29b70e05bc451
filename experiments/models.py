"""Model zoo (the post's Table 1 and Figures 12, 14, 15): every MODEL_ZOO model trained with the same triplet recipe and
seed(s), each evaluated as the triplet experiment does, then one comparison table and three comparison figures.

Each model, fold and seed is a complete sub-run in its own folder of the run (`<model>-seed<s>/`, as exp-triplet writes
it); the two pretrained baselines are not trained: their globally average-pooled backbone features are compared with
cosine distance. A model whose cut needs bigger images than `--image-size` runs at its own minimum size (the table says
which). A resumed run keeps the finished sub-runs and continues an interrupted one from its last epoch.

    python experiments/models.py --profile quick [--data DIR] [--zoo small_resnet50,base_cnn] [--seeds 3]
    (or: make exp-models MODELS=small_resnet50,base_cnn SEEDS=3)
"""

import copy
import json
import sys
from dataclasses import dataclass

import pandas as pd
from triplet import QUICK_FOR_RANDOM_STARTS
from triplet import SHARED_PROFILES as TRIPLET_PROFILES  # every model trains with the triplet recipe

from sigverify.data.prepare import prepare_data
from sigverify.errors import ConfigError
from sigverify.evaluation.model import evaluate_model
from sigverify.experiment import run_experiment
from sigverify.losses import TripletSemiHardLoss
from sigverify.models.backbones import minimum_image_size
from sigverify.models.embedding import backbone_trainable_variables
from sigverify.models.zoo import MODEL_ZOO, build_zoo_model, model_weights, validate_zoo_model
from sigverify.protocol import run_repeats
from sigverify.reporting import plots
from sigverify.reporting.run_files import training_facts, write_run_files
from sigverify.reporting.tables import (
    describe_training,
    number_text,
    read_pair_scores,
    summary_table,
    write_summary_tables,
)
from sigverify.runs import writing
from sigverify.settings import comma_list, derived
from sigverify.steps import Prepared, prepare_experiment, train_and_report

# The triplet experiment's profiles, each model with its own backbone and cut layer (from MODEL_ZOO); a model whose cut
# needs bigger images than image_size runs at its own minimum (full ResNet50: 97, VGG16: 128). quick: 64×64, 8 genuine
# + 8 forged images per writer, 4 epochs: about 27 CPU-minutes for all models on CEDAR (VGG16 12, ResNet50 5), 15–20
# minutes on an idle 2-core CPU, with the rates of QUICK_FOR_RANDOM_STARTS.
PROFILES = derived(TRIPLET_PROFILES, everywhere={"model": {"cut_layer": None}}, changes={
    "quick": {**QUICK_FOR_RANDOM_STARTS, "data": {"max_samples": 8}, "image": {"image_size": 64},
              "train": {"epochs": 4}},
})
TRAINED = [name for name, entry in MODEL_ZOO.items() if entry.kind != "contrastive"]  # contrastive: its own experiment


@dataclass
class ZooPrepared:
    image_sizes: dict[str, int]  # model name -> image side in pixels
    by_size: dict[int, Prepared]  # image side -> engine and data preprocessed at that size

    @property
    def engine(self):
        return next(iter(self.by_size.values())).engine


def image_size_for(name: str, image_size: int) -> int:
    """`image_size`, or the smallest image the model's cut can take when that is bigger (full ResNet50: 97, VGG16: 128)."""
    entry = MODEL_ZOO.get(name)
    if entry is not None and entry.kind == "cut":
        return max(image_size, minimum_image_size(entry.backbone, entry.cut_layer))
    return image_size


def with_image_size(config, image_size: int):
    sized = copy.deepcopy(config)
    sized.image.image_size = image_size
    return sized


def prepare(config) -> ZooPrepared:
    names = comma_list(config.model.zoo, "--zoo", list(MODEL_ZOO), default=TRAINED, what="model")
    if contrastive := [name for name in names if MODEL_ZOO[name].kind == "contrastive"]:
        raise ConfigError(f"--zoo: {contrastive[0]} is trained with contrastive loss, in its own experiment (make "
                          "exp-contrastive); expected triplet models and pretrained baselines")
    image_sizes = {name: image_size_for(name, config.image.image_size) for name in names}

    def check_settings():
        for name, size in image_sizes.items():
            validate_zoo_model(name, size)

    first, *others = sorted(set(image_sizes.values()))
    base = prepare_experiment(with_image_size(config, first), check_settings)
    by_size = {first: base, **{size: Prepared(base.engine, prepare_data(with_image_size(config, size))) for size in others}}
    return ZooPrepared(image_sizes, by_size)


def model_config(config, name: str, image_size: int):
    """The settings of one model's runs, saved in each sub-run's config.yaml (so that `sigverify verify --run` works)."""
    entry = MODEL_ZOO[name]
    sub = with_image_size(config, image_size)
    sub.model.zoo = name
    sub.model.backbone = "none" if entry.backbone is None else entry.backbone  # "none": trained from scratch
    sub.model.cut_layer = entry.cut_layer
    sub.model.normalize = entry.normalize
    sub.model.unfreeze_from = None  # each zoo model trains whole: the post's comparison
    if entry.kind == "pretrained":
        sub.train.epochs = 0
    return sub


def train_zoo_model(sub, config, prepared: Prepared) -> dict:
    """The triplet experiment's training and evaluation, with the zoo model `config.model.zoo`."""
    name, loss, size = config.model.zoo, config.loss, config.image.image_size
    entry = MODEL_ZOO[name]

    def build_model():
        weights, weights_description = model_weights(name, config.model.weights)
        cut = f": {entry.backbone} cut at {entry.cut_layer} + conv head" if entry.kind == "cut" else ""
        model = build_zoo_model(name, size, weights)
        pretrained = backbone_trainable_variables(model) if entry.kind == "cut" and weights else []
        return model, weights_description, entry.description + cut, pretrained

    return train_and_report(sub, config, prepared, build_model,
                            lambda train: TripletSemiHardLoss(margin=loss.margin, distance_metric=loss.distance),
                            loss_description=f"TripletSemiHardLoss(margin={loss.margin}, {loss.distance})")


def evaluate_pretrained_baseline(sub, config, prepared: Prepared) -> dict:
    """No training: the backbone's globally average-pooled features as embeddings, compared with cosine distance."""
    name = config.model.zoo
    with prepared.engine.scope():
        weights, weights_description = model_weights(name, config.model.weights)
        model = build_zoo_model(name, config.image.image_size, weights)
    entry = MODEL_ZOO[name]
    layers = f"{entry.backbone} up to {entry.cut_layer}" if entry.cut_layer else "whole backbone"
    facts = training_facts(prepared.engine, model, weights_description,
                           f"{entry.description} ({layers} + global average pooling)", "none (not trained)")
    return write_run_files(sub, config, model, prepared.data, evaluate_model(model, prepared.data, "cosine"), facts,
                           history={})


def run_models(run, config, zoo: ZooPrepared) -> dict:
    folders = {}
    for name, size in zoo.image_sizes.items():
        body = evaluate_pretrained_baseline if MODEL_ZOO[name].kind == "pretrained" else train_zoo_model
        folders[name] = run_repeats(run, model_config(config, name, size), zoo.by_size[size], body, prefix=f"{name}-")
    summary, runs = summary_table(folders, "model")
    table = model_facts(folders, zoo.image_sizes).merge(summary, on="model")
    loss = config.loss
    markdown = write_summary_tables(run.path, table, runs, "model", [
        f"# Model zoo: profile `{config.profile}`",
        "",
        (f"Every model trained with TripletSemiHardLoss(margin={loss.margin}, {loss.distance}), "
         f"{describe_training(config)}. The pretrained baselines are not trained (global average pooling of the whole "
         "backbone, cosine distance). The post's figures used ImageNet weights on CEDAR: where the weights column says "
         "otherwise they are not a like-for-like target."),
    ], facts=FACT_CELLS)
    write_figures(run, config, table, folders)
    print(markdown)
    return {"models": table.to_dict(orient="records")}


FACT_CELLS = {
    "description": lambda row: row["description"],
    "cut layer": lambda row: f"`{row['cut_layer']}`" if row["cut_layer"] else "—",
    "image": lambda row: f"{row['image_size']}×{row['image_size']}",
    "parameters": lambda row: f"{int(row['parameters']):,}",
    "model.keras (MB)": lambda row: number_text(row["file_mb"], 1),
    "weights": lambda row: row["weights"],
    "post: max accuracy / EER": lambda row: (f"{number_text(row['post_max_accuracy'], 3)} / "
                                             f"{number_text(row['post_eer'], 3)}"
                                             if pd.notna(row["post_max_accuracy"]) else "—"),
}


def model_facts(folders: dict, image_sizes: dict[str, int]) -> pd.DataFrame:
    """Per model what does not change between its runs, from its first run's folder, and the post's figures."""
    rows = []
    for name, paths in folders.items():
        metrics = json.loads((paths[0] / "metrics.json").read_text())
        entry = MODEL_ZOO[name]
        rows.append({"model": name, "description": entry.description, "cut_layer": entry.cut_layer or "",
                     "image_size": image_sizes[name], "parameters": metrics["params"],
                     "file_mb": (paths[0] / "model.keras").stat().st_size / 1e6,
                     "weights": short_weights(metrics["weights"]), "post_max_accuracy": entry.reported_max_accuracy,
                     "post_eer": entry.reported_eer})
    return pd.DataFrame(rows)


def short_weights(description: str) -> str:
    if description.startswith("ImageNet"):
        return "ImageNet"
    if "from scratch" in description:
        return "from scratch"
    return "random init" if description.startswith("random") else description


def write_figures(run, config, table: pd.DataFrame, folders: dict) -> None:
    with writing(run.file("accuracy_vs_size.png")) as temporary:
        plots.plot_accuracy_vs_size(table["model"], table["parameters"], table["hard_max_accuracy_mean"], temporary,
                                    title=f"Max accuracy on skilled forgeries against model size ({config.profile} "
                                          "profile)")
    # Figures 14 and 15 are of cosine distances: the first run of each model scored with them (all but NONORM ones)
    first_runs = {name: paths[0] for name, paths in folders.items()
                  if json.loads((paths[0] / "metrics.json").read_text())["distance"] == "cosine"}
    left_out = [name for name in folders if name not in first_runs]
    for pair_set, negatives in (("hard", "skilled forgery"), ("easy", "random forgery")):
        curves = {}
        for name, path in first_runs.items():
            scores = read_pair_scores(path).get(pair_set)
            if scores is not None:
                curves[name] = (scores.distances, scores.same)
        if not curves:
            print(f"density_{pair_set}_models.png: no cosine-scored model, not drawn", file=sys.stderr)
            continue
        title = f"Cosine distances of test pairs: genuine vs {negatives}"
        if left_out:
            title += f"; left out, not scored by cosine distance: {', '.join(left_out)}"
        with writing(run.file(f"density_{pair_set}_models.png")) as temporary:
            plots.plot_distance_density_overlay(curves, temporary, negative_label=negatives, title=title)


if __name__ == "__main__":
    sys.exit(run_experiment("models", PROFILES, prepare, run_models, description=__doc__))
