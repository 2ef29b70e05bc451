"""The loss comparison end to end on a tiny synthetic set (two losses, one fold of two), and the honest protocol's
repeats: one sub-run per fold × seed, kept on resume, summarized as mean ± std with bootstrap intervals."""

import json

import keras
import numpy as np
import pandas as pd
import pytest
import yaml

from sigverify.data.splits import writer_folds
from sigverify.errors import ConfigError
from sigverify.evaluation.model import evaluate_model
from sigverify.losses import loss_from_settings
from sigverify.models.backbones import InputScaling
from sigverify.protocol import repeat_configs, run_repeats
from sigverify.reporting.run_files import write_run_files
from sigverify.reporting.tables import summary_table, write_summary_tables
from sigverify.runs import RunFolder
from sigverify.settings import build_config
from sigverify.steps import prepare_experiment
from tests.conftest import load_recipe, run_experiment_script

LOSSES_PROFILES = load_recipe("losses").PROFILES
TRIPLET_PROFILES = load_recipe("triplet").PROFILES


@pytest.fixture(scope="module")
def losses_run(tiny_dataset, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("work")
    result = run_experiment_script("losses.py", "--profile", "smoke", "--data", tiny_dataset, "--runs",
                                   workdir / "runs", "--epochs", "1", "--losses", "contrastive,arcface", "--folds", "2",
                                   "--fold", "1", cwd=workdir)
    assert result.returncode == 0, result.stderr[-4000:]
    return (workdir / "runs" / "losses" / "latest").resolve(), result


def test_losses_run_writes_table_figure_and_sub_runs(losses_run):
    run_dir, result = losses_run
    for name in ("table.csv", "table.md", "runs.csv", "density_hard_losses.png", "config.yaml"):
        assert (run_dir / name).is_file() and (run_dir / name).stat().st_size > 0, name
    table = pd.read_csv(run_dir / "table.csv")
    assert table["loss"].tolist() == ["contrastive", "arcface"] and (table["runs"] == 1).all()
    for column in ("hard_max_accuracy", "hard_eer", "hard_auc", "hard_honest_accuracy", "easy_max_accuracy",
                   "train_seconds"):
        assert table[f"{column}_mean"].between(0, np.inf).all(), column
    for column in ("hard_max_accuracy", "hard_eer"):
        assert (table[f"{column}_ci_low"] <= table[f"{column}_ci_high"]).all()
    markdown = (run_dir / "table.md").read_text()
    assert "| contrastive | 1 |" in markdown and "ArcFaceLoss(" in markdown and "bootstrap" in markdown
    assert "max accuracy, skilled" in result.stdout

    expected_test_writers = writer_folds(range(1, 11), 2)[1][:4]  # the smoke profile keeps 4 writers per side
    for loss in ("contrastive", "arcface"):
        sub = run_dir / f"{loss}-fold1-seed0"
        assert json.loads((sub / "status.json").read_text())["status"] == "complete"
        config = yaml.safe_load((sub / "config.yaml").read_text())
        assert (config["loss"]["loss"], config["data"]["folds"], config["data"]["fold"]) == (loss, 2, 1)
        metrics = json.loads((sub / "metrics.json").read_text())
        assert metrics["test_writers"] == expected_test_writers
        assert set(metrics["reference_k"]) == {"1", "5", "12"} and metrics["reference_k"]["12"] is None
        assert 0 <= metrics["reference_k"]["5"]["min"]["hard"]["eer"] <= 1
        assert 0 <= metrics["identification"]["map_at_r"] <= 1
        low, high = metrics["confidence_intervals"]["hard"]["max_accuracy"]
        assert low <= high
        assert (sub / "model.keras").is_file() and (sub / "pair_scores.npz").is_file()
    arcface = json.loads((run_dir / "arcface-fold1-seed0" / "metrics.json").read_text())
    assert arcface["distance"] == "cosine" and "8 classes" in arcface["loss_description"]
    contrastive = json.loads((run_dir / "contrastive-fold1-seed0" / "metrics.json").read_text())
    assert "Siamese" in contrastive["loss_description"] and "margin=0.5" in contrastive["loss_description"]
    # Same seed, same initial weights: the losses are compared from the same starting point.
    assert contrastive["reference_points"]["untrained_model"] == arcface["reference_points"]["untrained_model"]


def test_unknown_losses_are_refused_before_any_work(tiny_dataset, tmp_path):
    result = run_experiment_script("losses.py", "--profile", "smoke", "--data", tiny_dataset, "--runs",
                                   tmp_path / "runs", "--losses", "arcface,nope", cwd=tmp_path, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "sphereface" in result.stderr.splitlines()[-1] and not (tmp_path / "runs").exists()


def test_configured_loss_follows_the_settings():
    config = build_config("triplet", "smoke", TRIPLET_PROFILES,
                          {"loss": {"loss": "sphereface", "scale": 12.0, "softmax_margin": 2}})
    loss = loss_from_settings(config.loss, class_labels=[7, 3, 7, 12], embedding_dim=config.model.embedding_dim)
    assert (loss.scale, loss.margin, loss.class_labels) == (12.0, 2, [3, 7, 12])
    assert loss.class_weights.shape == (config.model.embedding_dim, 3)
    config.loss.loss, config.loss.margin2 = "quadruplet", 0.25
    assert loss_from_settings(config.loss, [0, 1], config.model.embedding_dim).margin2 == 0.25
    for loss_name, settings, message in (("contrastive", {}, "pair loss"), ("nope", {}, "arcface"),
                                         ("sphereface", {"softmax_margin": 1.5}, "integer"),
                                         ("arcface", {"softmax_margin": 3.5}, "angle")):
        config.loss.loss, config.loss.softmax_margin = loss_name, settings.get("softmax_margin")
        with pytest.raises(ConfigError, match=message):
            loss_from_settings(config.loss)
    with pytest.raises(ConfigError, match="--fold 2"):
        build_config("losses", "smoke", LOSSES_PROFILES, {"data": {"folds": 2, "fold": 2}})


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="prepared with a tf.distribute strategy")
def test_repeats_run_every_fold_and_seed_once_and_summarize(tiny_dataset, tmp_path):
    """An untrained tiny model stands in for training: the protocol's sub-runs, resume and summary are what is tested."""
    config = build_config("triplet", "smoke", TRIPLET_PROFILES, {
        "data": {"data": str(tiny_dataset), "folds": 2, "cache_dir": str(tmp_path / "cache"), "max_writers": None},
        "train": {"seeds": 2, "seed": 5}, "report": {"gradcam_images": 0}})
    assert [name for name, _ in repeat_configs(config)] == ["fold0-seed5", "fold0-seed6", "fold1-seed5", "fold1-seed6"]
    prepared = prepare_experiment(config)
    calls = []

    def body(sub, sub_config, sub_prepared):
        calls.append((sub.path.name, sub_prepared.data.test_writers))
        size = sub_config.image.image_size
        model = keras.Sequential([keras.Input((size, size), dtype="uint8"), InputScaling("caffe"),
                                  keras.layers.AveragePooling2D(8), keras.layers.Flatten(), keras.layers.Dense(4)])
        evaluation = evaluate_model(model, sub_prepared.data, "cosine")
        return write_run_files(sub, sub_config, model, sub_prepared.data, evaluation, {"train_seconds": 0.0},
                               history={})

    run = RunFolder.create(tmp_path / "runs", "triplet")
    folders = run_repeats(run, config, prepared, body)
    assert [path.name for path in folders] == ["fold0-seed5", "fold0-seed6", "fold1-seed5", "fold1-seed6"]
    folds = writer_folds(range(1, 11), 2)
    assert [writers for _, writers in calls] == [folds[0], folds[0], folds[1], folds[1]]
    assert run_repeats(run, config, prepared, body) == folders and len(calls) == 4, "finished sub-runs are kept"

    summary, runs = summary_table({"triplet": folders}, "experiment", resamples=200)
    row = summary.iloc[0]
    assert row["runs"] == 4 and len(runs) == 4
    assert row["hard_max_accuracy_mean"] == pytest.approx(runs["hard_max_accuracy"].mean())
    assert row["hard_max_accuracy_std"] == pytest.approx(runs["hard_max_accuracy"].std(ddof=1))
    assert row["hard_max_accuracy_ci_low"] <= row["hard_max_accuracy_ci_high"]
    markdown = write_summary_tables(run.path, summary, runs, "experiment", ["# test"])
    assert f"{row['hard_max_accuracy_mean']:.3f} ± {row['hard_max_accuracy_std']:.3f} [" in markdown
