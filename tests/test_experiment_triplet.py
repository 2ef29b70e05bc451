"""The triplet experiment end to end, as a user runs it: a smoke run writes the whole run folder, `sigverify verify`
uses it, bad settings are refused in one line before any work, and a killed run resumes."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "experiments" / "triplet.py"
METRIC_KEYS = ["max_accuracy", "eer", "eer_interpolated", "auc", "threshold", "accuracy_at_train_threshold"]
RUN_FILES = ["config.yaml", "metrics.json", "metrics.csv", "report.md", "model.keras", "embeddings.npz", "history.csv",
             "density_hard.png", "density_easy.png", "roc.png", "history.png", "gradcam.png", "status.json"]


def test_smoke_run_writes_the_whole_run_folder(triplet_smoke_run):
    _, run_dir, result = triplet_smoke_run
    for name in RUN_FILES:
        assert (run_dir / name).is_file() and (run_dir / name).stat().st_size > 0, name
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for pair_set in ("hard", "easy"):
        for key in METRIC_KEYS:
            assert metrics[pair_set][key] is not None and np.isfinite(metrics[pair_set][key]), (pair_set, key)
        assert 0.0 <= metrics[pair_set]["max_accuracy"] <= 1.0
    for key in ("test_writers", "weights", "dataset", "profile", "train_seconds", "params"):
        assert key in metrics
    assert metrics["n_pairs"]["hard"] > 0 and metrics["profile"] == "smoke"
    # no network here: auto falls back to the shipped signature weights, and the report says so with their sha256
    assert metrics["weights"].startswith("signature-pretrained weights resnet50-signatures.h5 (sha256 "), metrics["weights"]
    assert "requested via auto (ImageNet could not be loaded" in metrics["weights"]
    assert json.loads((run_dir / "status.json").read_text())["status"] == "complete"
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["experiment"] == "triplet" and config["train"]["epochs"] == 2
    report = (run_dir / "report.md").read_text()
    assert "signature-pretrained weights" in report and "![" in report
    embeddings = np.load(run_dir / "embeddings.npz")
    assert embeddings["embeddings"].shape[0] == metrics["n_test_images"] == len(embeddings["writer"])
    np.testing.assert_allclose(np.linalg.norm(embeddings["embeddings"], axis=1), 1.0, rtol=1e-4)
    assert "hard pairs: max accuracy" in result.stdout


def test_verify_uses_the_run(triplet_smoke_run, tiny_dataset):
    _, run_dir, _ = triplet_smoke_run
    a = tiny_dataset / "full_org" / "original_1_1.png"
    b = tiny_dataset / "full_forg" / "forgeries_1_1.png"
    out = subprocess.run([sys.executable, "-m", "sigverify.cli", "verify", "--run", str(run_dir), str(a), str(b)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "distance" in out.stdout and "threshold" in out.stdout
    assert "same writer" in out.stdout or "different writer" in out.stdout


@pytest.mark.parametrize("args, message", [
    (["--cut-layer", "conv9_block1_add"], "Valid cut layers"),
    (["--margin", "0"], "margin"),
    (["--images-per-class", "1", "--batch-size", "4"], "K"),
    (["--classes-per-batch", "3"], "P × K"),
    (["--image-size", "16"], "image size"),
    (["--strategy", "warp"], "strategy"),
    (["--backbone", "alexnet"], "backbone"),
])
def test_bad_settings_are_refused_in_one_line_before_any_work(args, message, triplet_in_process, tiny_dataset, tmp_path):
    result = triplet_in_process("--profile", "smoke", "--data", tiny_dataset, "--runs", tmp_path / "runs", *args)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and message in error_lines[0], result.stderr[-2000:]
    assert not (tmp_path / "runs").exists(), "nothing is written for a refused setting"


def test_unknown_profile_and_too_few_writers_are_refused(triplet_in_process, tmp_path, tiny_dataset):
    result = triplet_in_process("--profile", "huge", "--data", tiny_dataset, "--runs", tmp_path / "runs")
    assert result.returncode == 2 and "smoke, quick, full, blog" in result.stderr and "Traceback" not in result.stderr
    lonely = tmp_path / "lonely"
    for folder in ("full_org", "full_forg"):
        (lonely / folder).mkdir(parents=True)
    for n in (1, 2):
        for folder, stem in (("full_org", "original"), ("full_forg", "forgeries")):
            (lonely / folder / f"{stem}_3_{n}.png").write_bytes((tiny_dataset / folder / f"{stem}_1_{n}.png").read_bytes())
    result = triplet_in_process("--profile", "smoke", "--data", lonely, "--runs", tmp_path / "runs")
    assert result.returncode == 2 and "at least two writers" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists()


def test_full_profile_is_the_quick_recipe_longer_and_bigger_and_the_triplet_experiments_alone():
    """full: the quick profile's model, start and rates at 160×160 for 10 epochs, a setting the model accepts; the
    recipes built on the triplet profiles (zoo, losses, pretraining starts) refuse it rather than run it half-defined."""
    from sigverify.errors import ConfigError
    from sigverify.models.backbones import validate_model_settings
    from sigverify.models.embedding import validate_unfreeze_layer
    from sigverify.settings import build_config
    from tests.conftest import load_recipe

    profiles = load_recipe("triplet").PROFILES
    quick, full = build_config("triplet", "quick", profiles), build_config("triplet", "full", profiles)
    assert (full.image.image_size, full.train.epochs, quick.image.image_size, quick.train.epochs) == (160, 10, 96, 3)
    assert (full.model, full.loss, full.batches, full.optimizer) == (quick.model, quick.loss, quick.batches, quick.optimizer)
    assert full.train.augment and full.model.head == "gap"
    validate_model_settings(full.model.backbone, full.model.cut_layer, full.image.image_size)
    validate_unfreeze_layer(full.model.backbone, full.model.unfreeze_from, full.model.cut_layer)
    for recipe, experiment in (("models", "models"), ("losses", "losses"), ("pretrain_compare", "pretrain-compare")):
        with pytest.raises(ConfigError, match="unknown profile 'full': expected one of smoke, quick, blog"):
            build_config(experiment, "full", load_recipe(recipe).PROFILES)


def test_killed_run_resumes_from_the_last_epoch(tiny_dataset, tmp_path):
    """kill -9 during training, then --resume: the finished history has every epoch once (eight epochs: a smoke epoch
    takes seconds, the history is polled every fifth of a second)."""
    env = dict(os.environ, SIGVERIFY_CACHE=str(tmp_path / "cache"))
    args = [sys.executable, str(SCRIPT), "--profile", "smoke", "--data", str(tiny_dataset), "--runs", str(tmp_path / "runs"),
            "--epochs", "8", "--no-umap", "--gradcam-images", "0"]
    process = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    run_dir = None
    while time.time() < deadline:
        history = list((tmp_path / "runs" / "triplet").glob("*/history.csv"))
        if history and len(history[0].read_text().splitlines()) >= 3:  # header + at least two epochs
            run_dir = history[0].parent
            break
        time.sleep(0.2)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert run_dir is not None, "training did not reach its second epoch in time"
    completed = len((run_dir / "history.csv").read_text().splitlines()) - 1
    assert completed < 8
    assert not (tmp_path / "runs" / "triplet" / "latest").exists(), "latest moves only when a run has finished"

    # the same flags again: the run's own config.yaml (8 epochs) continues (other settings would be refused)
    result = subprocess.run(args + ["--resume", str(run_dir)], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    history_rows = (run_dir / "history.csv").read_text().splitlines()[1:]
    epochs = [int(row.split(",")[0]) for row in history_rows]
    assert epochs == list(range(8)), "every epoch exactly once"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs_resumed_from"] >= 2
    assert (tmp_path / "runs" / "triplet" / "latest").resolve() == run_dir.resolve()


def test_resume_refuses_another_experiments_folder(triplet_in_process, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.yaml").write_text("experiment: contrastive\n")
    result = triplet_in_process("--resume", other)
    assert result.returncode == 2 and "contrastive" in result.stderr and "Traceback" not in result.stderr
