"""The training-engine interface every experiment and pretraining trains through, and what the engines share.

An engine is chosen once per process for the Keras backend (`sigverify.training.make_engine`): on TensorFlow our loop on `strategy.run`
(`sigverify.training.tf_engine`, tf.distribute and tf.data), on JAX Keras's own `fit` under keras.distribution
(`sigverify.training.jax_engine`). Both take the same backend-neutral feeds (which images form each batch, decided in
NumPy from (seed, epoch) by `sigverify.data.samplers`), write the same run-folder files (history.csv, checkpoints/,
tensorboard/) and return the same `TrainResult`; a setting one of them cannot honour is refused in one line. No
TensorFlow here, so that other backends can train without loading it.
"""

from __future__ import annotations

import csv
import math
import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from sigverify.errors import SigverifyError

HISTORY_FILE = "history.csv"
CHECKPOINT_DIR = "checkpoints"


class NonFiniteLoss(SigverifyError):
    """Training produced a NaN or infinite loss; the last good checkpoint is kept."""

    @classmethod
    def at(cls, epoch: int, step: int, loss: float, completed_epochs: int, checkpoint_dir) -> NonFiniteLoss:
        """The error for batch `step` of `epoch` (both from 0), saying which checkpoint is kept, if any."""
        kept = (f"The last good checkpoint (after epoch {completed_epochs}) is kept in {checkpoint_dir}"
                if completed_epochs else "No checkpoint was written: the loss was not finite in the first epoch")
        return cls(f"epoch {epoch + 1}, batch {step + 1}: the training loss is {loss}; stopped. {kept}")


@dataclass
class TrainResult:
    history: dict[str, list[float]]
    train_seconds: float
    initial_epoch: int
    batches_without_positives: int = 0
    best_epoch: int | None = None


def learning_rate_schedule(settings, epochs: int, steps_per_epoch: int):
    """The schedule of `settings` (a `sigverify.settings.OptimizerSettings`) over `epochs` epochs.

    exponential: the post's ExponentialDecay(lr, decay_steps, decay_rate) per step (with 33 steps an epoch the rate is
    under 1e-5 by epoch 4); epoch-exponential: times decay_rate after each epoch; cosine: decays to 5% over the whole run, so every epoch still learns; constant."""
    if settings.schedule == "exponential":
        return keras.optimizers.schedules.ExponentialDecay(settings.learning_rate, settings.decay_steps, settings.decay_rate)
    if settings.schedule == "epoch-exponential":
        return keras.optimizers.schedules.ExponentialDecay(settings.learning_rate, steps_per_epoch, settings.decay_rate,
                                                           staircase=True)
    if settings.schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(settings.learning_rate, epochs * steps_per_epoch, alpha=0.05)
    return settings.learning_rate


def set_precision(policy: str) -> str:
    """Sets the Keras dtype policy of `--precision` for the process and returns it.

    float32 is the default by measurement (an AMD EPYC with AVX-512 BF16, 2 cores): with the TensorFlow engine's
    fused batch norm a mixed_bfloat16 training step runs 2.4× the float32 step of before (1.6–2.1× today's float32,
    `make bench-train`), but the quick profile, at 64² with its first stages frozen, gains only 1.1–1.4× in time
    and lost about 2 points of CEDAR skilled max accuracy over three seeds (0.680 against 0.699). On a CPU without
    native bfloat16 (no avx512_bf16 or amx_bf16 in lscpu) mixed_bfloat16 is emulated and several times slower."""
    keras.mixed_precision.set_dtype_policy(policy)
    return policy


class BackboneRateAdam(keras.optimizers.Adam):
    """Adam that moves `backbone_variables` (a pretrained start) at `backbone_rate_scale` × the learning rate and every
    other variable (the new head, a loss's class weights) at the full rate. Adam's step does not depend on the
    gradient's scale, so the rate itself is scaled, per variable, by the optimizer's own variable index (which maps a
    replica's or a backend's copy of a variable to the same slot)."""

    def __init__(self, learning_rate, backbone_variables, backbone_rate_scale: float, **kwargs):
        super().__init__(learning_rate, **kwargs)
        self.backbone_rate_scale = backbone_rate_scale
        self._backbone_keys = {self._var_key(variable) for variable in backbone_variables}
        self._rate_scales: list[float] = []

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self._rate_scales = [self.backbone_rate_scale if self._var_key(variable) in self._backbone_keys else 1.0
                             for variable in var_list]

    def update_step(self, gradient, variable, learning_rate):
        scale = self._rate_scales[self._get_variable_index(variable)]
        super().update_step(gradient, variable, learning_rate * scale if scale != 1.0 else learning_rate)


def make_optimizer(settings, epochs: int, steps_per_epoch: int, backbone_variables=()) -> keras.optimizers.Optimizer:
    """Adam with the schedule of `settings` (`sigverify.settings.OptimizerSettings`), the variables of a pretrained
    start (`backbone_variables`) at `settings.backbone_rate_scale` of its rate; loss scaling under float16."""
    schedule = learning_rate_schedule(settings, epochs, steps_per_epoch)
    if len(backbone_variables) and settings.backbone_rate_scale != 1.0:
        optimizer = BackboneRateAdam(schedule, backbone_variables, settings.backbone_rate_scale)
    else:
        optimizer = keras.optimizers.Adam(schedule)
    if keras.mixed_precision.dtype_policy().name == "mixed_float16":
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


# Feeds: what to train on, described in NumPy; each engine turns them into its own input pipeline.


@dataclass
class LabelledBatches:
    """(images B×H×W uint8, labels B int32) batches: `batches_of_epoch(epoch)` gives the positions of each batch's
    images (a sampler of `sigverify.data.samplers`); `augment_of_epoch(epoch)`, if given, returns that epoch's
    `augment(uint8 batch, batch number)` (`sigverify.data.augment.batch_augmenter`)."""

    images: np.ndarray
    labels: np.ndarray
    batches_of_epoch: Callable[[int], np.ndarray]
    augment_of_epoch: Callable[[int], Callable] | None = None

    def steps(self) -> int:
        return len(self.batches_of_epoch(0))


@dataclass
class PairBatches:
    """((inputs[first], inputs[second]), same) batches for a Siamese model: `pairs_of_epoch(epoch)` gives the rows
    (first, second, same) of each step's pairs as three equal-length arrays of n_steps × pairs_per_step. `inputs` are
    preprocessed uint8 signatures or cached backbone features."""

    inputs: np.ndarray
    pairs_of_epoch: Callable[[int], tuple[np.ndarray, np.ndarray, np.ndarray]]

    def steps(self) -> int:
        return len(self.pairs_of_epoch(0)[0])


@dataclass
class ViewBatches:
    """((first views, second views), zeros) batches for self-supervised pretraining: the two augmented views of each
    image of a batch (`views_of_epoch(epoch)` returns `two_views(uint8 batch, batch number)`,
    `sigverify.data.augment.view_pair_augmenter`). The zeros stand for the targets a self-supervised loss ignores."""

    images: np.ndarray
    batches_of_epoch: Callable[[int], np.ndarray]
    views_of_epoch: Callable[[int], Callable]

    def steps(self) -> int:
        return len(self.batches_of_epoch(0))


def pair_steps(pairs, pairs_per_step: int, seed: int, epoch: int, shuffle: bool = True, limit: int | None = None,
               target: str = "same"):
    """(first, second, target) of verification pairs (`sigverify.data.pairs` rows: a, b and the `target` column, by
    default `same`), cut into steps of `pairs_per_step` (the last step may be shorter): shuffled by (seed, epoch), or in
    order; at most `limit` pairs, drawn at random without replacement."""
    n_pairs = len(pairs)
    rng = np.random.default_rng([seed, epoch, 2 if limit is None else 3])
    if limit is not None:
        order = rng.choice(n_pairs, size=min(limit, n_pairs), replace=False)
    else:
        order = rng.permutation(n_pairs) if shuffle else np.arange(n_pairs)
    columns = [pairs[name].to_numpy()[order] for name in ("a", "b", target)]
    splits = range(pairs_per_step, len(order), pairs_per_step)
    return tuple([np.split(column, splits) for column in columns[:2]] + [np.split(columns[2].astype(np.float32), splits)])


class TrainingEngine(ABC):
    """Trains a model on a feed with checkpoints, resume, callbacks and the run folder's files. `scope()` is where
    models, losses with variables and optimizers are built; `precision` the dtype policy set for the process."""

    precision: str = "float32"

    @abstractmethod
    def scope(self): ...

    @abstractmethod
    def describe(self) -> str:
        """'<kind> over <n> replica(s): <devices>', for reports."""

    @property
    def replicas(self) -> int:
        return 1

    @property
    def is_chief(self) -> bool:
        """Whether this process writes the run folder (only the chief does under multi-worker training)."""
        return True

    @abstractmethod
    def fit(self, run_dir: Path, model: keras.Model, loss, train, epochs: int, optimizer, validation=None, *,
            batch_has_signal: Callable | None = None, verbose: int = 1) -> TrainResult:
        """Train `model` on `train` (a LabelledBatches, PairBatches or ViewBatches) for `epochs`, continuing from the
        run folder's last checkpoint if it has one; the validation loss on `validation` (a feed of the same kind) each
        epoch keeps the best checkpoint. `loss(targets, outputs)` sees the global batch; a loss that owns trainable
        variables (a margin-softmax loss's class weights) has them trained and checkpointed with the model.
        `batch_has_signal(labels)` tells whether a batch can teach anything (a triplet batch needs a positive pair):
        batches without are counted and logged."""
