"""The JAX engine: Keras's own `fit` on PyDataset feeds of the engine's feeds (the same batches, augmentations and views
as the TensorFlow engine's tf.data), data parallelism through `keras.distribution`, and the run folder the TensorFlow
engine writes: history.csv, checkpoints that make a run resumable, tensorboard/ (where TensorFlow is installed, which
Keras writes it with), the same `TrainResult`.

Nothing here imports TensorFlow, so a machine with JAX and the keras wheel alone can train.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np

from sigverify.errors import ConfigError
from sigverify.interrupts import stop_if_interrupted, stops_between_steps
from sigverify.training.engine import (
    CHECKPOINT_DIR,
    HISTORY_FILE,
    LabelledBatches,
    NonFiniteLoss,
    PairBatches,
    TrainingEngine,
    TrainResult,
    current_learning_rate,
    read_history,
    set_precision,
    truncate_history,
)

log = logging.getLogger(__name__)

BACKUP_DIR = "last"  # checkpoints/last: BackupAndRestore's folder (weights with optimizer state, completed epochs)
BEST_WEIGHTS = Path("best") / "best.weights.h5"  # checkpoints/best: the weights of the lowest validation loss


def split_cpu(n_devices: int) -> None:
    """Expose the host CPU as n JAX devices (so data parallelism can be exercised without accelerators). Must run before
    JAX starts its backends; asking again for the count it already has is harmless."""
    import jax

    try:
        jax.config.update("jax_num_cpu_devices", n_devices)
    except RuntimeError as error:
        raise ConfigError(f"--cpu-devices {n_devices}: JAX's devices were already initialised ({error})") from None


class OneDevice:
    """Everything on one JAX device ("cpu:0", "gpu:0"), the counterpart of tf.distribute's OneDeviceStrategy. A
    one-device DataParallel would do the same, but makes JAX compile the first training steps twice."""

    def __init__(self, device: str):
        self.device = device

    def scope(self):
        import jax

        platform, index = self.device.split(":")
        return jax.default_device(jax.devices(platform)[int(index)])


def make_distribution(name: str = "auto",
                      cpu_devices: int | None = None) -> keras.distribution.DataParallel | OneDevice:
    """The keras.distribution counterpart of `sigverify.training.tf_engine.make_strategy`: auto and mirrored replicate the
    model on every accelerator (on every CPU device when there is none) and split each batch between them
    (DataParallel; OneDevice when there is one); cpu: one CPU device. multiworker is tf.distribute's (TensorFlow
    backend only)."""
    backend = keras.backend.backend()
    if backend != "jax":
        raise ConfigError(f"KERAS_BACKEND={backend}: the experiments train on the tensorflow or jax backend; expected "
                          f"one of those (the losses and models themselves run on {backend})")
    if name == "multiworker":
        raise ConfigError("--strategy multiworker: multi-worker training is tf.distribute's; expected KERAS_BACKEND="
                          "tensorflow, or --strategy auto, cpu or mirrored on JAX")
    if name not in ("auto", "cpu", "mirrored"):
        raise ConfigError(f"unknown strategy {name!r}: expected one of auto, cpu, mirrored, multiworker")
    if cpu_devices:
        split_cpu(cpu_devices)
    devices = keras.distribution.list_devices("cpu")[:1] if name == "cpu" else keras.distribution.list_devices()
    return OneDevice(devices[0]) if len(devices) == 1 else keras.distribution.DataParallel(devices=devices)


def describe_distribution(distribution: keras.distribution.DataParallel | OneDevice) -> str:
    if isinstance(distribution, OneDevice):
        return f"OneDevice over 1 device(s): {distribution.device}"
    devices = [str(device) for device in np.ravel(distribution.device_mesh.devices)]
    return f"{type(distribution).__name__} over {len(devices)} device(s): {', '.join(devices)}"


class FeedBatches(keras.utils.PyDataset):
    """The batches of a feed of `sigverify.training.engine` as `fit` reads them, the PyDataset twin of
    `sigverify.training.tf_data`: (uint8 images, int32 labels) for labelled batches (augmented when the feed says so),
    ((inputs[first], inputs[second]), same) for pairs, ((first views, second views), zeros) for views.
    `start_epoch(epoch)` draws that epoch's batches."""

    def __init__(self, feed, workers: int = 2):
        super().__init__(workers=workers, max_queue_size=4)
        self.feed = feed
        self.start_epoch(0)

    def start_epoch(self, epoch: int) -> None:
        feed = self.feed
        if isinstance(feed, PairBatches):
            self.pairs = feed.pairs_of_epoch(epoch)
            self.batches = self.pairs[0]
            return
        self.batches = feed.batches_of_epoch(epoch)
        if isinstance(feed, LabelledBatches):
            self.transform = feed.augment_of_epoch(epoch) if feed.augment_of_epoch is not None else None
        else:
            self.transform = feed.views_of_epoch(epoch)

    def labels_of(self, step: int) -> np.ndarray | None:
        return self.feed.labels[self.batches[step]] if isinstance(self.feed, LabelledBatches) else None

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, step: int):
        feed = self.feed
        if isinstance(feed, PairBatches):
            first, second, same = (column[step] for column in self.pairs)
            return (feed.inputs[first], feed.inputs[second]), same
        images = feed.images[self.batches[step]]
        if isinstance(feed, LabelledBatches):
            images = self.transform(images, step) if self.transform is not None else images
            return images, feed.labels[self.batches[step]].astype(np.int32)
        first, second = self.transform(images, step)
        return (first, second), np.zeros(len(images), np.float32)


class _EpochBatches(keras.callbacks.Callback):
    """Draws each epoch's batches before `fit` reads them (Keras calls a PyDataset's own on_epoch_end more than once
    per epoch, so the epoch number comes from here) and counts the batches that cannot teach anything."""

    def __init__(self, data: FeedBatches, batch_has_signal: Callable | None):
        super().__init__()
        self.data, self.batch_has_signal = data, batch_has_signal
        self.batches_without_signal = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.data.start_epoch(epoch)
        if self.batch_has_signal is not None:
            self.batches_without_signal += sum(not bool(self.batch_has_signal(self.data.labels_of(step)))
                                               for step in range(len(self.data)))


class _LearningRateAndFiniteLoss(keras.callbacks.Callback):
    """Puts the learning rate into each epoch's logs (before CSVLogger writes them, as the TensorFlow loop does) and
    stops with NonFiniteLoss on a NaN or infinite loss; the last good checkpoint stays in the run folder."""

    def __init__(self, optimizer, backup_dir: Path):
        super().__init__()
        self.optimizer, self.backup_dir = optimizer, backup_dir
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = float((logs or {}).get("loss", 0.0))
        if not math.isfinite(loss):
            raise NonFiniteLoss.at(self.epoch, batch, loss, completed_epochs(self.backup_dir), self.backup_dir)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = current_learning_rate(self.optimizer)


class _StopBetweenSteps(keras.callbacks.Callback):
    """Ends `fit` with `Interrupted` at the first step boundary after SIGINT or SIGTERM (`sigverify.interrupts`)."""

    def on_train_batch_end(self, batch, logs=None):
        stop_if_interrupted()


def completed_epochs(backup_dir: Path) -> int:
    """Epochs that BackupAndRestore's checkpoint holds (its training_metadata.json), 0 without one."""
    metadata = Path(backup_dir) / "training_metadata.json"
    return int(json.loads(metadata.read_text())["epoch"]) if metadata.exists() else 0


def fit_keras(model: keras.Model, loss_fn, optimizer, distribution: keras.distribution.DataParallel | OneDevice,
              run_dir: Path, train_data: FeedBatches, epochs: int, validation_data: FeedBatches | None = None, *,
              batch_has_signal: Callable | None = None, verbose: int = 1) -> TrainResult:
    """Train `model` with `model.fit` under `distribution`, continuing from the run folder's last checkpoint if it has
    one. Callbacks: progress bar, CSVLogger (history.csv), BackupAndRestore (checkpoints/last, for resume), the best
    validation weights (checkpoints/best), TensorBoard (tensorboard/) where TensorFlow is installed, and the stop at a
    step boundary after SIGINT or SIGTERM."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    checkpoints = run_dir / CHECKPOINT_DIR
    backup_dir, history_path = checkpoints / BACKUP_DIR, run_dir / HISTORY_FILE
    initial_epoch = completed_epochs(backup_dir)
    truncate_history(history_path, initial_epoch)
    if initial_epoch:
        log.info("resuming from %s after epoch %d", backup_dir, initial_epoch)

    with distribution.scope():
        # `fit` needs a compiled model and a compiled model saves its optimizer into model.keras: a second functional
        # model over the same layers is compiled instead, so model.keras is what the TensorFlow loop writes.
        trained = keras.Model(model.inputs, model.outputs, name=f"{model.name}_fit")
        trained.loss_variables = list(getattr(loss_fn, "trainable_variables", []))
        trained.compile(optimizer=optimizer, loss=loss_fn)
        epoch_batches = _EpochBatches(train_data, batch_has_signal)
        callbacks = [epoch_batches, _LearningRateAndFiniteLoss(optimizer, backup_dir), _StopBetweenSteps(),
                     keras.callbacks.CSVLogger(str(history_path), append=initial_epoch > 0),
                     keras.callbacks.BackupAndRestore(str(backup_dir), delete_checkpoint=False)]
        if importlib.util.find_spec("tensorflow") is not None:
            callbacks.append(keras.callbacks.TensorBoard(str(run_dir / "tensorboard"), write_graph=False))
        else:
            log.info("tensorboard/ not written: Keras writes it through TensorFlow, which is not installed")
        if validation_data is not None:
            previous_best = min(read_history(history_path).get("val_loss", [math.inf]), default=math.inf)
            callbacks.append(keras.callbacks.ModelCheckpoint(
                str(checkpoints / BEST_WEIGHTS), monitor="val_loss", save_best_only=True, save_weights_only=True,
                initial_value_threshold=previous_best if math.isfinite(previous_best) else None, verbose=0))
        started = time.perf_counter()
        with stops_between_steps():
            trained.fit(train_data, epochs=epochs, initial_epoch=initial_epoch, validation_data=validation_data,
                        callbacks=callbacks, verbose=verbose)
        train_seconds = time.perf_counter() - started
    if epoch_batches.batches_without_signal:
        log.warning("%d training batches had no positive pair (loss 0 for them)", epoch_batches.batches_without_signal)
    history = read_history(history_path)
    best_epoch = int(np.argmin(history["val_loss"])) + 1 if history.get("val_loss") else None
    return TrainResult(history=history, train_seconds=train_seconds, initial_epoch=initial_epoch,
                       batches_without_positives=epoch_batches.batches_without_signal, best_epoch=best_epoch)


class JaxEngine(TrainingEngine):
    """The distribution of `devices.strategy` (DataParallel over every device, or one device), the precision policy,
    and Keras's `fit`. multiworker and XLA flags are tf.distribute's and TensorFlow's: refused in one line (JAX
    compiles every step with XLA anyway)."""

    def __init__(self, devices):
        if devices.jit:
            raise ConfigError("--jit: XLA compilation is a TensorFlow setting; JAX compiles every step with XLA already: "
                              "leave it out on the jax backend")
        self.distribution = make_distribution(devices.strategy, devices.cpu_devices)
        self.precision = set_precision(devices.precision)

    def scope(self):
        return self.distribution.scope()

    def describe(self) -> str:
        return describe_distribution(self.distribution)

    @property
    def replicas(self) -> int:
        return 1 if isinstance(self.distribution, OneDevice) else int(np.size(self.distribution.device_mesh.devices))

    def fit(self, run_dir, model, loss, train, epochs, optimizer, validation=None, *, batch_has_signal=None,
            verbose=1) -> TrainResult:
        return fit_keras(model, loss, optimizer, self.distribution, run_dir, FeedBatches(train), epochs,
                         FeedBatches(validation) if validation is not None else None,
                         batch_has_signal=batch_has_signal, verbose=verbose)
