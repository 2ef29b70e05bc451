"""The TensorFlow engine: device placement through tf.distribute, and one training loop on `strategy.run` for every
strategy (Keras 3's `fit` breaks under MultiWorkerMirroredStrategy), driven like `fit` through Keras callbacks, with
checkpoints that make a run resumable. The interface and what both engines share: `sigverify.training.engine`.

Every replica computes the loss on the whole global batch (the replicas' outputs and targets are all-gathered), so a
triplet loss mines among all B images as it does on one device, not among a replica's B/R; the all-gather's gradient
hands each replica the part of its own outputs, the Keras optimizer all-reduces (sums) the gradients, and each
replica's loss is divided by the number of replicas: the update is the single-device one.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from sigverify.errors import ConfigError
from sigverify.interrupts import stop_if_interrupted, stops_between_steps
from sigverify.losses import trainable_loss_variables
from sigverify.training.engine import (
    CHECKPOINT_DIR,
    HISTORY_FILE,
    NonFiniteLoss,
    TrainingEngine,
    TrainResult,
    ViewBatches,
    current_learning_rate,
    read_history,
    set_precision,
    truncate_history,
)
from sigverify.training.tf_batch_norm import use_fused_batch_norm
from sigverify.training.tf_data import dataset_of

log = logging.getLogger(__name__)


class _TensorBoard(keras.callbacks.TensorBoard):
    """Keras's TensorBoard reads the learning rate from `model.optimizer`, which only `compile` sets (and a compiled
    model would carry the optimizer state into model.keras); the loop puts the learning rate in the logs itself."""

    def _collect_learning_rate(self, logs):
        return logs


class Trainer:
    """Trains `model` on the batches of `train_batches(epoch)`, a tf.data dataset of (inputs, targets) per epoch.

    `loss_fn(targets, outputs)` gives the mean loss of a replica's batch. A loss that owns trainable variables (the
    class weights of a margin-softmax loss) has them optimized and checkpointed with the model's.
    `batch_has_signal(targets)` (optional) tells whether a batch can teach anything (a triplet batch needs a positive
    pair): batches without are counted and logged.
    """

    def __init__(self, model, loss_fn, optimizer, strategy, run_dir: Path, *, write_files: bool = True,
                 batch_has_signal: Callable | None = None, jit: bool = False):
        self.model, self.loss_fn, self.optimizer, self.strategy = model, loss_fn, optimizer, strategy
        self.run_dir = Path(run_dir)
        self.write_files = write_files
        if write_files:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self.batch_has_signal = batch_has_signal
        loss_variables = trainable_loss_variables(loss_fn)
        self.trainable_variables = model.trainable_variables + loss_variables
        with strategy.scope():
            self.optimizer.build(self.trainable_variables)
            self.completed_epochs = tf.Variable(0, dtype=tf.int64, trainable=False)
            self.best_val_loss = tf.Variable(np.inf, dtype=tf.float32, trainable=False)
        self.checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, completed_epochs=self.completed_epochs,
                                              best_val_loss=self.best_val_loss,
                                              **({"loss_variables": loss_variables} if loss_variables else {}))
        checkpoint_dir = self.run_dir / CHECKPOINT_DIR
        if not write_files:  # multi-worker: every worker must save, only the chief's copy is kept
            self._worker_checkpoints = tempfile.TemporaryDirectory(prefix="sigverify-worker-ckpt-")  # removed with self
            checkpoint_dir = Path(self._worker_checkpoints.name)
        self.last = tf.train.CheckpointManager(self.checkpoint, str(checkpoint_dir / "last"), max_to_keep=1)
        self.best = tf.train.CheckpointManager(self.checkpoint, str(checkpoint_dir / "best"), max_to_keep=1)
        self._train_step = tf.function(self._distributed_train_step, jit_compile=jit or None)
        self._eval_step = tf.function(self._distributed_eval_step, jit_compile=jit or None)

    def restore(self) -> int:
        """Continue from the last completed epoch if the run folder has a checkpoint; returns that epoch count. A
        non-chief worker also resumes from its run folder's checkpoint, though it saves its own elsewhere."""
        latest = tf.train.latest_checkpoint(str(self.run_dir / CHECKPOINT_DIR / "last"))
        if latest:
            self.checkpoint.restore(latest).assert_existing_objects_matched()
            log.info("resumed from %s after epoch %d", latest, int(self.completed_epochs.numpy()))
        return int(self.completed_epochs.numpy())

    def _global_batch(self, targets, outputs):
        """The targets and outputs of every replica (in replica order), as the loss must see them."""
        if self.strategy.num_replicas_in_sync == 1:
            return targets, outputs
        context = tf.distribute.get_replica_context()
        # One all-gather per dtype; tf.identity because a tf.function input carries no device, and
        # MultiWorkerMirroredStrategy's all-gather needs one.
        return tuple(context.all_gather(tf.identity(tensor), axis=0) for tensor in (targets, outputs))

    def _replica_train_step(self, inputs, targets):
        with tf.GradientTape() as tape:
            targets, outputs = self._global_batch(targets, self.model(inputs, training=True))
            loss = tf.cast(self.loss_fn(targets, outputs), tf.float32)
            regularization = tf.add_n(self.model.losses) if self.model.losses else 0.0
            scaled = (loss + regularization) / self.strategy.num_replicas_in_sync
            scaled = self.optimizer.scale_loss(scaled)
        gradients = tape.gradient(scaled, self.trainable_variables)
        self.optimizer.apply_gradients(zip(gradients, self.trainable_variables))
        empty = tf.constant(0.0) if self.batch_has_signal is None else 1.0 - tf.cast(self.batch_has_signal(targets), tf.float32)
        return loss, empty

    def _distributed_train_step(self, inputs, targets):
        loss, empty = self.strategy.run(self._replica_train_step, args=(inputs, targets))
        mean_loss = self.strategy.reduce(tf.distribute.ReduceOp.MEAN, loss, axis=None)
        return mean_loss, self.strategy.reduce(tf.distribute.ReduceOp.MEAN, empty, axis=None)  # same on every replica

    def _replica_eval_step(self, inputs, targets):
        targets, outputs = self._global_batch(targets, self.model(inputs, training=False))
        return tf.cast(self.loss_fn(targets, outputs), tf.float32)

    def _distributed_eval_step(self, inputs, targets):
        loss = self.strategy.run(self._replica_eval_step, args=(inputs, targets))
        return self.strategy.reduce(tf.distribute.ReduceOp.MEAN, loss, axis=None)

    def evaluate_loss(self, dataset) -> float:
        losses = [float(self._eval_step(inputs, targets)) for inputs, targets in
                  self.strategy.experimental_distribute_dataset(dataset)]
        return float(np.mean(losses)) if losses else math.nan

    def fit(self, train_batches: Callable[[int], tf.data.Dataset], epochs: int, steps_per_epoch: int,
            validation_batches: Callable[[int], tf.data.Dataset] | None = None, verbose: int = 1) -> TrainResult:
        initial_epoch = self.restore()
        history_path = self.run_dir / HISTORY_FILE
        callbacks = []
        if self.write_files:
            truncate_history(history_path, initial_epoch)
            callbacks = [keras.callbacks.CSVLogger(str(history_path), append=initial_epoch > 0),
                         _TensorBoard(str(self.run_dir / "tensorboard"), write_graph=False)]
        callback_list = keras.callbacks.CallbackList(callbacks, add_history=True, add_progbar=verbose > 0,
                                                     model=self.model, verbose=verbose, epochs=epochs,
                                                     steps=steps_per_epoch)
        started = time.perf_counter()
        batches_without_positives = 0
        callback_list.on_train_begin()
        with stops_between_steps():
            for epoch in range(initial_epoch, epochs):
                callback_list.on_epoch_begin(epoch)
                losses = []
                dataset = self.strategy.experimental_distribute_dataset(train_batches(epoch))
                for step, (inputs, targets) in enumerate(dataset):
                    callback_list.on_train_batch_begin(step)
                    loss, empty = self._train_step(inputs, targets)
                    loss = float(loss)
                    if not math.isfinite(loss):
                        raise NonFiniteLoss.at(epoch, step, loss, int(self.completed_epochs.numpy()), self.last.directory)
                    batches_without_positives += int(float(empty))
                    losses.append(loss)
                    callback_list.on_train_batch_end(step, {"loss": loss})
                    stop_if_interrupted()
                logs = {"loss": float(np.mean(losses)), "learning_rate": current_learning_rate(self.optimizer)}
                if validation_batches is not None:
                    logs["val_loss"] = self.evaluate_loss(validation_batches(epoch))
                self.completed_epochs.assign(epoch + 1)
                if validation_batches is not None and logs["val_loss"] < float(self.best_val_loss.numpy()):
                    self.best_val_loss.assign(logs["val_loss"])
                    self.best.save()
                self.last.save()
                callback_list.on_epoch_end(epoch, logs)
        callback_list.on_train_end()
        if batches_without_positives:
            log.warning("%d training batches had no positive pair (loss 0 for them)", batches_without_positives)
        history = read_history(history_path) if self.write_files else {}
        best_epoch = None
        if history.get("val_loss"):
            best_epoch = int(np.argmin(history["val_loss"])) + 1
        return TrainResult(history=history, train_seconds=time.perf_counter() - started, initial_epoch=initial_epoch,
                           batches_without_positives=batches_without_positives, best_epoch=best_epoch)


# Device placement


def split_cpu(n_devices: int) -> None:
    """Expose the CPU as n logical devices (so MirroredStrategy can be exercised without GPUs). Must run before TF
    initialises its devices; calling it again with the same count is harmless."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    current = tf.config.get_logical_device_configuration(cpu)
    if current is not None and len(current) == n_devices:
        return
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * n_devices)
    except RuntimeError as error:
        raise ConfigError(f"--cpu-devices {n_devices}: TensorFlow's devices were already initialised ({error})") from None


def make_strategy(name: str = "auto", cpu_devices: int | None = None) -> tf.distribute.Strategy:
    """auto: Mirrored over all GPUs when there are several, the one GPU, or the CPU; cpu: the CPU even with GPUs;
    mirrored: all GPUs, else all logical CPUs; multiworker: MultiWorkerMirroredStrategy from TF_CONFIG."""
    if name == "multiworker":
        if "TF_CONFIG" not in os.environ:
            raise ConfigError("--strategy multiworker: TF_CONFIG is not set; expected a cluster spec with this task's index")
        json.loads(os.environ["TF_CONFIG"])
        if cpu_devices:
            split_cpu(cpu_devices)
        return tf.distribute.MultiWorkerMirroredStrategy()
    if cpu_devices:
        split_cpu(cpu_devices)
    gpus = tf.config.list_logical_devices("GPU")
    cpus = tf.config.list_logical_devices("CPU")
    if name == "cpu":
        return tf.distribute.OneDeviceStrategy(cpus[0].name)
    if name == "mirrored":
        devices = [d.name for d in (gpus or cpus)]
        return tf.distribute.MirroredStrategy(devices)
    if name == "auto":
        if len(gpus) > 1:
            return tf.distribute.MirroredStrategy([d.name for d in gpus])
        return tf.distribute.OneDeviceStrategy((gpus or cpus)[0].name)
    raise ConfigError(f"unknown strategy {name!r}: expected one of auto, cpu, mirrored, multiworker")


def describe_strategy(strategy: tf.distribute.Strategy) -> str:
    devices = getattr(strategy.extended, "worker_devices", None) or []
    return f"{type(strategy).__name__} over {strategy.num_replicas_in_sync} replica(s): {', '.join(devices)}"


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Only the chief writes the run folder under multi-worker training."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    return task_type == "chief" or (task_type == "worker" and task_id == 0 and "chief" not in resolver.cluster_spec().as_dict())


class CrossReplicaViews:
    """SimCLR under tf.distribute: the negatives of every replica, with each image's two views still paired.

    The loop all-gathers every replica's outputs before the loss, so the loss sees the global batch. A replica's
    SimCLR output is its first views then its second views; gathered, that is one such block per replica. NTXentLoss
    pairs row i with row i + N, so the blocks are reordered here into every replica's first views, then every
    replica's second views."""

    def __init__(self, loss):
        self.loss = loss

    def __call__(self, targets, views):
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        if replicas == 1:
            return self.loss(targets, views)
        dim = tf.shape(views)[-1]
        blocks = tf.reshape(views, [replicas, 2, -1, dim])  # replica, view, image, feature
        return self.loss(targets, tf.reshape(tf.transpose(blocks, [1, 0, 2, 3]), [-1, dim]))


class TensorFlowEngine(TrainingEngine):
    """The strategy of `devices.strategy` (before TensorFlow starts its devices), the precision policy, XLA on request,
    and `Trainer` as the loop."""

    def __init__(self, devices):
        self.strategy = make_strategy(devices.strategy, devices.cpu_devices)
        self.precision = set_precision(devices.precision)
        self.jit = devices.jit

    def scope(self):
        return self.strategy.scope()

    def describe(self) -> str:
        return describe_strategy(self.strategy)

    @property
    def replicas(self) -> int:
        return self.strategy.num_replicas_in_sync

    @property
    def is_chief(self) -> bool:
        return is_chief(self.strategy)

    def fit(self, run_dir, model, loss, train, epochs, optimizer, validation=None, *, batch_has_signal=None,
            verbose=1) -> TrainResult:
        loss_fn = CrossReplicaViews(loss) if isinstance(train, ViewBatches) else loss
        use_fused_batch_norm(model)
        trainer = Trainer(model, loss_fn, optimizer, self.strategy, run_dir, write_files=self.is_chief,
                          batch_has_signal=batch_has_signal, jit=self.jit)
        return trainer.fit(lambda epoch: dataset_of(train, epoch), epochs, train.steps(),
                           validation_batches=(lambda epoch: dataset_of(validation, epoch)) if validation is not None else None,
                           verbose=verbose)
