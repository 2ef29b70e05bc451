"""Tables over several finished runs (folds, seeds, losses, models): each run's numbers read back from its folder, the
mean ± standard deviation per group with a 95% bootstrap interval over test writers, written as CSV and Markdown.

A run folder holds what is needed: metrics.json, and pair_scores.npz (every test pair's distance, label and writer)
that the bootstrap resamples, so that a resumed comparison reads earlier runs exactly as it reads new ones.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from sigverify.errors import DataError
from sigverify.evaluation.metrics import BOOTSTRAP_RESAMPLES, WriterPairScores, bootstrap_intervals
from sigverify.runs import write_text, writing

PAIR_SCORES_FILE = "pair_scores.npz"
PAIR_SETS = ("hard", "easy")

# Column -> where it is in metrics.json. "hard": genuine vs skilled forgery pairs; "easy": genuine vs random.
RUN_COLUMNS = {
    "hard_max_accuracy": ("hard", "max_accuracy"),
    "hard_eer": ("hard", "eer"),
    "hard_auc": ("hard", "auc"),
    "hard_honest_accuracy": ("hard", "accuracy_at_train_threshold"),
    "easy_max_accuracy": ("easy", "max_accuracy"),
    "easy_eer": ("easy", "eer"),
    "easy_auc": ("easy", "auc"),
    "easy_honest_accuracy": ("easy", "accuracy_at_train_threshold"),
    "train_seconds": ("train_seconds",),
    "k1_eer": ("reference_k", "1", "min", "hard", "eer"),
    "k5_mean_eer": ("reference_k", "5", "mean", "hard", "eer"),
    "k5_min_eer": ("reference_k", "5", "min", "hard", "eer"),
    "k12_mean_eer": ("reference_k", "12", "mean", "hard", "eer"),
    "k12_min_eer": ("reference_k", "12", "min", "hard", "eer"),
    "precision_at_1": ("identification", "precision_at_1"),
    "map_at_r": ("identification", "map_at_r"),
}
# The bootstrap intervals of the table: column -> statistic of `bootstrap_intervals` on the hard pairs.
INTERVAL_COLUMNS = {"hard_max_accuracy": "max_accuracy", "hard_eer": "eer",
                    "hard_honest_accuracy": "accuracy_at_train_threshold"}
HEADERS = {
    "hard_max_accuracy": "max accuracy, skilled", "hard_eer": "EER, skilled", "hard_auc": "AUC, skilled",
    "hard_honest_accuracy": "honest accuracy, skilled", "easy_max_accuracy": "max accuracy, random",
    "easy_eer": "EER, random", "easy_auc": "AUC, random", "easy_honest_accuracy": "honest accuracy, random",
    "train_seconds": "train s",
    "k1_eer": "EER K=1", "k5_mean_eer": "EER K=5 (mean)", "k5_min_eer": "EER K=5 (min)",
    "k12_mean_eer": "EER K=12 (mean)", "k12_min_eer": "EER K=12 (min)", "precision_at_1": "precision@1",
    "map_at_r": "MAP@R",
}
VERIFICATION_COLUMNS = ["hard_max_accuracy", "hard_eer", "hard_auc", "hard_honest_accuracy", "easy_max_accuracy",
                        "train_seconds"]
DEPLOYMENT_COLUMNS = ["k1_eer", "k5_mean_eer", "k5_min_eer", "k12_mean_eer", "k12_min_eer", "precision_at_1",
                      "map_at_r"]


def write_pair_scores(path: Path, scores: dict, pairs_by_set: dict[str, pd.DataFrame],
                      train_thresholds: dict[str, float | None]) -> None:
    """pair_scores.npz: per pair set, every pair's distance, label and claimed writer, and the training threshold."""
    arrays = {}
    for name, set_scores in scores.items():
        arrays[f"{name}_distance"] = set_scores.distances
        arrays[f"{name}_same"] = set_scores.same
        arrays[f"{name}_writer"] = pairs_by_set[name]["writer"].to_numpy()
        threshold = train_thresholds.get(name)
        arrays[f"{name}_train_threshold"] = np.array(np.nan if threshold is None else threshold)
    with writing(Path(path)) as temporary:
        np.savez(temporary, **arrays)


def read_pair_scores(run_dir: Path) -> dict[str, WriterPairScores]:
    path = Path(run_dir) / PAIR_SCORES_FILE
    if not path.exists():
        raise DataError(f"{path}: missing; expected the pair scores that every finished run writes")
    with np.load(path) as arrays:
        result = {}
        for name in PAIR_SETS:
            if f"{name}_distance" in arrays:
                threshold = float(arrays[f"{name}_train_threshold"])
                result[name] = WriterPairScores(arrays[f"{name}_distance"], arrays[f"{name}_same"],
                                                arrays[f"{name}_writer"], None if math.isnan(threshold) else threshold)
        return result


def _lookup(metrics: dict, keys: tuple):
    value = metrics
    for key in keys:
        if not isinstance(value, dict) or value.get(key) is None:
            return None
        value = value[key]
    return value


def run_row(run_dir: Path) -> dict:
    """One finished run's numbers: the RUN_COLUMNS, its test writers and seed, and its folder."""
    metrics_path = Path(run_dir) / "metrics.json"
    if not metrics_path.exists():
        raise DataError(f"{metrics_path}: missing; expected a finished run folder")
    metrics = json.loads(metrics_path.read_text())
    row = {"run": Path(run_dir).name, "path": str(run_dir), "test_writers": " ".join(map(str, metrics["test_writers"]))}
    row.update({column: _lookup(metrics, keys) for column, keys in RUN_COLUMNS.items()})
    return row


def summary_table(runs_by_group: dict[str, list[Path]], group_column: str, seed: int = 0,
                  resamples: int = BOOTSTRAP_RESAMPLES) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(summary, runs): per group the mean and sample standard deviation (NaN for one run) of every RUN_COLUMN over its
    runs and `{column}_ci_low/_high`, the bootstrap interval over test writers of the mean (INTERVAL_COLUMNS); and
    the table of the runs themselves."""
    run_rows, summary_rows = [], []
    for group, paths in runs_by_group.items():
        rows = pd.DataFrame([run_row(path) for path in paths])
        run_rows.append(rows.assign(**{group_column: group}))
        summary = {group_column: group, "runs": len(rows)}
        for column in RUN_COLUMNS:
            values = pd.to_numeric(rows[column], errors="coerce")
            summary[f"{column}_mean"] = values.mean()
            summary[f"{column}_std"] = values.std(ddof=1) if values.count() > 1 else math.nan
        hard_scores = [read_pair_scores(path)["hard"] for path in paths]
        intervals = bootstrap_intervals(hard_scores, n_resamples=resamples, seed=seed)
        for column, statistic in INTERVAL_COLUMNS.items():
            low, high = intervals[statistic] or (math.nan, math.nan)
            summary[f"{column}_ci_low"], summary[f"{column}_ci_high"] = low, high
        summary_rows.append(summary)
    runs = pd.concat(run_rows, ignore_index=True)
    return pd.DataFrame(summary_rows), runs[[group_column] + [c for c in runs.columns if c != group_column]]


def paired_differences(runs: pd.DataFrame, group_column: str, column: str = "hard_max_accuracy") -> pd.DataFrame:
    """Each group against the first on the runs they share (the same test writers and seed): the mean and sample
    standard deviation of the per-run differences in `column`, and on how many runs the group is ahead, level and
    behind. Folds differ in difficulty more than models often do; paired, what a fold does to both cancels out."""
    seeds = runs["run"].str.extract(r"seed(\d+)$", expand=False)
    keyed = runs.assign(seed=seeds, value=pd.to_numeric(runs[column], errors="coerce")).dropna(subset=["seed", "value"])
    values = keyed.pivot_table(index=["test_writers", "seed"], columns=group_column, values="value", aggfunc="first")
    reference, *others = list(dict.fromkeys(runs[group_column]))
    rows = []
    for group in others:
        if group not in values or reference not in values:
            continue
        differences = (values[group] - values[reference]).dropna()
        if len(differences) < 2:
            continue
        rows.append({group_column: group, "reference": reference, "paired_runs": len(differences),
                     "difference_mean": differences.mean(), "difference_std": differences.std(ddof=1),
                     "ahead": int((differences > 0).sum()), "level": int((differences == 0).sum()),
                     "behind": int((differences < 0).sum())})
    return pd.DataFrame(rows)


def paired_markdown(paired: pd.DataFrame, group_column: str, column: str = "hard_max_accuracy") -> str:
    reference = paired["reference"].iloc[0]
    introduction = (f"Each {group_column} against {reference} on the runs they share (the same test writers and seed): "
                    f"the per-run difference in {HEADERS[column]}, mean ± sample standard deviation, and the runs "
                    f"where it is ahead of, level with and behind {reference}:")
    lines = [introduction, "", f"| {group_column} | paired runs | difference | ahead / level / behind |", "|---|---|---|---|"]
    for _, row in paired.iterrows():
        lines.append(f"| {row[group_column]} | {row['paired_runs']} | {row['difference_mean']:+.3f} ± "
                     f"{row['difference_std']:.3f} | {row['ahead']} / {row['level']} / {row['behind']} |")
    return "\n".join(lines)


def number_text(value, digits: int) -> str:
    return "—" if value is None or pd.isna(value) else f"{value:.{digits}f}"


def summary_cell(row: pd.Series, column: str) -> str:
    """'mean ± std [low, high]' (std only with several runs, the interval where the column has one)."""
    digits = 0 if column == "train_seconds" else 3
    text = number_text(row[f"{column}_mean"], digits)
    if pd.notna(row[f"{column}_std"]):
        text += f" ± {number_text(row[f'{column}_std'], digits)}"
    if f"{column}_ci_low" in row and pd.notna(row[f"{column}_ci_low"]):
        text += f" [{number_text(row[f'{column}_ci_low'], 3)}, {number_text(row[f'{column}_ci_high'], 3)}]"
    return text


def summary_markdown(summary: pd.DataFrame, group_column: str, columns: list[str],
                     facts: dict[str, Callable[[pd.Series], str]] | None = None) -> str:
    """One row per group: its name, its runs, the `facts` cells ({header: cell(row)}, e.g. a model's parameters), then
    `summary_cell` of each column."""
    facts = facts or {}
    lines = ["| " + " | ".join([group_column, "runs", *facts] + [HEADERS[c] for c in columns]) + " |",
             "|" + "---|" * (len(columns) + len(facts) + 2)]
    for _, row in summary.iterrows():
        lines.append("| " + " | ".join([str(row[group_column]), str(int(row["runs"]))]
                                       + [cell(row) for cell in facts.values()]
                                       + [summary_cell(row, c) for c in columns]) + " |")
    return "\n".join(lines)


PROTOCOL_NOTE = (
    "Each cell: mean ± sample standard deviation over the runs (folds × seeds), and in brackets the 95% percentile "
    "bootstrap interval of that mean over test writers ({resamples} resamples of each run's test writers, with "
    "replacement). Max accuracy and EER use the threshold chosen on the test pairs (an oracle, as the post did); the "
    "honest accuracy applies the threshold chosen on the training writers' pairs. \"skilled\": genuine vs skilled-"
    "forgery pairs, \"random\": genuine vs another writer's signature. EER K: a questioned signature against K enrolled "
    "genuine signatures of the claimed writer (mean or min distance; K=1: one reference), skilled forgeries; "
    "precision@1 and MAP@R: writer identification in the test writers' genuine signatures."
)


def write_summary_tables(folder: Path, summary: pd.DataFrame, runs: pd.DataFrame, group_column: str,
                         title_lines: list[str], facts: dict[str, Callable[[pd.Series], str]] | None = None) -> str:
    """table.csv (the summary), runs.csv (every run) and table.md (title, the verification table with the `facts`
    cells of `summary_markdown`, each group paired against the first where they share runs, the deployment table, the
    note on what the cells are); returns the Markdown."""
    folder = Path(folder)
    write_text(folder / "table.csv", summary.to_csv(index=False, float_format="%.6g"))
    write_text(folder / "runs.csv", runs.to_csv(index=False, float_format="%.6g"))
    paired = paired_differences(runs, group_column)
    markdown = "\n".join([*title_lines, "", summary_markdown(summary, group_column, VERIFICATION_COLUMNS, facts), "",
                          *([paired_markdown(paired, group_column), ""] if len(paired) else []),
                          "Verification against enrolled references and writer identification:", "",
                          summary_markdown(summary, group_column, DEPLOYMENT_COLUMNS), "",
                          PROTOCOL_NOTE.format(resamples=BOOTSTRAP_RESAMPLES), ""])
    write_text(folder / "table.md", markdown)
    return markdown


def describe_training(config) -> str:
    """How the runs of a comparison trained, as a sentence of its table.md."""
    train, batches, optimizer, data = config.train, config.batches, config.optimizer, config.data
    splits = (f"{data.folds} writer-disjoint folds" if data.folds > 1 and data.fold is None
              else "the default split" if data.folds == 1 else f"fold {data.fold} of {data.folds}")
    backbone_rate = (f" (a pretrained backbone at {optimizer.backbone_rate_scale:g} of it)"
                     if optimizer.backbone_rate_scale != 1 else "")
    return (f"{train.epochs} epochs, batch {batches.batch_size} ({batches.sampler} sampler), Adam "
            f"{optimizer.learning_rate:g}{backbone_rate} with the {optimizer.schedule} schedule, on {splits} with seed(s) "
            f"{train.seed}…{train.seed + train.seeds - 1}")
