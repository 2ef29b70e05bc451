"""What the pretraining comparison (experiments/pretrain_compare.py) needs beyond one pretraining run: the starts it
compares, the check that no pretraining saw a fine-tuning run's test writers, and the lines of its table."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from sigverify.data.index import read_index
from sigverify.data.prepare import held_out_writers, resolve_data_dir
from sigverify.errors import ConfigError
from sigverify.models.zoo import MODEL_ZOO
from sigverify.protocol import repeat_configs
from sigverify.settings import PRETRAIN_METHODS, ExperimentConfig, comma_list

STARTS = ("random", "simclr", "moco", "synthetic", "signatures", "imagenet")
START_NAMES = {"random": "random initialisation", "simclr": "SimCLR", "moco": "MoCo v2",
               "synthetic": "synthetic writers (triplet)", "signatures": "shipped signature weights",
               "imagenet": "ImageNet"}
POST_BEST_MAX_ACCURACY = MODEL_ZOO["small_resnet50"].reported_max_accuracy  # 0.818: Small ResNet50, ImageNet, CEDAR


def selected_starts(starts: str | None) -> list[str]:
    """The `--starts` names in order (default: every start of STARTS)."""
    return comma_list(starts, "--starts", STARTS, what="start")


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
