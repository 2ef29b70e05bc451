"""Training precision: the fused batch norm of the TensorFlow engine against Keras's own, the `--precision` setting,
and a bfloat16 smoke run against the float32 one."""

import csv

import keras
import numpy as np
import pytest
import tensorflow as tf
import yaml

from sigverify.errors import ConfigError
from sigverify.settings import config_from_dict, validate
from sigverify.training.tf_batch_norm import use_fused_batch_norm
from tests.conftest import run_experiment_script


def _conv_bn_model(momentum=0.9, center=True, scale=True, trainable=True):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(5, 3)(inputs)
    norm = keras.layers.BatchNormalization(momentum=momentum, center=center, scale=scale)
    norm.trainable = trainable
    x = keras.layers.ReLU()(norm(x))
    return keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x)), norm


def _one_step(fused: bool, **options):
    """Outputs in training and inference mode, the gradients of a squared-sum loss, and the moving statistics after the
    training call, of the same model run by Keras's batch norm or by the fused kernel."""
    model, norm = _conv_bn_model(**options)
    if fused:
        assert use_fused_batch_norm(model) == 1
    # Moving statistics away from their start, so that inference mode reads something other than (0, 1).
    norm.moving_mean.assign(np.linspace(-0.5, 0.5, 5).astype(np.float32))
    norm.moving_variance.assign(np.linspace(0.5, 2.0, 5).astype(np.float32))
    images = np.random.default_rng(1).normal(size=(6, 8, 8, 3)).astype(np.float32)
    with tf.GradientTape() as tape:
        outputs = model(images, training=True)
        loss = tf.reduce_sum(outputs * outputs)
    gradients = [g.numpy() for g in tape.gradient(loss, model.trainable_variables)]
    return (outputs.numpy(), gradients, norm.moving_mean.numpy(), norm.moving_variance.numpy(),
            model(images, training=False).numpy())


@pytest.mark.parametrize("options", [{}, {"center": False, "scale": False}, {"trainable": False}],
                         ids=["default", "no-center-no-scale", "frozen"])
def test_fused_batch_norm_matches_keras(options):
    keras_result, fused_result = _one_step(False, **options), _one_step(True, **options)
    names = ("training outputs", "gradients", "moving mean", "moving variance", "inference outputs")
    for name, expected, got in zip(names, keras_result, fused_result):
        for e, g in zip(expected, got) if name == "gradients" else [(expected, got)]:
            np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-5, err_msg=name)
    if options.get("trainable") is False:  # a frozen layer normalizes by its moving statistics and keeps them
        np.testing.assert_allclose(fused_result[2], np.linspace(-0.5, 0.5, 5), atol=1e-7)


def test_fused_batch_norm_keeps_the_saved_model(tmp_path):
    inner, _ = _conv_bn_model()
    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, keras.layers.Dense(2)(inner(inputs)))  # a backbone nested as the embedding models nest it
    assert use_fused_batch_norm(model) == 1
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras", safe_mode=True)
    images = np.random.default_rng(2).normal(size=(2, 8, 8, 3)).astype(np.float32)
    assert type(loaded.layers[1].layers[2]) is keras.layers.BatchNormalization
    np.testing.assert_allclose(loaded(images).numpy(), model(images).numpy(), atol=1e-6)


def test_precision_setting_is_checked_and_old_runs_read():
    config = config_from_dict({"experiment": "triplet", "devices": {"precision": "half"}})
    with pytest.raises(ConfigError, match=r"--precision half: expected one of float32, mixed_bfloat16, mixed_float16"):
        validate(config)
    # A run written before --precision had the switch `mixed_precision` (under devices, or earlier under train).
    assert config_from_dict({"experiment": "triplet", "devices": {"mixed_precision": True}}).devices.precision == "mixed_bfloat16"
    assert config_from_dict({"experiment": "triplet", "train": {"mixed_precision": False}}).devices.precision == "float32"


def _training_losses(run_dir):
    with open(run_dir / "history.csv") as history:
        return [float(row["loss"]) for row in csv.DictReader(history)]


def test_bfloat16_smoke_run_trains_as_float32(triplet_smoke_run, tiny_dataset, tmp_path):
    """The smoke profile in mixed_bfloat16 against the same run in float32 (the default precision): same data,
    batches and initial weights, so the training losses differ only by bfloat16 rounding. Its 8-bit mantissa rounds
    each activation by up to 2⁻⁹ (0.2 %); through the ~30 layers of the smoke model that leaves the embedding within about
    1–2 % and the first epoch's mean loss (about 0.8 with margin 1) within about 0.01: measured 0.008 on the first
    epoch and 0.004 on the second. The bounds, 0.05 and 0.1 (the second epoch has trained on different updates),
    leave room for other CPUs' kernels and still fail a run whose bfloat16 step is wrong (a loss off by the margin, a
    step that does not train, a NaN)."""
    _, float32_run, _ = triplet_smoke_run
    result = run_experiment_script("triplet.py", "--profile", "smoke", "--data", tiny_dataset, "--runs",
                                   tmp_path / "runs", "--precision", "mixed_bfloat16", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    bfloat16_run = (tmp_path / "runs" / "triplet" / "latest").resolve()
    float32_losses, bfloat16_losses = _training_losses(float32_run), _training_losses(bfloat16_run)
    assert len(float32_losses) == len(bfloat16_losses) == 2
    assert abs(bfloat16_losses[0] - float32_losses[0]) < 0.05, (bfloat16_losses, float32_losses)
    assert abs(bfloat16_losses[1] - float32_losses[1]) < 0.1, (bfloat16_losses, float32_losses)
    assert bfloat16_losses[1] < bfloat16_losses[0]
    config = yaml.safe_load((bfloat16_run / "config.yaml").read_text())
    assert config["devices"]["precision"] == "mixed_bfloat16"
    assert yaml.safe_load((float32_run / "config.yaml").read_text())["devices"]["precision"] == "float32"
    assert "precision mixed_bfloat16" in (bfloat16_run / "report.md").read_text()
