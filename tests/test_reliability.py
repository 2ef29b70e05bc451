"""Reliability: identical results for the same seed with --deterministic, Ctrl-C leaves a resumable run marked
interrupted (in training, at a step boundary), and model files that need unsafe deserialization are refused."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import pytest
import yaml

from sigverify.cli import main
from sigverify.interrupts import Interrupted, handling_interrupts, stop_if_interrupted, stops_between_steps

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "experiments" / "triplet.py"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from sigverify.data.synthetic import generate_synthetic_dataset

    return generate_synthetic_dataset(tmp_path_factory.mktemp("d") / "s", n_writers=10, n_samples=6, seed=3,
                                      progress=False)


def smoke_args(dataset, runs, *extra):
    return [sys.executable, str(SCRIPT), "--profile", "smoke", "--data", str(dataset), "--runs", str(runs), "--no-umap",
            "--gradcam-images", "0", *extra]


def numbers(metrics: dict) -> dict:
    return {k: metrics[k] for k in ("hard", "easy", "n_pairs", "reference_points")}


def test_same_seed_and_deterministic_give_identical_metrics(dataset, tmp_path):
    env = dict(os.environ, SIGVERIFY_CACHE=str(tmp_path / "cache"))
    results = []
    for name in ("first", "second"):
        out = subprocess.run(smoke_args(dataset, tmp_path / name, "--seed", "7", "--deterministic"), cwd=tmp_path,
                             env=env, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        results.append(json.loads((tmp_path / name / "triplet" / "latest" / "metrics.json").read_text()))
    assert numbers(results[0]) == numbers(results[1])


def test_ctrl_c_marks_the_run_interrupted_and_says_how_to_resume(dataset, tmp_path):
    env = dict(os.environ, SIGVERIFY_CACHE=str(tmp_path / "cache"))
    process = subprocess.Popen(smoke_args(dataset, tmp_path / "runs", "--epochs", "50"), cwd=tmp_path, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    def epochs_done():
        histories = list((tmp_path / "runs").glob("triplet/*/history.csv"))
        return len(histories[0].read_text().splitlines()) - 1 if histories else 0

    while time.time() < deadline and epochs_done() < 1:
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-3000:]
    run_dir = next((tmp_path / "runs" / "triplet").glob("2*"))
    assert json.loads((run_dir / "status.json").read_text())["status"] == "interrupted"
    assert f"--resume {run_dir}" in stderr and "Traceback" not in stderr
    assert (run_dir / "checkpoints" / "last").is_dir()
    assert not (tmp_path / "runs" / "triplet" / "latest").exists()


def test_in_training_a_first_signal_waits_for_the_step_boundary_and_a_second_stops_at_once():
    previous = signal.getsignal(signal.SIGINT)
    reached = []
    with handling_interrupts():
        with pytest.raises(Interrupted, match="SIGINT"), stops_between_steps():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.2)  # the handler runs here, and only records the signal
            reached.append("the rest of the step")
            stop_if_interrupted()
            reached.append("the next step")
        with pytest.raises(Interrupted, match="SIGTERM"), stops_between_steps():
            os.kill(os.getpid(), signal.SIGTERM)  # the second signal
            time.sleep(0.2)
            reached.append("the rest of the second step")
    assert reached == ["the rest of the step"]
    assert signal.getsignal(signal.SIGINT) is previous


def test_a_training_loop_that_ends_with_a_signal_pending_raises_it():
    with handling_interrupts(), pytest.raises(Interrupted, match="SIGTERM"), stops_between_steps():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.2)  # the loop's last step: no boundary check follows


def test_verify_refuses_a_model_that_needs_unsafe_deserialization(tmp_path, capsys):
    inputs = keras.Input((4,))
    keras.Model(inputs, keras.layers.Lambda(lambda x: x * 2.0)(inputs)).save(tmp_path / "model.keras")
    (tmp_path / "status.json").write_text(json.dumps({"status": "complete"}))
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"experiment": "triplet", "image": {"image_size": 32}}))
    (tmp_path / "metrics.json").write_text(json.dumps({"hard": {"threshold": 0.5, "train_threshold": 0.5}}))
    image = REPO / "tests" / "data" / "signature.png"
    assert main(["verify", "--run", str(tmp_path), str(image), str(image)]) == 2
    error = capsys.readouterr().err
    assert "unsafe deserialization" in error and "model.keras" in error
