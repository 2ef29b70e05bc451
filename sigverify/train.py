"""The TensorFlow training loop: one loop on `strategy.run` for every tf.distribute strategy (Keras 3's `fit` breaks
under MultiWorkerMirroredStrategy), driven like `fit` through Keras callbacks, with checkpoints that make a run
resumable. On JAX, Keras's own `fit` trains (`sigverify.train_keras`); what both share is in `sigverify.train_common`.

Every replica computes the loss on the whole global batch (the replicas' outputs and targets are all-gathered), so a
triplet loss mines among all B images as it does on one device, not among a replica's B/R; the all-gather's gradient
hands each replica the part of its own outputs, the Keras optimizer all-reduces (sums) the gradients, and each
replica's loss is divided by the number of replicas: the update is the single-device one.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from sigverify.losses import trainable_loss_variables
from sigverify.train_common import (
    CHECKPOINT_DIR,
    HISTORY_FILE,
    NonFiniteLoss,
    TrainResult,
    current_learning_rate,
    learning_rate_schedule,
    make_optimizer,
    read_history,
    truncate_history,
)

__all__ = ["NonFiniteLoss", "TrainResult", "Trainer", "learning_rate_schedule", "make_optimizer", "read_history"]

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
        for epoch in range(initial_epoch, epochs):
            callback_list.on_epoch_begin(epoch)
            losses = []
            dataset = self.strategy.experimental_distribute_dataset(train_batches(epoch))
            for step, (inputs, targets) in enumerate(dataset):
                callback_list.on_train_batch_begin(step)
                loss, empty = self._train_step(inputs, targets)
                loss = float(loss)
                if not math.isfinite(loss):
                    raise NonFiniteLoss(
                        f"epoch {epoch + 1}, batch {step + 1}: the training loss is {loss}; stopped. The last good "
                        f"checkpoint (after epoch {int(self.completed_epochs.numpy())}) is kept in {self.last.directory}"
                    )
                batches_without_positives += int(float(empty))
                losses.append(loss)
                callback_list.on_train_batch_end(step, {"loss": loss})
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
