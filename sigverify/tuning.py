"""Hyperparameter search over runs (make exp-tune): an Optuna study kept in the run folder as SQLite, trials asked and
told until enough have finished, a trial that a kill cut short run again with its parameters, and what a finished
study writes: its table of trials, the parameter-importance and optimisation-history figures.

Optuna rather than KerasTuner: its storage is one SQLite file that a killed process leaves consistent (a study resumes
from it, nothing needs a server), its pruners stop a trial from intermediate values we report ourselves (a fold's
score), and its define-by-run trials fit settings that are not Keras hyperparameters (the loss, the cut layer).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable
from pathlib import Path

import optuna
import pandas as pd
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from sigverify.runs import write_json, write_text, writing

STUDY_FILE = "study.db"
STUDY_NAME = "tune"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)  # what counts towards --trials (a failed trial is retried)


@contextlib.contextmanager
def _quiet_experimental():
    """Optuna's retry callback and matplotlib figures are marked experimental; their API is what we pin."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def open_study(folder: Path, seed: int) -> optuna.Study:
    """The study of a run folder (`study.db`, created on first use, loaded when the run resumes): maximizing, with a
    median pruner and a seeded TPE sampler, the trials that a kill left running queued again (`retry_cut_trials`)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{(Path(folder) / STUDY_FILE).resolve()}"
    study = optuna.create_study(storage=storage, study_name=STUDY_NAME, direction="maximize", load_if_exists=True,
                                pruner=optuna.pruners.MedianPruner())
    retry_cut_trials(study)
    # A resumed study samples on from another seed: the first seed again would repeat the first trials' draws.
    study.sampler = optuna.samplers.TPESampler(seed=seed + len(study.trials))
    return study


def retry_cut_trials(study: optuna.Study) -> list[int]:
    """Fail every trial still marked running and queue a retry with its parameters (Optuna's retry callback, whose
    trial remembers the one it retries); returns their numbers. One process runs a run folder's study, so a running
    trial at opening was cut short (SIGKILL, a crash, Ctrl-C): Optuna's heartbeat would find it only after its grace
    period."""
    cut = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    with _quiet_experimental():
        retry = RetryHeartbeatStaleTrialCallback()
        for trial in cut:
            study.tell(trial.number, state=TrialState.FAIL)
            retry(study, study.trials[trial.number])
    return [trial.number for trial in cut]


def first_number(trial: FrozenTrial | optuna.Trial) -> int:
    """The number of the trial that this one retries (its own number if it retries none): a retry keeps its folders."""
    frozen = trial if isinstance(trial, FrozenTrial) else trial.study.trials[trial.number]
    with _quiet_experimental():
        retried = RetryHeartbeatStaleTrialCallback.retried_trial_number(frozen)
    return frozen.number if retried is None else retried


def finished_trials(study: optuna.Study) -> list[FrozenTrial]:
    return study.get_trials(deepcopy=False, states=FINISHED)


def run_trials(study: optuna.Study, trials: int, objective: Callable[[optuna.Trial], float]) -> None:
    """Ask and tell until `trials` have finished (complete or pruned; `objective` raises optuna.TrialPruned). A trial
    whose objective raises anything else, or that is interrupted, stays running: the next `open_study` retries it."""
    while len(finished_trials(study)) < trials:
        trial = study.ask()
        try:
            value = objective(trial)
        except optuna.TrialPruned:
            study.tell(trial, state=TrialState.PRUNED)
        else:
            study.tell(trial, value)


def trials_table(study: optuna.Study, parameters: list[str]) -> pd.DataFrame:
    """One row per trial: number, state, value (the objective), its `parameters`, the value reported at each step
    (`fold<i>`: the objectives report one per validation fold), the trial it retries and its seconds."""
    rows = []
    for trial in study.get_trials(deepcopy=False):
        retried = first_number(trial)
        rows.append({"trial": trial.number, "state": trial.state.name.lower(), "value": trial.value,
                     **{name: trial.params.get(name) for name in parameters},
                     **{f"fold{step}": value for step, value in sorted(trial.intermediate_values.items())},
                     "retries": None if retried == trial.number else retried,
                     "seconds": trial.duration.total_seconds() if trial.duration else None})
    return pd.DataFrame(rows)


def table_markdown(table: pd.DataFrame) -> str:
    def cell(value) -> str:
        if value is None or (isinstance(value, float) and pd.isna(value)):
            return "—"
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(map(str, table.columns)) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines)


def write_study_figures(study: optuna.Study, folder: Path) -> list[str]:
    """param_importances.png (Optuna's default evaluator, PED-ANOVA, over the complete trials) and
    optimization_history.png into `folder`; returns their file names. With fewer than two complete trials the
    importance figure says so instead (no importance can be estimated)."""
    import matplotlib.pyplot as plt  # Optuna draws through pyplot: each figure is closed once saved
    from optuna.visualization import matplotlib as optuna_plots

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    figures = {"param_importances.png": optuna_plots.plot_param_importances,
               "optimization_history.png": optuna_plots.plot_optimization_history}
    for name, plot in figures.items():
        with _quiet_experimental():
            if name == "param_importances.png" and len(complete) < 2:
                figure, axes = plt.subplots()
                axes.axis("off")
                axes.text(0.5, 0.5, f"{len(complete)} complete trial(s): parameter importances need at least two",
                          ha="center", va="center")
            else:
                figure = plot(study).figure
        figure.set_size_inches(8, 4.5)
        figure.tight_layout()
        with writing(Path(folder) / name) as temporary:
            figure.savefig(temporary, format="png", dpi=120)
        plt.close(figure)
    return list(figures)


def write_trials_tables(study: optuna.Study, folder: Path, parameters: list[str]) -> str:
    """trials.csv and trials.md (`trials_table`) into `folder`; returns the markdown table."""
    table = trials_table(study, parameters)
    write_text(Path(folder) / "trials.csv", table.to_csv(index=False, float_format="%.6g"))
    markdown = table_markdown(table)
    write_text(Path(folder) / "trials.md", f"# Trials of {Path(folder).name}\n\n{markdown}\n")
    return markdown


def write_study_report(folder: Path, study: optuna.Study, parameters: list[str], title: str,
                       finals: dict[str, tuple[object, dict]]) -> dict:
    """The files of a finished study in `folder`: the figures, trials.csv / trials.md, metrics.json (best trial, and
    each final run's metrics on the test writers) and report.md (all of it). `finals` are {name: (settings, metrics)}
    of the runs trained on every training writer (the best trial's settings as "best"); returns metrics.json's
    content."""
    best, trials = study.best_trial, len(finished_trials(study))
    folds = len(best.intermediate_values)
    figures = write_study_figures(study, folder)
    table = write_trials_tables(study, folder, parameters)
    lines = [title, "",
             (f"{trials} finished trials, each scored on {folds} validation folds of the training writers (mean max "
              f"accuracy on skilled forgeries); best: trial {best.number}, {best.value:.4f}, {best.params}."), "",
             "On the test writers, each trained once on every training writer:", "",
             "| settings | loss | cut layer | image | learning rate | max accuracy, skilled | EER, skilled |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {name} | {metrics['loss_description']} | {settings.model.cut_layer} | {settings.image.image_size} | "
              f"{settings.optimizer.learning_rate:.3g} | {metrics['hard']['max_accuracy']:.3f} | "
              f"{metrics['hard']['eer']:.3f} |" for name, (settings, metrics) in finals.items()]
    lines += ["", *[f"![{name}]({name})" for name in figures], "", "## Trials", "", table, ""]
    write_text(Path(folder) / "report.md", "\n".join(lines))
    summary = {"best_trial": best.number, "validation_max_accuracy": best.value, "best_params": best.params,
               "trials": trials, **{name: {key: metrics[key] for key in ("hard", "easy", "test_writers")}
                                    for name, (_, metrics) in finals.items()}}
    write_json(Path(folder) / "metrics.json", summary)
    print("\n".join(lines))
    return summary
