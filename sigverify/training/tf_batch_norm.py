"""Keras 3's BatchNormalization run by TensorFlow's fused kernel (FusedBatchNormV3).

On the TensorFlow backend Keras 3 normalizes with separate ops (moments, then a multiply-add), in float32 whatever the
precision policy: under mixed_bfloat16 every batch-norm layer casts its activations up to float32 and back, and the
backward pass runs through each of those ops. TensorFlow's fused kernel takes bfloat16 activations with float32
statistics in one op, and its grappler remapper can fold it into the convolution before it at inference. Measured by
`make bench-train` (its levers table): the fused kernel is the largest single lever of the bfloat16 training step.

The layers keep their class, weights and saved form: only how this process runs them changes (the same numbers up to
float rounding; `tests/test_precision.py` checks outputs, gradients and moving statistics against Keras's own)."""

from __future__ import annotations

import types

import keras
import tensorflow as tf


def _fusable(layer: keras.layers.BatchNormalization, inputs, mask) -> bool:
    """What TensorFlow's fused kernel computes: NHWC statistics per channel, no mask, no renormalization, no
    cross-replica statistics."""
    return (mask is None and len(inputs.shape) == 4 and layer.axis in (-1, 3) and not layer.renorm
            and not getattr(layer, "synchronized", False))


def fused_call(layer: keras.layers.BatchNormalization, inputs, training=None, mask=None):
    """`BatchNormalization.call` by FusedBatchNormV3: batch statistics when training a trainable layer (and the
    moving averages updated as Keras updates them, from the biased batch variance), the moving statistics otherwise."""
    if not _fusable(layer, inputs, mask):
        return type(layer).call(layer, inputs, training=training, mask=mask)
    channels = inputs.shape[-1]
    scale = tf.cast(layer.gamma, "float32") if layer.scale else tf.ones([channels], "float32")
    offset = tf.cast(layer.beta, "float32") if layer.center else tf.zeros([channels], "float32")
    if training and layer.trainable:
        outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(inputs, scale, offset, epsilon=layer.epsilon,
                                                                   data_format="NHWC", is_training=True)
        # The kernel returns the Bessel-corrected variance; Keras's moving average takes the biased one.
        count = tf.cast(tf.reduce_prod(tf.shape(inputs)[:3]), "float32")
        biased_variance = variance * (count - 1.0) / tf.maximum(count, 1.0)
        momentum = layer.momentum
        layer.moving_mean.assign(layer.moving_mean * momentum + mean * (1.0 - momentum))
        layer.moving_variance.assign(layer.moving_variance * momentum + biased_variance * (1.0 - momentum))
    else:
        outputs, _, _ = tf.compat.v1.nn.fused_batch_norm(
            inputs, scale, offset, mean=tf.cast(layer.moving_mean, "float32"),
            variance=tf.cast(layer.moving_variance, "float32"), epsilon=layer.epsilon, data_format="NHWC",
            is_training=False)
    return tf.cast(outputs, layer.compute_dtype)


def batch_norm_layers(model: keras.Model):
    """Every BatchNormalization layer of `model`, those of the models nested in it included."""
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            yield layer
        elif isinstance(layer, keras.Model):
            yield from batch_norm_layers(layer)


def use_fused_batch_norm(model: keras.Model) -> int:
    """Run every batch-norm layer of `model` by the fused kernel from now on (in this process); returns how many. Call
    it before the model's first compiled step (a traced function keeps the ops it traced)."""
    layers = list(batch_norm_layers(model))
    for layer in layers:
        layer.call = types.MethodType(fused_call, layer)
    return len(layers)
