"""The model zoo experiment (experiments/models.py) end to end: a smoke run of three small models with two seeds writes
one complete sub-run per model and seed, the comparison table (mean ± std over the seeds) and the three figures; a
resumed run keeps the finished sub-runs; bad model choices are refused before any work. Also the sub-run helpers of
RunFolder that it relies on."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from sigverify.models.zoo import MODEL_ZOO
from sigverify.runs import RunFolder, read_status
from sigverify.settings import comma_list
from tests.conftest import load_recipe, run_experiment_script

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "experiments" / "models.py"
MODELS = ["smaller_resnet50", "base_cnn", "pretrained_resnet50"]
SEEDS = [0, 1]
FIGURES = ["accuracy_vs_size.png", "density_hard_models.png", "density_easy_models.png"]
SUB_RUN_FILES = ["config.yaml", "status.json", "metrics.json", "metrics.csv", "report.md", "model.keras",
                 "embeddings.npz", "pair_scores.npz", "density_hard.png", "density_easy.png", "roc.png"]
TABLE_METRICS = {"hard_max_accuracy": ("hard", "max_accuracy"), "hard_eer": ("hard", "eer"),
                 "easy_max_accuracy": ("easy", "max_accuracy"), "hard_auc": ("hard", "auc"),
                 "hard_honest_accuracy": ("hard", "accuracy_at_train_threshold")}


def load_models_script():
    return load_recipe("models")


@pytest.fixture(scope="module")
def zoo_run(tiny_dataset, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("work")
    result = run_experiment_script("models.py", "--profile", "smoke", "--data", tiny_dataset, "--runs",
                                   workdir / "runs", "--zoo", ",".join(MODELS), "--seeds", len(SEEDS), cwd=workdir)
    assert result.returncode == 0, result.stderr[-4000:]
    return workdir, (workdir / "runs" / "models" / "latest").resolve(), result


def sub_run_metrics(run_dir: Path, model: str) -> list[dict]:
    return [json.loads((run_dir / f"{model}-seed{seed}" / "metrics.json").read_text()) for seed in SEEDS]


def test_smoke_run_writes_every_sub_run_the_table_and_the_figures(zoo_run):
    _, run_dir, result = zoo_run
    assert read_status(run_dir)["status"] == "complete"
    for name in ["table.csv", "runs.csv", "table.md", *FIGURES]:
        assert (run_dir / name).is_file() and (run_dir / name).stat().st_size > 0, name
    assert not (run_dir / "latest").exists(), "a finished sub-run must not move `latest`"
    for model in MODELS:
        for seed in SEEDS:
            sub = run_dir / f"{model}-seed{seed}"
            for name in SUB_RUN_FILES:
                assert (sub / name).is_file() and (sub / name).stat().st_size > 0, (sub, name)
            assert read_status(sub)["status"] == "complete"
            config = yaml.safe_load((sub / "config.yaml").read_text())
            assert config["experiment"] == "models" and config["model"]["zoo"] == model
            assert config["train"]["seed"] == seed
            metrics = json.loads((sub / "metrics.json").read_text())
            # no network here: the ResNet50 models start from the shipped signature weights, base_cnn from scratch
            start = "random initialisation" if model == "base_cnn" else "signature-pretrained weights"
            assert start in metrics["weights"], metrics["weights"]
            trained = model != "pretrained_resnet50"
            assert (sub / "history.csv").is_file() == trained
            assert (metrics["train_seconds"] > 0) == trained
    pretrained = yaml.safe_load((run_dir / "pretrained_resnet50-seed0" / "config.yaml").read_text())
    assert pretrained["train"]["epochs"] == 0
    assert json.loads((run_dir / "pretrained_resnet50-seed0" / "metrics.json").read_text())["distance"] == "cosine"
    assert "| base_cnn | 2 |" in result.stdout, "the table is printed at the end"


def test_table_reports_mean_and_std_over_seeds_from_the_sub_runs(zoo_run):
    _, run_dir, _ = zoo_run
    table = pd.read_csv(run_dir / "table.csv")
    assert table["model"].tolist() == MODELS
    for _, row in table.iterrows():
        runs = sub_run_metrics(run_dir, row["model"])
        for column, (pair_set, key) in TABLE_METRICS.items():
            values = [metrics[pair_set][key] for metrics in runs]
            assert row[f"{column}_mean"] == pytest.approx(np.mean(values), abs=1e-5), (row["model"], column)
            assert row[f"{column}_std"] == pytest.approx(np.std(values, ddof=1), abs=1e-5), (row["model"], column)
        assert row["runs"] == len(SEEDS)
        assert row["parameters"] == runs[0]["params"]
        model_file = run_dir / f"{row['model']}-seed0" / "model.keras"
        assert row["file_mb"] == pytest.approx(model_file.stat().st_size / 1e6, rel=1e-4)
        assert row["post_max_accuracy"] == MODEL_ZOO[row["model"]].reported_max_accuracy
        assert row["image_size"] == 32
    assert table.set_index("model").loc["smaller_resnet50", "cut_layer"] == "conv3_block4_add"
    markdown = (run_dir / "table.md").read_text()
    models_table = markdown.split("Each model against")[0]  # not the paired or the deployment table
    rows = [line for line in models_table.splitlines() if line.startswith(tuple(f"| {model} |" for model in MODELS))]
    assert len(rows) == len(MODELS) and all("±" in line for line in rows)
    assert "0.761 / 0.240" in markdown, "the post's figure beside ours"


def test_table_pairs_each_model_with_the_first_on_the_same_test_writers_and_seed(zoo_run):
    _, run_dir, _ = zoo_run
    markdown = (run_dir / "table.md").read_text()
    assert f"Each model against {MODELS[0]} on the runs they share" in markdown
    first = [metrics["hard"]["max_accuracy"] for metrics in sub_run_metrics(run_dir, MODELS[0])]
    for model in MODELS[1:]:
        differences = np.subtract([metrics["hard"]["max_accuracy"] for metrics in sub_run_metrics(run_dir, model)], first)
        counts = f"{(differences > 0).sum()} / {(differences == 0).sum()} / {(differences < 0).sum()}"
        assert (f"| {model} | {len(SEEDS)} | {differences.mean():+.3f} ± {np.std(differences, ddof=1):.3f} | {counts} |"
                in markdown), model


def test_paired_differences_match_runs_by_test_writers_and_seed_not_by_order():
    from sigverify.reporting.tables import paired_differences

    runs = pd.DataFrame([
        # model, sub-run, test writers, skilled max accuracy
        ("a", "a-fold0-seed0", "1 2", 0.70), ("a", "a-fold1-seed0", "3 4", 0.60), ("a", "a-fold2-seed0", "5 6", 0.65),
        ("b", "b-fold1-seed0", "3 4", 0.66), ("b", "b-fold0-seed0", "1 2", 0.70), ("b", "b-fold2-seed0", "5 6", 0.62),
        ("c", "c-fold0-seed1", "1 2", 0.90), ("c", "c-fold1-seed0", "3 4", 0.90),  # one run shared with a: no row
        ("d", "d-fold0-seed0", "1 2", None), ("d", "d-fold1-seed0", "3 4", 0.50),  # a run without a figure is left out
    ], columns=["model", "run", "test_writers", "hard_max_accuracy"])
    paired = paired_differences(runs, "model").set_index("model")
    assert list(paired.index) == ["b"] and paired.loc["b", "reference"] == "a"
    assert paired.loc["b", "paired_runs"] == 3
    assert paired.loc["b", "difference_mean"] == pytest.approx(np.mean([0.0, 0.06, -0.03]))
    assert paired.loc["b", "difference_std"] == pytest.approx(np.std([0.0, 0.06, -0.03], ddof=1))
    assert (paired.loc["b", "ahead"], paired.loc["b", "level"], paired.loc["b", "behind"]) == (1, 1, 1)


def test_one_run_per_model_gives_cells_without_spread():
    from sigverify.reporting.tables import RUN_COLUMNS, VERIFICATION_COLUMNS, summary_markdown

    models = load_models_script()
    row = {"model": "base_cnn", "description": "Base CNN (from scratch)", "cut_layer": "", "image_size": 32,
           "parameters": 1000, "file_mb": 1.0, "weights": "from scratch", "runs": 1, "post_max_accuracy": 0.68,
           "post_eer": 0.327, **{f"{column}_mean": 0.5 for column in RUN_COLUMNS},
           **{f"{column}_std": float("nan") for column in RUN_COLUMNS}}
    markdown = summary_markdown(pd.DataFrame([row]), "model", VERIFICATION_COLUMNS, models.FACT_CELLS)
    model_row = next(line for line in markdown.splitlines() if line.startswith("| base_cnn |"))
    assert "±" not in model_row and "| 0.500 |" in model_row and "0.680 / 0.327" in model_row


def test_resumed_run_keeps_finished_sub_runs_and_redoes_the_rest(zoo_run, tmp_path):
    workdir, run_dir, _ = zoo_run
    resumed = tmp_path / "runs" / "models" / run_dir.name
    shutil.copytree(run_dir, resumed, copy_function=os.link)  # hard links: the finished files stay untouched
    RunFolder(resumed, "models").set_status("interrupted")
    shutil.rmtree(resumed / "base_cnn-seed1")  # a sub-run that had not started
    RunFolder(resumed / "base_cnn-seed0", "models").set_status("interrupted")  # stopped after training
    kept = {sub.name: (sub / "model.keras").stat().st_ino for sub in resumed.iterdir()
            if sub.is_dir() and sub.name != "base_cnn-seed0"}

    result = run_experiment_script("models.py", "--resume", resumed, cwd=workdir)
    assert result.returncode == 0, result.stderr[-4000:]
    assert read_status(resumed)["status"] == "complete"
    assert {name: (resumed / name / "model.keras").stat().st_ino for name in kept} == kept, "finished sub-runs kept"
    assert result.stderr.count("finished earlier") == len(kept)
    continued = json.loads((resumed / "base_cnn-seed0" / "metrics.json").read_text())
    assert continued["epochs_resumed_from"] == 2, "the interrupted sub-run continues from its checkpoint"
    assert len(pd.read_csv(resumed / "base_cnn-seed0" / "history.csv")) == 2
    redone = json.loads((resumed / "base_cnn-seed1" / "metrics.json").read_text())
    original = json.loads((run_dir / "base_cnn-seed1" / "metrics.json").read_text())
    assert read_status(resumed / "base_cnn-seed1")["status"] == "complete"
    assert redone["params"] == original["params"] and redone["test_writers"] == original["test_writers"]
    # each sub-run seeds itself, so redoing one alone trains it as in the first run
    first_epoch = [pd.read_csv(run / "base_cnn-seed1" / "history.csv")["loss"].iloc[0] for run in (run_dir, resumed)]
    assert first_epoch[1] == pytest.approx(first_epoch[0], rel=1e-3)
    assert pd.read_csv(resumed / "table.csv")["runs"].tolist() == [2, 2, 2]


@pytest.mark.parametrize("args, message", [
    (["--zoo", "contrastive_resnet50"], "exp-contrastive"),
    (["--zoo", "small_resnet50,alexnet"], "unknown model 'alexnet'"),
    (["--zoo", ","], "--zoo"),
    (["--seeds", "0"], "--seeds"),
])
def test_bad_model_choices_are_refused_before_any_work(args, message, tiny_dataset, tmp_path, capsys):
    models = load_models_script()
    argv = ["--profile", "smoke", "--data", str(tiny_dataset), "--runs", str(tmp_path / "runs"), *args]
    assert models.run_experiment("models", models.PROFILES, models.prepare, models.run_models, argv) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], errors
    assert not (tmp_path / "runs").exists()


def test_default_models_and_their_image_sizes():
    models = load_models_script()
    names = comma_list(None, "--zoo", list(MODEL_ZOO), default=models.TRAINED)
    assert "contrastive_resnet50" not in names
    assert {"pretrained_vgg16", "pretrained_resnet50", "base_cnn", "base_unet", "vgg16", "resnet50"} <= set(names)
    # the head needs 4×4 features at the cut: VGG16's block5_pool (/32) 128 px, ResNet50's conv5 (/32, its
    # convolutions pad) 97 px, Small ResNet50's conv4 (/16) 49 px
    assert [models.image_size_for(name, 64) for name in ("vgg16", "resnet50", "small_resnet50", "base_cnn")] == [
        128, 97, 64, 64]
    assert models.image_size_for("small_resnet50", 32) == 49
    assert models.image_size_for("small_vgg16", 32) == 32


def test_child_run_has_its_own_status_and_leaves_latest_alone(tmp_path):
    parent = RunFolder.create(tmp_path / "runs", "models")
    child = parent.child("base_cnn-seed0")
    assert child.path == parent.path / "base_cnn-seed0" and child.path.is_dir() and child.parent is parent
    assert not child.is_complete()
    with child.running():
        assert read_status(child.path)["status"] == "running"
    assert child.is_complete() and not parent.is_complete()
    assert not (tmp_path / "runs" / "models" / "latest").exists()
    assert parent.child("base_cnn-seed0").is_complete(), "asking again returns the same finished sub-run"

    with pytest.raises(KeyboardInterrupt), parent.child("stopped").running():
        raise KeyboardInterrupt
    assert read_status(parent.path / "stopped")["status"] == "interrupted"
    with pytest.raises(ValueError), parent.child("broken").running():
        raise ValueError("bad")
    status = read_status(parent.path / "broken")
    assert status["status"] == "failed" and "bad" in status["message"]
    parent.finish()
    assert (tmp_path / "runs" / "models" / "latest").resolve() == parent.path.resolve()
