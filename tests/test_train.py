"""The training loop: the loss reduction under a strategy (2 logical CPUs give the same update as one device on the
same global batch), schedules, NaN stops, signals that stop it at a step boundary, and resuming from the last checkpoint
with every epoch once in the history."""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from sigverify.interrupts import Interrupted, handling_interrupts
from sigverify.settings import OptimizerSettings, TrainSettings
from sigverify.training.engine import (
    BackboneRateAdam,
    NonFiniteLoss,
    learning_rate_schedule,
    make_optimizer,
    read_history,
)
from sigverify.training.tf_engine import Trainer

REPO = Path(__file__).resolve().parent.parent

STRATEGY_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np, keras, tensorflow as tf
    from sigverify.training.tf_engine import Trainer, make_strategy

    def mean_squared_embedding(targets, outputs):  # a per-example mean: exact to compare across replica counts
        return keras.ops.mean(keras.ops.sum(outputs ** 2, axis=-1) * (1.0 + keras.ops.cast(targets, "float32")))

    name, run_dir = sys.argv[1], sys.argv[2]
    strategy = make_strategy(name, cpu_devices=2)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 5)).astype("float32")
    y = np.arange(8) % 2
    with strategy.scope():
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3)])
        optimizer = keras.optimizers.SGD(0.1)
    trainer = Trainer(model, mean_squared_embedding, optimizer, strategy, run_dir)
    batches = lambda epoch: tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    result = trainer.fit(batches, epochs=2, steps_per_epoch=1, verbose=0)
    print(json.dumps({"replicas": strategy.num_replicas_in_sync, "loss": result.history["loss"],
                      "kernel": model.layers[0].kernel.numpy().tolist()}))
""")


def run_strategy(name, tmp_path):
    out = subprocess.run([sys.executable, "-c", STRATEGY_SCRIPT, name, str(tmp_path / name)], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_mirrored_over_two_cpus_gives_the_single_device_update(tmp_path):
    single, mirrored = run_strategy("cpu", tmp_path), run_strategy("mirrored", tmp_path)
    assert single["replicas"] == 1 and mirrored["replicas"] == 2
    np.testing.assert_allclose(mirrored["loss"], single["loss"], rtol=1e-5)
    np.testing.assert_allclose(mirrored["kernel"], single["kernel"], rtol=1e-5, atol=1e-6)


def small_trainer(run_dir, loss_fn=None, backbone_rate_scale: float = 1.0):
    """A two-layer model; with `backbone_rate_scale` below 1 its first layer is the "pretrained" one."""
    loss_fn = loss_fn or (lambda y, out: keras.ops.mean((out - keras.ops.cast(y[:, None], "float32")) ** 2))
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    with strategy.scope():
        keras.utils.set_random_seed(1)
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.Dense(2)])
        settings = OptimizerSettings(learning_rate=0.01, schedule="constant", backbone_rate_scale=backbone_rate_scale)
        optimizer = make_optimizer(settings, 4, 2, backbone_variables=model.layers[0].trainable_variables)
    return Trainer(model, loss_fn, optimizer, strategy, run_dir), model


def data(epoch):
    rng = np.random.default_rng(epoch)
    return tf.data.Dataset.from_tensor_slices((rng.normal(size=(8, 4)).astype("float32"), np.arange(8) % 2)).batch(4)


@pytest.mark.parametrize("backbone_rate_scale", [1.0, 0.1])
def test_resume_continues_after_the_last_completed_epoch(tmp_path, backbone_rate_scale):
    trainer, _ = small_trainer(tmp_path, backbone_rate_scale=backbone_rate_scale)
    assert isinstance(trainer.optimizer, BackboneRateAdam) == (backbone_rate_scale != 1.0)
    trainer.fit(data, epochs=2, steps_per_epoch=2, validation_batches=data, verbose=0)
    reference, reference_model = small_trainer(tmp_path / "reference", backbone_rate_scale=backbone_rate_scale)
    reference.fit(data, epochs=4, steps_per_epoch=2, validation_batches=data, verbose=0)

    # a new process would rebuild everything like this
    resumed, model = small_trainer(tmp_path, backbone_rate_scale=backbone_rate_scale)
    result = resumed.fit(data, epochs=4, steps_per_epoch=2, validation_batches=data, verbose=0)
    assert result.initial_epoch == 2
    history = read_history(tmp_path / "history.csv")
    assert history["epoch"] == [0, 1, 2, 3], "every epoch once"
    np.testing.assert_allclose(history["loss"], read_history(tmp_path / "reference" / "history.csv")["loss"], rtol=1e-5)
    np.testing.assert_allclose(model.layers[0].kernel.numpy(), reference_model.layers[0].kernel.numpy(), rtol=1e-5)


def test_non_finite_loss_stops_with_epoch_and_batch(tmp_path):
    trainer, _ = small_trainer(tmp_path, loss_fn=lambda y, out: keras.ops.mean(out) * np.float32("nan"))
    with pytest.raises(NonFiniteLoss, match="epoch 1, batch 1"):
        trainer.fit(data, epochs=1, steps_per_epoch=2, verbose=0)


def test_sigint_while_the_next_epoch_is_built_stops_after_that_epochs_first_step(tmp_path):
    """The signal arrives while epoch 1's dataset is built (where a raise in TensorFlow's callbacks into Python once
    crashed the process); the loop stops at the step boundary after it, epoch 0 checkpointed and in the history."""
    trainer, _ = small_trainer(tmp_path)

    def batches(epoch):
        if epoch == 1:
            os.kill(os.getpid(), signal.SIGINT)
        return data(epoch)

    with handling_interrupts(), pytest.raises(Interrupted, match="SIGINT"):
        trainer.fit(batches, epochs=50, steps_per_epoch=2, verbose=0)
    assert int(trainer.optimizer.iterations.numpy()) == 3, "epoch 0's two steps and epoch 1's first"
    assert int(trainer.completed_epochs.numpy()) == 1 and read_history(tmp_path / "history.csv")["epoch"] == [0]
    assert tf.train.latest_checkpoint(str(tmp_path / "checkpoints" / "last"))


BACKBONE_RATE_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np, keras, tensorflow as tf
    from sigverify.settings import OptimizerSettings
    from sigverify.training.engine import make_optimizer
    from sigverify.training.tf_engine import make_strategy

    strategy = make_strategy(sys.argv[1], cpu_devices=2)
    with strategy.scope():
        backbone = keras.Variable(np.zeros(3, "float32"), name="backbone")
        head = keras.Variable(np.zeros(2, "float32"), name="head")
        settings = OptimizerSettings(learning_rate=0.1, schedule="constant", backbone_rate_scale=0.25)
        optimizer = make_optimizer(settings, epochs=1, steps_per_epoch=4, backbone_variables=[backbone])
        optimizer.build([backbone, head])

    @tf.function
    def step():
        def replica_step():
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum((backbone - 1.0) ** 2) + tf.reduce_sum((head + 2.0) ** 2)
            gradients = tape.gradient(loss, [backbone, head])
            optimizer.apply_gradients(zip(gradients, [backbone, head]))
        strategy.run(replica_step)

    for _ in range(4):
        step()
    print(json.dumps({"optimizer": type(optimizer).__name__, "backbone": backbone.numpy().tolist(),
                      "head": head.numpy().tolist()}))
""")


def adam_oracle(target: float, learning_rate: float, steps: int, beta1=0.9, beta2=0.999, epsilon=1e-7) -> float:
    """Adam on (w - target)² from w = 0, one step at a time."""
    w = m = v = 0.0
    for t in range(1, steps + 1):
        gradient = 2 * (w - target)
        m, v = beta1 * m + (1 - beta1) * gradient, beta2 * v + (1 - beta2) * gradient ** 2
        w -= learning_rate * np.sqrt(1 - beta2 ** t) / (1 - beta1 ** t) * m / (np.sqrt(v) + epsilon)
    return w


@pytest.mark.parametrize("strategy", ["cpu", "mirrored"])
def test_backbone_rate_scale_moves_pretrained_variables_at_a_fraction_of_the_rate(strategy):
    """--backbone-rate-scale 0.25: the pretrained variables take Adam's steps at 0.25 × the rate, the others at the
    full rate, on one device and where each replica holds its own copy of the variables (mirrored: the summed gradient
    is twice one replica's, which Adam's step does not see)."""
    out = subprocess.run([sys.executable, "-c", BACKBONE_RATE_SCRIPT, strategy], cwd=REPO, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["optimizer"] == "BackboneRateAdam"
    np.testing.assert_allclose(result["backbone"], [adam_oracle(1.0, 0.025, 4)] * 3, rtol=1e-5)
    np.testing.assert_allclose(result["head"], [adam_oracle(-2.0, 0.1, 4)] * 2, rtol=1e-5)
    assert type(make_optimizer(OptimizerSettings(backbone_rate_scale=0.25), 1, 4)).__name__ == "Adam"  # nothing given


def test_schedules():
    exponential = learning_rate_schedule(OptimizerSettings(), TrainSettings().epochs, steps_per_epoch=33)
    assert float(exponential(4 * 33)) < 1e-5, "the post's decay stops learning by epoch 4"
    cosine = learning_rate_schedule(OptimizerSettings(schedule="cosine"), epochs=10, steps_per_epoch=10)
    assert float(cosine(50)) > 4e-4 and float(cosine(100)) == pytest.approx(5e-5)
    constant = make_optimizer(OptimizerSettings(schedule="constant"), TrainSettings().epochs, 10)
    assert constant.learning_rate.numpy() == pytest.approx(1e-3)
