"""Training on the JAX backend with Keras's own `fit`: a PyDataset feed over the preprocessed images drawn by the same
samplers as the tf.data feed, data parallelism through `keras.distribution`, and the run folder the TensorFlow loop
(`sigverify.train`) writes: history.csv, checkpoints that make a run resumable, the same `TrainResult`.

Nothing here imports TensorFlow, so a machine with JAX and the keras wheel alone can train.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np

from sigverify.errors import ConfigError
from sigverify.preprocess import to_backbone_input
from sigverify.train_common import (
    CHECKPOINT_DIR,
    HISTORY_FILE,
    NonFiniteLoss,
    TrainResult,
    current_learning_rate,
    read_history,
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
    """The keras.distribution counterpart of `sigverify.distribute.make_strategy`: auto and mirrored replicate the
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


def set_precision(mixed: bool) -> str:
    """float32, or mixed precision: float16 compute on a GPU, bfloat16 otherwise (losses and the L2 normalization stay
    float32), as `sigverify.distribute.set_precision` picks it. Returns the policy name."""
    if not mixed:
        policy = "float32"
    else:
        policy = "mixed_float16" if keras.distribution.list_devices()[0].startswith("gpu") else "mixed_bfloat16"
    keras.mixed_precision.set_dtype_policy(policy)
    return policy


class LabelledImageBatches(keras.utils.PyDataset):
    """(backbone input float32 B×H×W×3, int32 labels B) batches of preprocessed uint8 images, the PyDataset twin of
    `sigverify.data.feed.image_batches`. `batches_of_epoch(epoch)` gives the positions of each batch's images (a
    sampler of `sigverify.data.samplers`); `start_epoch(epoch)` draws that epoch's batches."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, backbone: str,
                 batches_of_epoch: Callable[[int], np.ndarray], workers: int = 2):
        super().__init__(workers=workers, max_queue_size=4)
        self.images, self.labels, self.backbone = images, labels.astype(np.int32), backbone
        self.batches_of_epoch = batches_of_epoch
        self.start_epoch(0)

    def start_epoch(self, epoch: int) -> None:
        self.batches = self.batches_of_epoch(epoch)

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int):
        positions = self.batches[index]
        return to_backbone_input(self.images[positions], self.backbone), self.labels[positions]


class _EpochBatches(keras.callbacks.Callback):
    """Draws each epoch's batches before `fit` reads them (Keras calls a PyDataset's own on_epoch_end more than once
    per epoch, so the epoch number comes from here) and counts the batches that cannot teach anything."""

    def __init__(self, data: LabelledImageBatches, batch_has_signal: Callable | None):
        super().__init__()
        self.data, self.batch_has_signal = data, batch_has_signal
        self.batches_without_signal = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.data.start_epoch(epoch)
        if self.batch_has_signal is not None:
            self.batches_without_signal += sum(not bool(self.batch_has_signal(self.data.labels[positions]))
                                               for positions in self.data.batches)


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
            raise NonFiniteLoss(f"epoch {self.epoch + 1}, batch {batch + 1}: the training loss is {loss}; stopped. The "
                                f"last good checkpoint (after epoch {completed_epochs(self.backup_dir)}) is kept in "
                                f"{self.backup_dir}")

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = current_learning_rate(self.optimizer)


def completed_epochs(backup_dir: Path) -> int:
    """Epochs that BackupAndRestore's checkpoint holds (its training_metadata.json), 0 without one."""
    metadata = Path(backup_dir) / "training_metadata.json"
    return int(json.loads(metadata.read_text())["epoch"]) if metadata.exists() else 0


def fit_keras(model: keras.Model, loss_fn, optimizer, distribution: keras.distribution.DataParallel | OneDevice,
              run_dir: Path, train_data: LabelledImageBatches, epochs: int,
              validation_data: keras.utils.PyDataset | None = None, *, batch_has_signal: Callable | None = None,
              verbose: int = 1) -> TrainResult:
    """Train `model` with `model.fit` under `distribution`, continuing from the run folder's last checkpoint if it has
    one. `loss_fn(labels, embeddings)` is any of our losses; a loss that owns variables (a margin-softmax loss's class
    weights) has them trained and checkpointed with the model. Callbacks: progress bar, CSVLogger (history.csv),
    BackupAndRestore (checkpoints/last, for resume), the best validation weights (checkpoints/best); TensorBoard is the
    TensorFlow loop's only (Keras writes it through TensorFlow)."""
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
        callbacks = [epoch_batches, _LearningRateAndFiniteLoss(optimizer, backup_dir),
                     keras.callbacks.CSVLogger(str(history_path), append=initial_epoch > 0),
                     keras.callbacks.BackupAndRestore(str(backup_dir), delete_checkpoint=False)]
        if validation_data is not None:
            previous_best = min(read_history(history_path).get("val_loss", [math.inf]), default=math.inf)
            callbacks.append(keras.callbacks.ModelCheckpoint(
                str(checkpoints / BEST_WEIGHTS), monitor="val_loss", save_best_only=True, save_weights_only=True,
                initial_value_threshold=previous_best if math.isfinite(previous_best) else None, verbose=0))
        started = time.perf_counter()
        trained.fit(train_data, epochs=epochs, initial_epoch=initial_epoch, validation_data=validation_data,
                    callbacks=callbacks, verbose=verbose)
        train_seconds = time.perf_counter() - started
    if epoch_batches.batches_without_signal:
        log.warning("%d training batches had no positive pair (loss 0 for them)", epoch_batches.batches_without_signal)
    history = read_history(history_path)
    best_epoch = int(np.argmin(history["val_loss"])) + 1 if history.get("val_loss") else None
    return TrainResult(history=history, train_seconds=train_seconds, initial_epoch=initial_epoch,
                       batches_without_positives=epoch_batches.batches_without_signal, best_epoch=best_epoch)
