"""The honest protocol's repeats: an experiment run once per writer-disjoint fold (`--folds k`) and per seed
(`--seeds n`), each repeat a complete sub-run in its own folder of the run, then one table of mean ± standard deviation
with a bootstrap interval over test writers (`sigverify.reporting.tables`).

Sub-runs are named `seed<s>` (the default split) or `fold<f>-seed<s>`; a resumed run keeps the finished ones and
continues an interrupted one from its last checkpoint. With one fold and one seed nothing changes: the experiment
writes its single run folder as before.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable
from pathlib import Path

from sigverify.data.prepare import prepare_data
from sigverify.experiment import seed_everything
from sigverify.reporting.tables import summary_table, write_summary_tables
from sigverify.runs import CONFIG_FILE, RunFolder, write_yaml
from sigverify.settings import ExperimentConfig
from sigverify.steps import Prepared


def repeat_configs(config: ExperimentConfig) -> list[tuple[str, ExperimentConfig]]:
    """(sub-run name, settings) of every fold × seed; each sub-run's settings describe a single run (one fold, one
    seed), so its config.yaml reruns or resumes exactly that run."""
    data, train = config.data, config.train
    if data.folds > 1:
        folds = [data.fold] if data.fold is not None else list(range(data.folds))
    else:
        folds = [None]
    repeats = []
    for fold in folds:
        for seed in range(train.seed, train.seed + train.seeds):
            sub = copy.deepcopy(config)
            sub.data.fold, sub.train.seed, sub.train.seeds = fold, seed, 1
            repeats.append((f"seed{seed}" if fold is None else f"fold{fold}-seed{seed}", sub))
    return repeats


def is_repeated(config: ExperimentConfig) -> bool:
    return len(repeat_configs(config)) > 1


def _same_split(a: ExperimentConfig, b: ExperimentConfig) -> bool:
    """Whether two settings give the same writers and images (the seed only moves a non-CEDAR default split)."""
    return (a.data.folds, a.data.fold or 0) == (b.data.folds, b.data.fold or 0) and (
        a.data.folds > 1 or a.train.seed == b.train.seed)


def run_repeats(run: RunFolder, config: ExperimentConfig, prepared: Prepared,
                body: Callable[[RunFolder, ExperimentConfig, Prepared], dict], prefix: str = "") -> list[Path]:
    """`body(sub_run, sub_config, sub_prepared)` for every fold × seed of `config`, each in the sub-run folder
    `<prefix><name>`; returns the sub-run folders. `prepared` (made for `config`) is reused where the writers are the
    same; other folds get their own data (preprocessed images come from the disk cache)."""
    folders = []
    for name, sub_config in repeat_configs(config):
        same_split = _same_split(sub_config, config)
        folders.append(run_sub_run(run, prefix + name, sub_config,
                                   lambda sub_config=sub_config, same_split=same_split: (
                                       prepared if same_split else Prepared(prepared.engine, prepare_data(sub_config))),
                                   body))
    return folders


def run_sub_run(run: RunFolder, name: str, config: ExperimentConfig, prepared_of: Callable[[], object],
                body: Callable[[RunFolder, ExperimentConfig, object], dict], saved_config: ExperimentConfig | None = None,
                ) -> Path:
    """`body(sub_run, config, prepared_of())` in the sub-run folder `name` of `run`, seeded by `config`, with its
    config.yaml (`saved_config`, default `config`); a sub-run that finished earlier is kept. Returns its folder."""
    sub = run.child(name)
    if sub.is_complete():
        print(f"{name}: finished earlier, kept ({sub.path})", file=sys.stderr)
        return sub.path
    print(f"{name} → {sub.path}", file=sys.stderr)
    prepared = prepared_of()
    seed_everything(config.train.seed, config.devices.deterministic)
    with sub.running():
        write_yaml(sub.file(CONFIG_FILE), (saved_config or config).to_dict())
        body(sub, config, prepared)
    return sub.path


def summary_metrics(summary_row) -> dict:
    """The means of a summary row in the shape of one run's metrics (what the experiment prints at the end)."""
    keys = {"max_accuracy": "max_accuracy", "eer": "eer", "auc": "auc", "honest_accuracy": "accuracy_at_train_threshold"}
    return {pair_set: {key: float(summary_row[f"{pair_set}_{column}_mean"]) for column, key in keys.items()}
            for pair_set in ("hard", "easy")}


def repeated(body: Callable[[RunFolder, ExperimentConfig, Prepared], dict]):
    """An experiment body that runs `body` once per fold × seed when the settings ask for repeats (writing the table of
    the repeats into the run folder), and as it is otherwise."""

    def run_body(run: RunFolder, config: ExperimentConfig, prepared: Prepared) -> dict:
        if not is_repeated(config):
            return body(run, config, prepared)
        folders = run_repeats(run, config, prepared, body)
        summary, runs = summary_table({config.experiment: folders}, "experiment")
        splits = f"{config.data.folds} writer-disjoint folds" if config.data.folds > 1 else "the default split"
        title = (f"# {config.experiment}: {len(folders)} runs ({splits}, {config.train.seeds} seed(s) from "
                 f"{config.train.seed}), profile `{config.profile}`")
        markdown = write_summary_tables(run.path, summary, runs, "experiment", [title])
        print(markdown)
        return summary_metrics(summary.iloc[0])

    return run_body
