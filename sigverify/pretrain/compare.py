"""What the pretraining comparison (experiments/pretrain_compare.py) needs beyond one pretraining run: the starts it
compares, the check that no pretraining saw a fine-tuning run's test writers, and its figure (max accuracy on skilled
forgeries per start, mean ± std over the fine-tuning runs, beside the frozen pretrained features and the post's best).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

from sigverify.config import PRETRAIN_METHODS, ExperimentConfig
from sigverify.data.index import read_index
from sigverify.errors import ConfigError
from sigverify.models import MODEL_ZOO
from sigverify.pipeline import held_out_writers, resolve_data_dir
from sigverify.protocol import repeat_configs

STARTS = ("random", "simclr", "moco", "synthetic", "imagenet")
START_NAMES = {"random": "random initialisation", "simclr": "SimCLR", "moco": "MoCo v2",
               "synthetic": "synthetic writers (triplet)", "imagenet": "ImageNet"}
POST_BEST_MAX_ACCURACY = MODEL_ZOO["small_resnet50"].reported_max_accuracy  # 0.818: Small ResNet50, ImageNet, CEDAR


def selected_starts(starts: str | None) -> list[str]:
    """The `--starts` names in order (default: every start of STARTS)."""
    if starts is None:
        return list(STARTS)
    names = list(dict.fromkeys(name.strip() for name in starts.split(",") if name.strip()))
    unknown = [name for name in names if name not in STARTS]
    if not names or unknown:
        raise ConfigError(f"--starts {starts!r}: expected comma-separated names from {', '.join(STARTS)}")
    return names


def pretraining_methods(starts: list[str]) -> list[str]:
    return [start for start in starts if start in PRETRAIN_METHODS]


def check_no_test_writer_is_pretrained_on(config: ExperimentConfig, starts: list[str],
                                          pretraining_writers: list[int]) -> None:
    """SimCLR and MoCo on `--unlabelled train` learn from the training writers of the split they were pretrained on:
    refuse a comparison whose fine-tuning runs (folds, or seeds that move a non-CEDAR split) test on one of them."""
    self_supervised = [start for start in starts if start in ("simclr", "moco")]
    if not self_supervised or config.pretrain.unlabelled != "train":
        return
    writers = read_index(resolve_data_dir(config.data.data), layout=config.data.layout,
                         skip_bad=config.data.skip_bad_images)["writer"].unique()
    for name, sub_config in repeat_configs(config):
        _, test_writers = held_out_writers(writers, sub_config)
        if config.data.max_writers:
            test_writers = test_writers[: config.data.max_writers]
        seen = sorted(set(test_writers) & set(pretraining_writers))
        if seen:
            raise ConfigError(
                f"{', '.join(self_supervised)} pretrain once on the training writers of one split (--unlabelled "
                f"train), and fine-tuning run {name} tests on writers {seen[:10]} among them; expected one split: "
                "run one fold at a time (--fold f), or pretrain on --unlabelled synthetic or a folder of images")


def frozen_feature_accuracies(pretraining_runs: dict[str, Path]) -> dict[str, float]:
    """Per pretraining method, the skilled-forgery max accuracy of its frozen features (its run's own evaluation)."""
    accuracies = {}
    for method, folder in pretraining_runs.items():
        hard = json.loads((Path(folder) / "metrics.json").read_text()).get("hard") or {}
        if hard.get("max_accuracy") is not None:
            accuracies[method] = float(hard["max_accuracy"])
    return accuracies


def gap_lines(summary: pd.DataFrame) -> list[str]:
    """One line per start: its mean max accuracy on skilled forgeries and the gap to the post's best figure."""
    lines = []
    for _, row in summary.iterrows():
        mean, std = row["hard_max_accuracy_mean"], row["hard_max_accuracy_std"]
        spread = f" ± {std:.3f}" if pd.notna(std) else ""
        lines.append(f"- {START_NAMES[row['start']]}: {mean:.3f}{spread} over {int(row['runs'])} run(s); gap to the "
                     f"post's {POST_BEST_MAX_ACCURACY:.3f}: {POST_BEST_MAX_ACCURACY - mean:+.3f}")
    return lines


def plot_accuracy_by_start(summary: pd.DataFrame, frozen: dict[str, float], path, title: str) -> Path:
    """Bars: max accuracy on skilled forgeries after fine-tuning per start (mean ± std over runs); diamonds: the same
    pretrained backbone's frozen features before fine-tuning; dashed line: the post's Small ResNet50 with ImageNet."""
    starts = summary["start"].tolist()
    means = summary["hard_max_accuracy_mean"].to_numpy(dtype=float)
    stds = np.nan_to_num(summary["hard_max_accuracy_std"].to_numpy(dtype=float))
    positions = np.arange(len(starts))
    figure = Figure(figsize=(max(5.0, 1.4 * len(starts) + 2), 4.5), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.bar(positions, means, yerr=stds, capsize=5, color="tab:blue", alpha=0.8, label="fine-tuned (triplet)")
    frozen_positions = [p for p, start in zip(positions, starts) if start in frozen]
    if frozen_positions:
        axes.scatter(frozen_positions, [frozen[starts[p]] for p in frozen_positions], marker="D", color="tab:orange",
                     zorder=3, label="frozen pretrained features")
    axes.axhline(POST_BEST_MAX_ACCURACY, color="tab:red", linestyle="--",
                 label=f"post: Small ResNet50, ImageNet ({POST_BEST_MAX_ACCURACY:.3f})")
    axes.axhline(0.5, color="grey", linewidth=0.8)
    axes.set_xticks(positions, [START_NAMES[start] for start in starts], rotation=15, ha="right")
    axes.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    axes.set_ylim(0.4, 1.0)
    axes.set_ylabel("max accuracy, skilled forgeries")
    axes.set_title(title)
    axes.legend(loc="upper left", fontsize="small")
    figure.savefig(path, format="png", dpi=120, bbox_inches="tight")
    figure.clear()
    return Path(path)
