"""Model zoo (the post's Table 1 and Figures 12, 14, 15): every MODEL_ZOO model trained with the same triplet recipe and
seed(s), each evaluated as the triplet experiment does, then one comparison table and three comparison figures.

Each model and seed is a complete sub-run in its own folder of the run (`<model>-seed<n>/`, as exp-triplet writes it);
the two pretrained baselines are not trained: their globally average-pooled backbone features are compared with cosine
distance. A model whose cut needs bigger images than `--image-size` runs at its own minimum size (the table says which).
A resumed run skips the sub-runs that have finished and continues an interrupted one from its last epoch.

    python experiments/models.py --profile quick [--data DIR] [--zoo small_resnet50,base_cnn] [--seeds 3]
    (or: make exp-models MODELS=small_resnet50,base_cnn SEEDS=3)
"""

import copy
import json
import sys
from dataclasses import dataclass

import numpy as np
import pandas as pd

from sigverify import plots
from sigverify.config import MODELS_PROFILES
from sigverify.distribute import describe_strategy
from sigverify.errors import ConfigError, DataError
from sigverify.evaluate import evaluate_embeddings
from sigverify.experiment import run_experiment, seed_everything
from sigverify.losses import TripletSemiHardLoss
from sigverify.models import MODEL_ZOO, build_zoo_model, minimum_image_size, resolve_weights, validate_zoo_model
from sigverify.pipeline import (
    Prepared,
    environment,
    evaluate_and_report,
    prepare_data,
    prepare_experiment,
    train_and_report,
)
from sigverify.preprocess import PreprocessConfig
from sigverify.runs import CONFIG_FILE, write_text, write_yaml, writing

FROM_SCRATCH = ("base_cnn", "base_unet")
METRIC_COLUMNS = {  # table column -> (pair set, metrics.json key)
    "hard_max_accuracy": ("hard", "max_accuracy"),
    "hard_eer": ("hard", "eer"),
    "easy_max_accuracy": ("easy", "max_accuracy"),
    "hard_auc": ("hard", "auc"),
    "hard_honest_accuracy": ("hard", "accuracy_at_train_threshold"),
}
MARKDOWN_COLUMNS = {
    "model": "model", "description": "description", "cut_layer": "cut layer", "image_size": "image", "parameters": "parameters",
    "file_mb": "model.keras (MB)", "weights": "weights", "train_seconds": "train s",
    "hard_max_accuracy": "max accuracy, skilled", "hard_eer": "EER, skilled", "easy_max_accuracy": "max accuracy, random",
    "hard_auc": "AUC, skilled", "hard_honest_accuracy": "honest accuracy, skilled", "post": "post: max accuracy / EER",
}


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


def sub_run_config(config, name: str, image_size: int, seed: int):
    """The settings of one model's sub-run, saved as its config.yaml (so that `sigverify verify --run` can use it)."""
    entry = MODEL_ZOO[name]
    sub = with_image_size(config, image_size)
    sub.model.zoo = name
    sub.model.backbone = "none" if entry.kind in FROM_SCRATCH else entry.backbone  # "none": images scaled to [0, 1]
    sub.model.cut_layer = entry.cut_layer
    sub.model.normalize = entry.normalize
    sub.train.seed = seed
    sub.train.seeds = 1
    if entry.kind == "pretrained":
        sub.train.epochs = 0
    return sub


def model_weights(name: str, requested: str) -> tuple[str | None, str]:
    entry = MODEL_ZOO[name]
    if entry.kind in FROM_SCRATCH:
        return None, "random initialisation (trained from scratch)"
    return resolve_weights(requested, entry.backbone)


def train_zoo_model(sub, config, prepared: Prepared, name: str) -> dict:
    """The triplet experiment's training and evaluation, with the zoo model `name`."""
    entry, train, size = MODEL_ZOO[name], config.train, config.image.image_size

    def build_model():
        weights, weights_description = model_weights(name, config.model.weights)
        cut = f": {entry.backbone} cut at {entry.cut_layer} + conv head" if entry.kind == "cut" else ""
        return build_zoo_model(name, (size, size, 3), weights), weights_description, entry.description + cut

    return train_and_report(sub, config, prepared, build_model,
                            lambda: TripletSemiHardLoss(margin=train.margin, distance_metric=train.distance_metric),
                            loss_description=f"TripletSemiHardLoss(margin={train.margin}, {train.distance_metric})")


def evaluate_pretrained_baseline(sub, config, prepared: Prepared, name: str) -> dict:
    """No training: the backbone's globally average-pooled features as embeddings, compared with cosine distance."""
    size = config.image.image_size
    with prepared.strategy.scope():
        weights, weights_description = model_weights(name, config.model.weights)
        model = build_zoo_model(name, (size, size, 3), weights)
    facts = {
        "weights": weights_description,
        "params": model.count_params(),
        "model_description": f"{MODEL_ZOO[name].description} (whole backbone + global average pooling)",
        "loss_description": "none (not trained)",
        "train_seconds": 0.0,
        "strategy": describe_strategy(prepared.strategy),
        "precision": prepared.precision,
        "environment": environment(),
    }
    return evaluate_and_report(sub, config, model, prepared.data, facts, history={}, metric="cosine")


def run_models(run, config, zoo: ZooPrepared) -> dict:
    names, seeds = list(zoo.image_sizes), [config.train.seed + i for i in range(config.train.seeds)]
    results = []
    for name in names:
        size = zoo.image_sizes[name]
        prepared = zoo.by_size[size]
        for seed in seeds:
            sub = run.child(f"{name}-seed{seed}")
            if sub.is_complete():
                print(f"{name}, seed {seed}: finished earlier, kept ({sub.path})", file=sys.stderr)
            else:
                print(f"{name}, seed {seed}: {size}×{size} images → {sub.path}", file=sys.stderr)
                sub_config = sub_run_config(config, name, size, seed)
                seed_everything(seed, config.train.deterministic)
                with sub.running():
                    write_yaml(sub.file(CONFIG_FILE), sub_config.to_dict())
                    run_one = evaluate_pretrained_baseline if MODEL_ZOO[name].kind == "pretrained" else train_zoo_model
                    run_one(sub, sub_config, prepared, name)
            results.append(sub_run_result(sub.path, name, seed, size, prepared.data.test.pairs))
    table = comparison_table(results)
    write_text(run.file("table.csv"), table.to_csv(index=False, float_format="%.6g"))
    markdown = table_markdown(table, config, seeds)
    write_text(run.file("table.md"), markdown)
    write_figures(run, config, table, results)
    print(markdown)
    return {"models": table.to_dict(orient="records")}


def sub_run_result(path, name: str, seed: int, image_size: int, test_pairs: pd.DataFrame) -> dict:
    """A finished sub-run's numbers (from its files, so that a resumed run reads the earlier ones the same way) and the
    cosine distances of its test pairs (the post's Figures 14 and 15 are of cosine distances, whatever the training
    distance)."""
    metrics = json.loads((path / "metrics.json").read_text())
    embeddings = np.load(path / "embeddings.npz")["embeddings"]
    if len(embeddings) != metrics["n_test_images"]:
        raise DataError(f"{path / 'embeddings.npz'}: {len(embeddings)} embeddings for {metrics['n_test_images']} test "
                        "images; expected one per test image")
    _, scores = evaluate_embeddings(embeddings, test_pairs, metric="cosine")
    row = {"model": name, "seed": seed, "image_size": image_size, "parameters": metrics["params"],
           "file_mb": (path / "model.keras").stat().st_size / 1e6, "weights": short_weights(metrics["weights"]),
           "train_seconds": metrics["train_seconds"]}
    for column, (pair_set, key) in METRIC_COLUMNS.items():
        row[column] = (metrics.get(pair_set) or {}).get(key)
    return {"row": row, "cosine_scores": scores}


def short_weights(description: str) -> str:
    if description.startswith("ImageNet"):
        return "ImageNet"
    if "from scratch" in description:
        return "from scratch"
    return "random init" if description.startswith("random") else description


def comparison_table(results: list[dict]) -> pd.DataFrame:
    """One row per model: its facts, the metrics (mean and sample standard deviation over seeds when there are several),
    and the post's figures."""
    runs = pd.DataFrame([result["row"] for result in results])
    several_seeds = runs["seed"].nunique() > 1
    measured = ["train_seconds", *METRIC_COLUMNS]
    rows = []
    for name, group in runs.groupby("model", sort=False):
        entry = MODEL_ZOO[name]
        row = {"model": name, "description": entry.description, "cut_layer": entry.cut_layer or "",
               **group.iloc[0][["image_size", "parameters", "file_mb", "weights"]].to_dict(), "seeds": len(group)}
        for column in measured:
            values = group[column].astype(float)
            if several_seeds:
                row[f"{column}_mean"], row[f"{column}_std"] = values.mean(), values.std(ddof=1)
            else:
                row[column] = values.iloc[0]
        row["post_max_accuracy"], row["post_eer"] = entry.reported_max_accuracy, entry.reported_eer
        rows.append(row)
    return pd.DataFrame(rows)


def _number(value, digits: int) -> str:
    return "—" if value is None or pd.isna(value) else f"{value:.{digits}f}"


def _cell(row: pd.Series, column: str, digits: int) -> str:
    if column in row:
        return _number(row[column], digits)
    return f"{_number(row[f'{column}_mean'], digits)} ± {_number(row[f'{column}_std'], digits)}"


def table_markdown(table: pd.DataFrame, config, seeds: list[int]) -> str:
    lines = ["| " + " | ".join(MARKDOWN_COLUMNS.values()) + " |", "|" + "---|" * len(MARKDOWN_COLUMNS)]
    for _, row in table.iterrows():
        post = (f"{_number(row['post_max_accuracy'], 3)} / {_number(row['post_eer'], 3)}"
                if pd.notna(row["post_max_accuracy"]) else "—")
        cells = [f"`{row['model']}`", row["description"], f"`{row['cut_layer']}`" if row["cut_layer"] else "—",
                 f"{row['image_size']}×{row['image_size']}", f"{int(row['parameters']):,}", _number(row["file_mb"], 1),
                 row["weights"], _cell(row, "train_seconds", 0),
                 *[_cell(row, column, 3) for column in METRIC_COLUMNS], post]
        lines.append("| " + " | ".join(cells) + " |")
    train = config.train
    notes = [
        f"# Model zoo: profile `{config.profile}`",
        "",
        (f"Every model trained with TripletSemiHardLoss(margin={train.margin}, {train.distance_metric}), {train.epochs} "
         f"epochs, batch {train.batch_size} ({train.sampler} sampler), Adam {train.learning_rate:g} with the "
         f"{train.schedule} schedule; seed(s) {', '.join(map(str, seeds))}. The pretrained baselines are not trained "
         "(global average pooling of the whole backbone, cosine distance)."
         + ("" if len(seeds) == 1 else f" Each cell is the mean ± sample standard deviation over the {len(seeds)} seeds.")),
        "",
        ("Max accuracy and EER use the threshold chosen on the test pairs themselves (an oracle, as the post did); the "
         "honest accuracy applies the threshold chosen on the training writers' pairs. \"skilled\": genuine vs skilled "
         "forgery pairs; \"random\": genuine vs another writer's signature. The post's figures used ImageNet weights on "
         "CEDAR: where the weights column says otherwise they are not a like-for-like target."),
        "",
    ]
    return "\n".join(notes + lines) + "\n"


def write_figures(run, config, table: pd.DataFrame, results: list[dict]) -> None:
    accuracy = table["hard_max_accuracy"] if "hard_max_accuracy" in table else table["hard_max_accuracy_mean"]
    with writing(run.file("accuracy_vs_size.png")) as temporary:
        plots.plot_accuracy_vs_size(table["model"], table["parameters"], accuracy, temporary,
                                    title=f"Max accuracy on skilled forgeries against model size ({config.profile} "
                                          "profile)")
    first_seed = {}
    for result in results:  # Figures 14 and 15 overlay one run per model: its first seed
        first_seed.setdefault(result["row"]["model"], result["cosine_scores"])
    for pair_set, negatives in (("hard", "skilled forgery"), ("easy", "random forgery")):
        curves = {name: (scores[pair_set].distances, scores[pair_set].same) for name, scores in first_seed.items()
                  if pair_set in scores}
        with writing(run.file(f"density_{pair_set}_models.png")) as temporary:
            plots.plot_distance_density_overlay(curves, temporary, negative_label=negatives,
                                                title=f"Cosine distances of test pairs: genuine vs {negatives}")


if __name__ == "__main__":
    sys.exit(run_experiment("models", MODELS_PROFILES, prepare, run_models, description=__doc__))
