"""The cases a new user's trial of the suite turned up: each gives one `error:` line naming the file or option and what
was expected (exit 2), or the right result, and leaves no run folder, cache entry or file behind that was not asked
for."""

from __future__ import annotations

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

from sigverify.data.preprocess import PreprocessConfig, load_preprocessed_images
from sigverify.errors import ConfigError
from sigverify.models.embedding import validate_unfreeze_layer
from sigverify.settings import build_config
from sigverify.training.engine import NonFiniteLoss
from sigverify.verification.trained_run import read_finished_run
from tests.conftest import REPO, make_synthetic_dataset, run_experiment_script


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


def assert_refused(result: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit 2 with one `error:` line holding every fragment, and no traceback."""
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = error_lines(result)
    assert len(lines) == 1, result.stderr[-3000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def run_folders(runs: Path) -> list[Path]:
    return [path for path in runs.rglob("*") if path.is_dir() and (path / "status.json").exists()] if runs.exists() else []


@pytest.fixture(scope="module")
def six_writers(tmp_path_factory) -> Path:
    return make_synthetic_dataset(tmp_path_factory.mktemp("six"), n_writers=6, n_samples=6, seed=3)


def test_a_split_with_one_test_writer_is_refused_before_training(triplet_in_process, six_writers, tmp_path):
    result = triplet_in_process("--profile", "smoke", "--data", six_writers, "--runs", tmp_path / "runs")
    assert_refused(result, "1 test writer", "expected at least 2")
    assert not run_folders(tmp_path / "runs")


def test_as_many_folds_as_writers_is_refused_before_training(triplet_in_process, six_writers, tmp_path):
    result = triplet_in_process("--profile", "smoke", "--data", six_writers, "--runs", tmp_path / "runs",
                                   "--folds", "6")
    assert_refused(result, "fold 0 of --folds 6", "1 test writer")
    assert not run_folders(tmp_path / "runs")


def test_a_flag_the_experiment_does_not_use_is_refused(triplet_in_process, tiny_dataset, tmp_path):
    result = triplet_in_process("--profile", "smoke", "--data", tiny_dataset, "--runs", tmp_path / "runs",
                                   "--zoo", "base_cnn")
    assert_refused(result, "--zoo", "exp-models")
    assert not (tmp_path / "cache").exists() and not run_folders(tmp_path / "runs")


def test_unfreeze_layer_is_checked_against_the_backbone():
    validate_unfreeze_layer("resnet50", "conv5_block3_out")
    validate_unfreeze_layer("vgg16", "block5_conv1")
    with pytest.raises(ConfigError, match="--unfreeze-from conv9_block1_out: not a layer of resnet50"):
        validate_unfreeze_layer("resnet50", "conv9_block1_out")


def test_an_image_size_no_backbone_needs_is_refused_before_preprocessing(triplet_in_process, tiny_dataset, tmp_path):
    result = triplet_in_process("--profile", "smoke", "--data", tiny_dataset, "--runs", tmp_path / "runs",
                                   "--image-size", "100000")
    assert_refused(result, "--image-size 100000", "at most 1024")
    assert not list(tmp_path.rglob("*.npy")) and not run_folders(tmp_path / "runs")


def test_an_unknown_head_is_refused_before_preprocessing(triplet_in_process, tiny_dataset, tmp_path):
    result = triplet_in_process("--profile", "smoke", "--data", tiny_dataset, "--runs", tmp_path / "runs",
                                "--head", "mlp")
    assert_refused(result, "--head mlp", "expected one of conv, gap")
    assert not list(tmp_path.rglob("*.npy")) and not run_folders(tmp_path / "runs")


@pytest.mark.parametrize("damage", ["truncated", "wrong shape", "not an array"])
def test_a_damaged_cache_entry_is_rebuilt(tiny_dataset, tmp_path, damage, caplog):
    paths = sorted(str(p) for p in (tiny_dataset / "full_org").glob("*.png"))[:3]
    config = PreprocessConfig((32, 32))
    first, _, _ = load_preprocessed_images(paths, config, tmp_path, progress=False)
    entry = min((tmp_path / f"preprocessed-{config.cache_key()}").glob("*.npy"))
    if damage == "truncated":
        entry.write_bytes(entry.read_bytes()[:40])
    elif damage == "wrong shape":
        np.save(entry, np.zeros((8, 8), np.uint8))
    else:
        entry.write_text("not numpy")
    with caplog.at_level("WARNING"):
        again, kept, _ = load_preprocessed_images(paths, config, tmp_path, progress=False)
    np.testing.assert_array_equal(again, first)
    assert kept.all() and "rebuilding" in caplog.text and str(entry) in caplog.text
    rebuilt = np.load(entry)
    assert rebuilt.dtype == np.uint8 and rebuilt.shape == (32, 32)


@pytest.mark.parametrize("option", ["--runs", "SIGVERIFY_CACHE"])
def test_an_output_folder_that_cannot_be_made_is_refused_first(triplet_in_process, tiny_dataset, tmp_path, option):
    blocker = tmp_path / "a-file"
    blocker.write_text("in the way")
    args = ["--profile", "smoke", "--data", tiny_dataset, "--runs", blocker / "runs" if option == "--runs" else tmp_path]
    env = {"SIGVERIFY_CACHE": str(blocker / "cache")} if option == "SIGVERIFY_CACHE" else None
    result = triplet_in_process(*args, env_extra=env)
    assert_refused(result, option, "expected a writable folder")
    assert blocker.read_text() == "in the way"


@pytest.fixture()
def finished_run(tmp_path) -> Path:
    """A run folder as a finished run leaves it (settings, metrics, status), without a model: enough to read."""
    run = tmp_path / "runs" / "triplet" / "20260101-000000-abcdef"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(build_config("triplet", "smoke", {}).to_dict()))
    (run / "metrics.json").write_text(json.dumps({"hard": {"threshold": 0.3, "train_threshold": 0.25},
                                                  "distance": "cosine"}))
    (run / "status.json").write_text(json.dumps({"status": "complete"}))
    return run


@pytest.mark.parametrize("damage, named", [
    ("no config.yaml", "config.yaml"), ("config.yaml not YAML", "config.yaml"),
    ("config.yaml of bad settings", "config.yaml"), ("metrics.json cut short", "metrics.json"),
    ("status.json cut short", "status.json"),
])
def test_a_damaged_run_folder_is_named_in_one_line(finished_run, damage, named):
    read_finished_run(finished_run)
    if damage == "no config.yaml":
        (finished_run / "config.yaml").unlink()
    elif damage == "config.yaml not YAML":
        (finished_run / "config.yaml").write_text("train: [unclosed")
    elif damage == "config.yaml of bad settings":
        (finished_run / "config.yaml").write_text(yaml.safe_dump({"train": {"epochs": "two"}}))
    elif damage == "metrics.json cut short":
        (finished_run / "metrics.json").write_text('{"hard": {"thresh')
    else:
        (finished_run / "status.json").write_text('{"stat')
    with pytest.raises(ConfigError, match=named):
        read_finished_run(finished_run)


def test_verify_on_a_damaged_run_prints_one_line(finished_run, tiny_dataset):
    (finished_run / "metrics.json").write_text("{")
    image = tiny_dataset / "full_org" / "original_1_1.png"
    result = subprocess.run([sys.executable, "-m", "sigverify.cli", "verify", "--run", str(finished_run), str(image),
                             str(image)], capture_output=True, text=True, timeout=300)
    assert_refused(result, "metrics.json")
    assert result.stderr.strip().count("\n") == 0, "only the error line: no TensorFlow start-up chatter"


@pytest.mark.parametrize("settings, fragment", [
    ({"train": {"epochs": "two"}}, "--epochs 'two': expected an integer"),
    ({"image": {"image_size": 32.5}}, "--image-size 32.5: expected an integer"),
    ({"data": {"data": 123}}, "--data 123: expected a string"),
    ({"train": {"epochs": True}}, "--epochs True: expected an integer"),
    ({"model": {"embedding_dim": 0}}, "--embedding-dim 0: expected at least 1"),
    ({"optimizer": {"backbone_rate_scale": 0}}, "--backbone-rate-scale 0.0: expected a fraction of --learning-rate"),
    ({"train": 5}, "section 'train' is 5; expected a mapping"),
])
def test_settings_of_the_wrong_type_are_refused_where_they_are_read(triplet_in_process, tmp_path, settings, fragment):
    config_file = tmp_path / "settings.yaml"
    config_file.write_text(yaml.safe_dump(settings))
    result = triplet_in_process("--profile", "smoke", "--config", config_file, "--runs",
                                   tmp_path / "runs")
    assert_refused(result, fragment)
    assert not run_folders(tmp_path / "runs")


def test_a_keras_backend_that_is_not_installed_is_one_line(tmp_path):
    import importlib.util

    if importlib.util.find_spec("torch") is not None:
        pytest.skip("torch is installed here")
    result = run_experiment_script("triplet.py", "--profile", "smoke", cwd=tmp_path, env_extra={"KERAS_BACKEND": "torch"})
    assert_refused(result, "KERAS_BACKEND=torch", "torch is not installed")


def test_a_start_pretrained_on_a_test_writer_is_refused(triplet_in_process, tiny_dataset, tmp_path):
    """A SimCLR backbone pretrained on the training writers of fold 0, then used on every fold: refused, naming the
    writers it saw."""
    pretraining = tmp_path / "pretrain-run"
    pretraining.mkdir()
    (pretraining / "backbone.weights.h5").write_bytes(b"")
    (pretraining / "backbone.json").write_text(json.dumps({
        "method": "simclr", "method_name": "SimCLR", "backbone": "resnet50", "cut_layer": "conv3_block4_add",
        "dataset": str(Path(tiny_dataset).resolve()), "dataset_writers": [1, 2, 3, 4, 5]}))
    result = triplet_in_process("--profile", "smoke", "--data", tiny_dataset, "--runs", tmp_path / "runs",
                                   "--weights", pretraining, "--folds", "2")
    assert_refused(result, f"--weights {pretraining}", "which these settings test on")
    assert not run_folders(tmp_path / "runs")


def test_resume_with_other_settings_is_refused(triplet_in_process, tiny_dataset, tmp_path):
    run = tmp_path / "runs" / "triplet" / "20260101-000000-abcdef"
    run.mkdir(parents=True)
    config = build_config("triplet", "smoke", {}, {"data": {"data": str(tiny_dataset)}})
    (run / "config.yaml").write_text(yaml.safe_dump(config.to_dict()))
    (run / "status.json").write_text(json.dumps({"status": "interrupted"}))
    result = triplet_in_process("--resume", run, "--data", tmp_path / "elsewhere", "--epochs", "2")
    line = assert_refused(result, f"--resume {run}", "--data", "--epochs 2")
    assert "(the run: 25)" in line and json.loads((run / "status.json").read_text())["status"] == "interrupted"


def test_the_non_finite_loss_message_names_only_a_checkpoint_that_exists(tmp_path):
    first = str(NonFiniteLoss.at(0, 2, float("nan"), 0, tmp_path / "checkpoints" / "last"))
    assert "epoch 1, batch 3" in first and "No checkpoint was written" in first and "checkpoints" not in first
    later = str(NonFiniteLoss.at(3, 0, float("inf"), 3, tmp_path / "checkpoints" / "last"))
    assert "after epoch 3" in later and str(tmp_path / "checkpoints" / "last") in later


def test_pk_that_no_class_can_fill_says_what_k_would_do(triplet_in_process, tiny_dataset, tmp_path):
    result = triplet_in_process("--profile", "smoke", "--data", tiny_dataset, "--runs", tmp_path / "runs",
                                   "--images-per-class", "8", "--classes-per-batch", "2", "--batch-size", "16")
    assert_refused(result, "--images-per-class 8", "expected --images-per-class at most 6")
    assert not run_folders(tmp_path / "runs")


def test_a_refusal_found_in_the_run_leaves_no_run_folder(triplet_in_process, tiny_dataset, tmp_path):
    """ImageNet weights are resolved when the model is built, inside the run: the refusal removes the new folder."""
    result = triplet_in_process("--profile", "smoke", "--data", tiny_dataset, "--runs", tmp_path / "runs",
                                   "--weights", "imagenet")
    assert_refused(result, "weights: imagenet")
    assert not run_folders(tmp_path / "runs")


def test_a_signal_swallowed_inside_library_code_still_ends_the_run_interrupted(tiny_dataset, tmp_path, monkeypatch):
    """A handler's exception raised inside code that catches everything (C code that checks for signals and clears the
    error) is lost, but the signal is not: the run ends interrupted with the signal's exit code, not complete."""
    from sigverify.experiment import run_experiment
    from sigverify.interrupts import Interrupted
    from tests.conftest import load_recipe

    recipe = load_recipe("triplet")
    monkeypatch.setenv("SIGVERIFY_CACHE", str(tmp_path / "cache"))
    swallowed = []

    def swallowing_body(run, config, prepared):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler runs here and raises
        except Interrupted as error:
            swallowed.append(error)
        return {}

    previous = signal.getsignal(signal.SIGTERM)
    code = run_experiment("triplet", recipe.PROFILES, recipe.prepare, swallowing_body,
                          argv=["--profile", "smoke", "--data", str(tiny_dataset), "--runs", str(tmp_path / "runs")])
    assert len(swallowed) == 1 and code == 143 and signal.getsignal(signal.SIGTERM) is previous
    status = json.loads(next((tmp_path / "runs" / "triplet").glob("2*/status.json")).read_text())
    assert status["status"] == "interrupted" and "SIGTERM" in status["message"]


def test_sigterm_marks_the_run_interrupted_and_exits_143(tiny_dataset, tmp_path):
    env = dict(os.environ, SIGVERIFY_CACHE=str(tmp_path / "cache"), TF_CPP_MIN_LOG_LEVEL="3")
    process = subprocess.Popen([sys.executable, str(REPO / "experiments" / "triplet.py"), "--profile", "smoke", "--data",
                                str(tiny_dataset), "--runs", str(tmp_path / "runs"), "--epochs", "50"],
                               cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and not list((tmp_path / "runs").rglob("history.csv")):
        time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr[-3000:]
    status = json.loads(next((tmp_path / "runs" / "triplet").glob("2*/status.json")).read_text())
    assert status["status"] == "interrupted" and "SIGTERM" in status["message"]
