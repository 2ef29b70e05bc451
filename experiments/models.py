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

from sigverify import plots
from sigverify.config import MODELS_PROFILES
from sigverify.errors import ConfigError
from sigverify.experiment import run_experiment
from sigverify.losses import TripletSemiHardLoss
from sigverify.models import MODEL_ZOO, build_zoo_model, minimum_image_size, resolve_weights, validate_zoo_model
from sigverify.pipeline import (
    Prepared,
    describe_placement,
    environment,
    evaluate_and_report,
    prepare_data,
    prepare_experiment,
    train_and_report,
)
from sigverify.preprocess import PreprocessConfig
from sigverify.protocol import run_repeats
from sigverify.runs import write_text, writing
from sigverify.tables import (
    BOOTSTRAP_RESAMPLES,
    DEPLOYMENT_COLUMNS,
    HEADERS,
    PROTOCOL_NOTE,
    read_pair_scores,
    summary_cell,
    summary_markdown,
    summary_table,
)

FROM_SCRATCH = ("base_cnn", "base_unet")
METRIC_COLUMNS = ["train_seconds", "hard_max_accuracy", "hard_eer", "easy_max_accuracy", "hard_auc",
                  "hard_honest_accuracy"]
FACT_HEADERS = {"model": "model", "description": "description", "cut_layer": "cut layer", "image_size": "image",
                "parameters": "parameters", "file_mb": "model.keras (MB)", "weights": "weights", "runs": "runs"}


@dataclass
class ZooPrepared:
    image_sizes: dict[str, int]  # model name -> image side in pixels
    by_size: dict[int, Prepared]  # image side -> strategy, precision and data preprocessed at that size


def selected_models(zoo: str | None) -> list[str]:
    """The `--zoo` names in order (default: every MODEL_ZOO model but the contrastive one, its own experiment)."""
    if zoo is None:
        return [name for name, entry in MODEL_ZOO.items() if entry.kind != "contrastive"]
    names = list(dict.fromkeys(name.strip() for name in zoo.split(",") if name.strip()))
    if not names:
        raise ConfigError(f"--zoo {zoo!r}: expected comma-separated model names from {', '.join(MODEL_ZOO)}")
    for name in names:
        if name in MODEL_ZOO and MODEL_ZOO[name].kind == "contrastive":
            raise ConfigError(f"--zoo: {name} is trained with contrastive loss, in its own experiment (make "
                              "exp-contrastive); expected triplet models and pretrained baselines")
    return names


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
    names = selected_models(config.model.zoo)
    image_sizes = {name: image_size_for(name, config.image.image_size) for name in names}

    def check_settings():
        for name, size in image_sizes.items():
            validate_zoo_model(name, size)

    first, *others = sorted(set(image_sizes.values()))
    base = prepare_experiment(with_image_size(config, first), check_settings)
    by_size = {first: base}
    for size in others:
        preprocess = PreprocessConfig((size, size), config.image.binarize, config.image.keep_aspect)
        by_size[size] = Prepared(base.strategy, base.precision, prepare_data(with_image_size(config, size), preprocess))
    return ZooPrepared(image_sizes, by_size)


def model_config(config, name: str, image_size: int):
    """The settings of one model's runs, saved in each sub-run's config.yaml (so that `sigverify verify --run` works)."""
    entry = MODEL_ZOO[name]
    sub = with_image_size(config, image_size)
    sub.model.zoo = name
    sub.model.backbone = "none" if entry.kind in FROM_SCRATCH else entry.backbone  # "none": images scaled to [0, 1]
    sub.model.cut_layer = entry.cut_layer
    sub.model.normalize = entry.normalize
    if entry.kind == "pretrained":
        sub.train.epochs = 0
    return sub


def model_weights(name: str, requested: str) -> tuple[str | None, str]:
    entry = MODEL_ZOO[name]
    if entry.kind in FROM_SCRATCH:
        return None, "random initialisation (trained from scratch)"
    return resolve_weights(requested, entry.backbone)


def train_zoo_model(sub, config, prepared: Prepared) -> dict:
    """The triplet experiment's training and evaluation, with the zoo model `config.model.zoo`."""
    name, train, size = config.model.zoo, config.train, config.image.image_size
    entry = MODEL_ZOO[name]

    def build_model():
        weights, weights_description = model_weights(name, config.model.weights)
        cut = f": {entry.backbone} cut at {entry.cut_layer} + conv head" if entry.kind == "cut" else ""
        return build_zoo_model(name, (size, size, 3), weights), weights_description, entry.description + cut

    return train_and_report(sub, config, prepared, build_model,
                            lambda: TripletSemiHardLoss(margin=train.margin, distance_metric=train.distance_metric),
                            loss_description=f"TripletSemiHardLoss(margin={train.margin}, {train.distance_metric})")


def evaluate_pretrained_baseline(sub, config, prepared: Prepared) -> dict:
    """No training: the backbone's globally average-pooled features as embeddings, compared with cosine distance."""
    name, size = config.model.zoo, config.image.image_size
    with prepared.strategy.scope():
        weights, weights_description = model_weights(name, config.model.weights)
        model = build_zoo_model(name, (size, size, 3), weights)
    facts = {
        "weights": weights_description,
        "params": model.count_params(),
        "model_description": f"{MODEL_ZOO[name].description} (whole backbone + global average pooling)",
        "loss_description": "none (not trained)",
        "train_seconds": 0.0,
        "strategy": describe_placement(prepared.strategy),
        "precision": prepared.precision,
        "environment": environment(),
    }
    return evaluate_and_report(sub, config, model, prepared.data, facts, history={}, metric="cosine")


def run_models(run, config, zoo: ZooPrepared) -> dict:
    folders = {}
    for name, size in zoo.image_sizes.items():
        body = evaluate_pretrained_baseline if MODEL_ZOO[name].kind == "pretrained" else train_zoo_model
        folders[name] = run_repeats(run, model_config(config, name, size), zoo.by_size[size], body, prefix=f"{name}-")
    summary, runs = summary_table(folders, "model")
    table = model_facts(folders, zoo.image_sizes).merge(summary, on="model")
    table["post_max_accuracy"] = [MODEL_ZOO[name].reported_max_accuracy for name in table["model"]]
    table["post_eer"] = [MODEL_ZOO[name].reported_eer for name in table["model"]]
    write_text(run.file("table.csv"), table.to_csv(index=False, float_format="%.6g"))
    write_text(run.file("runs.csv"), runs.to_csv(index=False, float_format="%.6g"))
    markdown = table_markdown(table, config)
    write_text(run.file("table.md"), markdown)
    write_figures(run, config, table, folders)
    print(markdown)
    return {"models": table.to_dict(orient="records")}


def model_facts(folders: dict, image_sizes: dict[str, int]) -> pd.DataFrame:
    """Per model what does not change between its runs, from its first run's folder."""
    rows = []
    for name, paths in folders.items():
        metrics = json.loads((paths[0] / "metrics.json").read_text())
        rows.append({"model": name, "description": MODEL_ZOO[name].description,
                     "cut_layer": MODEL_ZOO[name].cut_layer or "", "image_size": image_sizes[name],
                     "parameters": metrics["params"], "file_mb": (paths[0] / "model.keras").stat().st_size / 1e6,
                     "weights": short_weights(metrics["weights"])})
    return pd.DataFrame(rows)


def short_weights(description: str) -> str:
    if description.startswith("ImageNet"):
        return "ImageNet"
    if "from scratch" in description:
        return "from scratch"
    return "random init" if description.startswith("random") else description


def _number(value, digits: int) -> str:
    return "—" if value is None or pd.isna(value) else f"{value:.{digits}f}"


def table_markdown(table: pd.DataFrame, config) -> str:
    """Title and settings, the models table (facts, metrics as `tables.summary_cell` writes them, the post's figures),
    the deployment table, and the note on what the cells are."""
    headers = [*FACT_HEADERS.values(), *(HEADERS[c] for c in METRIC_COLUMNS), "post: max accuracy / EER"]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for _, row in table.iterrows():
        post = (f"{_number(row['post_max_accuracy'], 3)} / {_number(row['post_eer'], 3)}"
                if pd.notna(row["post_max_accuracy"]) else "—")
        cells = [f"`{row['model']}`", row["description"], f"`{row['cut_layer']}`" if row["cut_layer"] else "—",
                 f"{row['image_size']}×{row['image_size']}", f"{int(row['parameters']):,}", _number(row["file_mb"], 1),
                 row["weights"], str(int(row["runs"])), *[summary_cell(row, column) for column in METRIC_COLUMNS], post]
        lines.append("| " + " | ".join(cells) + " |")
    train = config.train
    seeds = f"seed {train.seed}" if train.seeds == 1 else f"seeds {train.seed}…{train.seed + train.seeds - 1}"
    folds = f" on each of {config.data.folds} writer-disjoint folds" if config.data.folds > 1 else ""
    return "\n".join([
        f"# Model zoo: profile `{config.profile}`",
        "",
        (f"Every model trained with TripletSemiHardLoss(margin={train.margin}, {train.distance_metric}), {train.epochs} "
         f"epochs, batch {train.batch_size} ({train.sampler} sampler), Adam {train.learning_rate:g} with the "
         f"{train.schedule} schedule, {seeds}{folds}. The pretrained baselines are "
         "not trained (global average pooling of the whole backbone, cosine distance). The post's figures used ImageNet "
         "weights on CEDAR: where the weights column says otherwise they are not a like-for-like target."),
        "",
        *lines,
        "",
        "Verification against enrolled references and writer identification:",
        "",
        summary_markdown(table, "model", DEPLOYMENT_COLUMNS),
        "",
        PROTOCOL_NOTE.format(resamples=BOOTSTRAP_RESAMPLES),
        "",
    ])


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
    sys.exit(run_experiment("models", MODELS_PROFILES, prepare, run_models, description=__doc__))
