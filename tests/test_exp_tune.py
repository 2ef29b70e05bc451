"""The hyperparameter search end to end on a tiny synthetic set (smoke profile, two trials of two validation folds):
killed with SIGKILL after a trial finished, resumed without losing it, its table, figures and best.yaml; and the
validation folds it scores trials on: training writers only, the test writers never loaded."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest

from sigverify.data.prepare import held_out_writers, prepare_data
from sigverify.data.prepare import test_writers_of_every_run as writers_tested_by  # not a test: pytest would collect it
from sigverify.data.splits import CEDAR_TEST_WRITERS, split_writers, writer_folds
from sigverify.errors import ConfigError
from sigverify.experiment import parse_config, run_experiment
from sigverify.settings import build_config
from sigverify.tuning import STUDY_FILE, STUDY_NAME, first_number, open_study, run_trials, write_study_figures
from tests.conftest import REPO, load_recipe, run_experiment_script

TUNE_PROFILES = load_recipe("tune").PROFILES
LOSSES_PROFILES = load_recipe("losses").PROFILES
TRIPLET = load_recipe("triplet")
TRIPLET_PROFILES = TRIPLET.PROFILES
TRIALS = 2
KILL_DEADLINE_S = 400


def study_of(run_dir: Path) -> optuna.Study:
    return optuna.load_study(study_name=STUDY_NAME, storage=f"sqlite:///{run_dir / STUDY_FILE}")


def wait_for_a_complete_trial(process: subprocess.Popen, runs: Path, log: Path) -> Path:
    """The run folder once its study holds a complete trial, polled while the experiment runs through a read-only
    connection (Optuna's own would write its version record into the database the experiment is writing)."""
    deadline = time.monotonic() + KILL_DEADLINE_S
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()[-4000:]
        for study_file in (runs / "tune").glob(f"*/{STUDY_FILE}"):
            try:
                with sqlite3.connect(f"file:{study_file}?mode=ro", uri=True) as database:
                    if database.execute("SELECT count(*) FROM trials WHERE state = 'COMPLETE'").fetchone()[0]:
                        return study_file.parent
            except sqlite3.OperationalError:  # the study's tables are being created
                pass
        time.sleep(0.5)
    raise AssertionError(f"no trial finished in {KILL_DEADLINE_S} s")


@pytest.fixture(scope="module")
def killed_and_resumed(tiny_dataset, tmp_path_factory):
    """(run folder, the trials as they were at the kill, the finished sub-runs' metrics.json times then, the resumed
    process) of a smoke study killed (SIGKILL) once its first trial finished, then resumed to the end."""
    workdir = tmp_path_factory.mktemp("work")
    env = {**os.environ, "SIGVERIFY_CACHE": str(workdir / "cache"), "TF_CPP_MIN_LOG_LEVEL": "3"}
    log = workdir / "killed.log"
    with log.open("w") as output:
        process = subprocess.Popen(
            [sys.executable, str(REPO / "experiments" / "tune.py"), "--profile", "smoke", "--data", str(tiny_dataset),
             "--runs", str(workdir / "runs"), "--trials", str(TRIALS)],
            cwd=workdir, env=env, stdout=output, stderr=subprocess.STDOUT)
        try:
            run_dir = wait_for_a_complete_trial(process, workdir / "runs", log)
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait()
    at_kill = study_of(run_dir).get_trials()
    finished = {path: path.stat().st_mtime_ns for path in run_dir.glob("trial*/metrics.json")
                if '"complete"' in (path.parent / "status.json").read_text()}
    resumed = run_experiment_script("tune.py", "--resume", run_dir, cwd=workdir)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    return run_dir, at_kill, finished, resumed


def test_resumed_study_keeps_finished_trials_and_retries_the_killed_one(killed_and_resumed):
    run_dir, at_kill, finished, _ = killed_and_resumed
    states = optuna.trial.TrialState
    trials = study_of(run_dir).get_trials()
    complete_at_kill = [trial for trial in at_kill if trial.state == states.COMPLETE]
    assert complete_at_kill
    for before in complete_at_kill:  # kept as they were, folds and all
        after = trials[before.number]
        assert (after.state, after.value, after.params) == (states.COMPLETE, before.value, before.params)
        assert after.intermediate_values == before.intermediate_values
    assert len([trial for trial in trials if trial.state in (states.COMPLETE, states.PRUNED)]) == TRIALS
    assert finished and all(path.stat().st_mtime_ns == time for path, time in finished.items()), "not trained again"
    for killed in [trial for trial in at_kill if trial.state == states.RUNNING]:
        assert trials[killed.number].state == states.FAIL
        retries = [trial for trial in trials if trial.system_attrs.get("failed_trial") == killed.number]
        assert len(retries) == 1 and retries[0].state in (states.COMPLETE, states.PRUNED)
        # A trial killed between two draws recorded only the first ones: its retry repeats those, draws the rest.
        repeated = {name: retries[0].params[name] for name in killed.params}
        assert repeated == killed.params, "a retry runs the killed trial's parameters"
    for trial in trials:  # each fold of a trial is a finished sub-run, a retry's under the killed trial's number
        if trial.state == states.COMPLETE:
            number = trial.system_attrs.get("failed_trial", trial.number)
            for fold in range(2):
                status = (run_dir / f"trial{number:03d}-fold{fold}" / "status.json").read_text()
                assert '"complete"' in status


def test_study_writes_table_figures_best_settings_and_test_run(killed_and_resumed):
    run_dir = killed_and_resumed[0]
    for name in ("study.db", "trials.csv", "trials.md", "param_importances.png", "optimization_history.png",
                 "best.yaml", "report.md", "metrics.json"):
        assert (run_dir / name).is_file() and (run_dir / name).stat().st_size > 0, name
    assert (run_dir / "param_importances.png").read_bytes()[:4] == b"\x89PNG"
    table = pd.read_csv(run_dir / "trials.csv")
    assert {"trial", "state", "value", "loss", "margin", "learning_rate", "cut_layer", "image_size", "augment_level",
            "fold0", "fold1", "retries"} <= set(table.columns)
    assert (table["state"].isin(["complete", "pruned"])).sum() == TRIALS
    assert '"status": "complete"' in (run_dir / "status.json").read_text()

    study = study_of(run_dir)
    best = study.best_trial
    config = parse_config("losses", LOSSES_PROFILES, ["--profile", "smoke", "--config", str(run_dir / "best.yaml")],
                          "")
    assert (config.loss.losses, config.image.image_size, config.model.cut_layer) == (
        best.params["loss"], best.params["image_size"], best.params["cut_layer"])
    assert config.optimizer.learning_rate == pytest.approx(best.params["learning_rate"])
    assert config.train.augment and config.train.augment_level == pytest.approx(best.params["augment_level"])
    assert config.data.validation_folds == 0, "the best settings train on every training writer"

    final = json.loads((run_dir / "best" / "metrics.json").read_text())
    assert final["validation_fold"] is None and final["test_writers"] == split_writers(range(1, 11))[1][:4]
    summary = json.loads((run_dir / "metrics.json").read_text())
    assert summary["best_trial"] == best.number and summary["validation_max_accuracy"] == pytest.approx(best.value)
    assert "max accuracy, skilled" in (run_dir / "report.md").read_text()


def test_a_trial_cut_short_is_retried_first_with_its_parameters_and_pruned_trials_count(tmp_path):
    states = optuna.trial.TrialState
    cut = open_study(tmp_path, seed=0).ask()
    cut.suggest_float("x", 0.0, 1.0)  # and never told: as a kill leaves it
    study = open_study(tmp_path, seed=0)
    failed, retry = study.get_trials()
    assert (failed.state, retry.state, retry.params) == (states.FAIL, states.WAITING, failed.params)
    numbers = []

    def objective(trial):
        numbers.append(first_number(trial))
        value = trial.suggest_float("x", 0.0, 1.0)
        if len(numbers) == 2:
            raise optuna.TrialPruned()
        return value

    run_trials(study, 3, objective)
    assert numbers == [0, 2, 3], "the retry runs first, under the number of the trial it retries"
    assert [trial.state for trial in study.get_trials()] == [states.FAIL, states.COMPLETE, states.PRUNED,
                                                             states.COMPLETE]
    assert study.trials[1].params == failed.params
    assert write_study_figures(study, tmp_path) == ["param_importances.png", "optimization_history.png"]
    assert all((tmp_path / name).stat().st_size > 0 for name in ("param_importances.png", "optimization_history.png"))


def test_validation_folds_are_training_writers_and_the_test_writers_are_never_loaded(tiny_dataset, tmp_path):
    base = {"data": str(tiny_dataset), "cache_dir": str(tmp_path / "cache"), "max_writers": None}
    train_writers, test_writers = split_writers(range(1, 11))
    folds = writer_folds(train_writers, 2)
    for fold in range(2):
        config = build_config("triplet", "smoke", TRIPLET_PROFILES,
                              {"data": {**base, "validation_folds": 2, "validation_fold": fold}})
        data = prepare_data(config)
        assert data.test_writers == folds[fold]
        assert data.train_writers == [w for w in train_writers if w not in folds[fold]]
        loaded = set(data.train.index["writer"]) | set(data.test.index["writer"])
        assert loaded == set(train_writers) and not loaded & set(test_writers)
        assert "validation fold" in data.validation_fold and "not loaded" in data.validation_fold
    config.data.validation_fold = None
    assert writers_tested_by(data, config) == set(train_writers)
    # On CEDAR's ids the validation folds split the 44 training writers, never the post's 11 test writers.
    cedar = build_config("triplet", "smoke", TRIPLET_PROFILES, {"data": {"validation_folds": 4, "validation_fold": 3}})
    train, validation = held_out_writers(range(1, 56), cedar)
    assert len(train) == 33 and len(validation) == 11 and not (set(train) | set(validation)) & set(CEDAR_TEST_WRITERS)


def test_bad_validation_fold_settings_are_refused_in_one_line(tiny_dataset, tmp_path, capsys):
    for data, flag in (({"validation_folds": 2, "validation_fold": 2}, "--validation-fold 2"),
                       ({"validation_fold": 0}, "--validation-fold 0"),
                       ({"validation_folds": 1}, "--validation-folds 1")):
        with pytest.raises(ConfigError, match=flag):
            build_config("triplet", "smoke", TRIPLET_PROFILES, {"data": data})
    with pytest.raises(ConfigError, match="--validation-folds 9"):
        held_out_writers(range(1, 11), build_config("triplet", "smoke", TRIPLET_PROFILES,
                                                    {"data": {"validation_folds": 9}}))
    with pytest.raises(ConfigError, match="--margin: the tune experiment sets it itself"):
        build_config("tune", "smoke", TUNE_PROFILES, {"loss": {"margin": 0.3}})
    with pytest.raises(ConfigError, match="--trials: a setting of exp-tune"):
        build_config("triplet", "smoke", TRIPLET_PROFILES, {"tune": {"trials": 3}})
    # As the triplet script starts (in this process: its flags, refused before any run folder).
    code = run_experiment("triplet", TRIPLET_PROFILES, TRIPLET.prepare, TRIPLET.train_and_evaluate, argv=[
        "--profile", "smoke", "--data", str(tiny_dataset), "--runs", str(tmp_path / "runs"), "--validation-folds", "2",
        "--validation-fold", "2"])
    errors = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and errors == ["error: --validation-fold 2: expected a fold from 0 to 1 (--validation-folds 2)"]
    assert not (tmp_path / "runs").exists()
