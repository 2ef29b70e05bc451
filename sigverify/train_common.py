"""What every training engine shares (the TensorFlow loop in `sigverify.train`, Keras `fit` in
`sigverify.train_keras`): the optimizer and its schedule, the history file, the result record and the stop on a
non-finite loss. No TensorFlow here, so that other backends can train without loading it."""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path

import keras

from sigverify.config import TrainSettings
from sigverify.errors import SigverifyError

HISTORY_FILE = "history.csv"
CHECKPOINT_DIR = "checkpoints"


class NonFiniteLoss(SigverifyError):
    """Training produced a NaN or infinite loss; the last good checkpoint is kept."""


@dataclass
class TrainResult:
    history: dict[str, list[float]]
    train_seconds: float
    initial_epoch: int
    batches_without_positives: int = 0
    best_epoch: int | None = None


def learning_rate_schedule(settings: TrainSettings, steps_per_epoch: int):
    """exponential: the post's ExponentialDecay(lr, decay_steps, decay_rate) per step (with 33 steps an epoch the rate is
    under 1e-5 by epoch 4); epoch-exponential: times decay_rate after each epoch; cosine: decays to 5% over the whole run, so every epoch still learns; constant."""
    if settings.schedule == "exponential":
        return keras.optimizers.schedules.ExponentialDecay(settings.learning_rate, settings.decay_steps, settings.decay_rate)
    if settings.schedule == "epoch-exponential":
        return keras.optimizers.schedules.ExponentialDecay(settings.learning_rate, steps_per_epoch, settings.decay_rate,
                                                           staircase=True)
    if settings.schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(settings.learning_rate, settings.epochs * steps_per_epoch, alpha=0.05)
    return settings.learning_rate


def make_optimizer(settings: TrainSettings, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    optimizer = keras.optimizers.Adam(learning_rate_schedule(settings, steps_per_epoch))
    if settings.mixed_precision and keras.mixed_precision.dtype_policy().name == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def current_learning_rate(optimizer) -> float:
    rate = optimizer.learning_rate
    return float(keras.ops.convert_to_numpy(rate))


def truncate_history(path: Path, completed_epochs: int) -> None:
    """On resume keep exactly the epochs the checkpoint holds, so the finished history has every epoch once."""
    if not path.exists():
        return
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    if not rows:
        return
    kept = [rows[0]] + [row for row in rows[1:] if row and int(row[0]) < completed_epochs]
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "w", newline="") as handle:
        csv.writer(handle).writerows(kept)
    os.replace(temporary, path)


def read_history(path: Path) -> dict[str, list[float]]:
    if not Path(path).exists():
        return {}
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    columns = {key: [math.nan if row[key] in ("", "NA") else float(row[key]) for row in rows]
               for key in (rows[0].keys() if rows else [])}
    # CSVLogger adds empty val_* columns when a run has no validation: drop them.
    return {key: values for key, values in columns.items() if not all(math.isnan(v) for v in values)}
