"""What wraps every experiment script: flags → settings, seeds, the run folder and its status, and errors that
reach the user as one line (a bad setting, a bad file) rather than a traceback."""

from __future__ import annotations

import argparse
import contextlib
import logging
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import keras

from sigverify.data.preprocess import default_cache_dir
from sigverify.errors import ConfigError, SigverifyError
from sigverify.interrupts import Interrupted, handling_interrupts, interrupt_received, stop_if_interrupted
from sigverify.runs import CONFIG_FILE, STATUS_FILE, RunFolder, check_resumable, write_yaml
from sigverify.settings import (
    ExperimentConfig,
    add_config_flags,
    config_from_args,
    config_from_dict,
    contradicted_settings,
)
from sigverify.training.engine import CHECKPOINT_DIR

log = logging.getLogger("sigverify")

EXIT_BAD_INPUT = 2
EXIT_FAILED = 3


def seed_everything(seed: int, deterministic: bool) -> None:
    """Python, NumPy and backend seeds from one number; op determinism on request (TensorFlow)."""
    keras.utils.set_random_seed(seed)
    if deterministic and keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()


def parse_config(experiment: str, profiles: dict, argv: list[str] | None, description: str) -> ExperimentConfig:
    parser = argparse.ArgumentParser(prog=f"experiments/{experiment}.py", description=description)
    add_config_flags(parser)
    args = parser.parse_args(argv)
    if args.resume:
        return _config_of_run(experiment, args.resume, args)
    config = config_from_args(experiment, profiles, args)
    config.backend = keras.backend.backend()
    return config


def _config_of_run(experiment: str, run_dir: str, args: argparse.Namespace) -> ExperimentConfig:
    """A resumed run continues with the settings it was started with (its config.yaml); flags that say otherwise are
    refused, since they would be ignored."""
    import yaml

    run_path = check_resumable(run_dir, experiment)
    try:
        config = config_from_dict(yaml.safe_load((run_path / CONFIG_FILE).read_text()) or {})
    except (yaml.YAMLError, TypeError, ConfigError) as error:
        raise ConfigError(f"--resume {run_dir}: its {CONFIG_FILE} cannot be read as a run's settings ({error})") from None
    contradicted = contradicted_settings(config, args)
    if contradicted:
        raise ConfigError(f"--resume {run_dir}: a resumed run keeps the settings it started with, and these differ: "
                          f"{'; '.join(contradicted)}; expected them left out (or start a new run)")
    trained_on, backend = config.backend or "tensorflow", keras.backend.backend()
    if trained_on != backend:
        raise ConfigError(f"--resume {run_dir}: the run trained on the {trained_on} backend and this process runs "
                          f"{backend} (their checkpoints differ); expected KERAS_BACKEND={trained_on}")
    config.resume = str(run_dir)
    return config


def run_experiment(experiment: str, profiles: dict, prepare: Callable[[ExperimentConfig], object],
                   body: Callable[[RunFolder, ExperimentConfig, object], dict], argv: list[str] | None = None,
                   description: str = "") -> int:
    """Parse the flags, `prepare(config)` everything that can fail on bad settings or input (strategy, model checks,
    data, preprocessing) before any run folder exists, then `body(run, config, prepared)` in a new or resumed run folder.

    Exit codes: 0 done, 2 bad setting or input, 3 training failed (run marked failed), 130 (Ctrl-C) or 143 (SIGTERM)
    interrupted (run marked interrupted, resumable). A bad setting found only once the run folder exists removes that
    folder again when it was made by this process and holds no training yet: a refusal writes nothing.
    """
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)
    run = config = None
    chief, created = True, False
    stack = contextlib.ExitStack()
    stack.enter_context(handling_interrupts())
    try:
        config = parse_config(experiment, profiles, argv, description)
        check_writable(Path(config.runs), "--runs")
        cache = config.data.cache_dir
        check_writable(Path(cache) if cache else default_cache_dir(), "--cache-dir" if cache else "SIGVERIFY_CACHE")
        seed_everything(config.train.seed, config.devices.deterministic)
        prepared = prepare(config)
        chief = _writes_run_folder(config, prepared)
        if not chief:
            scratch = stack.enter_context(tempfile.TemporaryDirectory(prefix=f"sigverify-{experiment}-worker-"))
            run = _worker_scratch_run(scratch, experiment, config)
        elif config.resume:
            run = RunFolder.resume(config.resume, experiment)
        else:
            run, created = RunFolder.create(config.runs, experiment), True
            write_yaml(run.file(CONFIG_FILE), config.to_dict())
        print(f"{'run' if chief else 'worker scratch'} folder: {run.path}", file=sys.stderr)
        metrics = body(run, config, prepared)
        stop_if_interrupted()  # library code that checks for signals may have swallowed the handler's exception
        run.finish()
        print(f"done: {run.path}", file=sys.stderr)
        _print_summary(metrics)
        return 0
    except Interrupted as why:
        return _report_interruption(why, run, experiment, config, chief)
    except SigverifyError as error:
        if run is not None and created and isinstance(error, ConfigError) and not _holds_training(run):
            shutil.rmtree(run.path, ignore_errors=True)
            run = None
        if run is not None:
            failed_on_input = isinstance(error, ConfigError)
            run.set_status("failed", str(error))
            print(f"error: {error}\nthe run folder {run.path} is marked failed", file=sys.stderr)
            return EXIT_BAD_INPUT if failed_on_input else EXIT_FAILED
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as error:
        if interrupt_received():  # the signal's exception was raised inside C code (TensorFlow tracing) and came back as another
            return _report_interruption(Interrupted(interrupt_received()), run, experiment, config, chief)
        if run is not None:
            run.set_status("failed", f"{type(error).__name__}: {error}")
        raise
    finally:
        stack.close()


def _report_interruption(why: Interrupted, run, experiment: str, config, chief: bool) -> int:
    """Mark the run interrupted, say how to resume it, and return the signal's exit code."""
    if run is not None:
        run.set_status("interrupted", f"stopped by {why}")
        target = f"exp-{experiment}" + ("-multiworker" if config.devices.strategy == "multiworker" else "")
        if chief:
            print(f"\ninterrupted ({why}). The last completed epoch is checkpointed; continue with:\n"
                  f"  make {target} RESUME={run.path}   (or: --resume {run.path})", file=sys.stderr)
    else:
        print(f"\ninterrupted ({why}) before a run folder was made", file=sys.stderr)
    return why.exit_code


def check_writable(folder: Path, option: str) -> None:
    """Refuse, before any work, a folder that cannot be created or written (a file in its place, no permission). The
    folders made for the check are removed again: a refused run writes nothing."""
    missing = [path for path in (folder, *folder.parents) if not path.exists()]  # deepest first
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise ConfigError(f"{option} {folder}: cannot create or write that folder ({error.strerror or error}); "
                          "expected a writable folder") from None
    finally:
        for path in missing:
            with contextlib.suppress(OSError):
                path.rmdir()


def _holds_training(run: RunFolder) -> bool:
    """Whether a run folder holds anything of training (a checkpoint, a history, a finished sub-run)."""
    return any(entry.name not in (CONFIG_FILE, STATUS_FILE) for entry in run.path.iterdir())


def _writes_run_folder(config: ExperimentConfig, prepared) -> bool:
    """Under multi-worker training only the chief writes the run folder."""
    return config.devices.strategy != "multiworker" or prepared.engine.is_chief


def _worker_scratch_run(scratch: str, experiment: str, config: ExperimentConfig) -> RunFolder:
    """A non-chief worker runs the same steps as the chief (their collective ops must match) in a throw-away folder;
    when the chief resumes, the worker starts from a copy of the same checkpoints."""
    run = RunFolder.create(scratch, experiment)
    if config.resume:
        checkpoints = Path(config.resume) / CHECKPOINT_DIR
        if checkpoints.is_dir():
            shutil.copytree(checkpoints, run.file(CHECKPOINT_DIR))
    return run


def _print_summary(metrics: dict) -> None:
    for name in ("hard", "easy"):
        values = metrics.get(name)
        if values:
            honest = values.get("accuracy_at_train_threshold")
            honest_text = "n/a" if honest is None else f"{honest:.3f}"
            print(f"{name:>4} pairs: max accuracy {values['max_accuracy']:.3f}  EER {values['eer']:.3f}  "
                  f"AUC {values['auc']:.3f}  accuracy at the training threshold {honest_text}")

