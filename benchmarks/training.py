"""Training-step measurements shared by bench-train, bench-pipeline and bench-synthetic: images per second of one
triplet training step (the same step as `sigverify.training.tf_engine.Trainer` runs per replica: forward,
TripletSemiHardLoss, backward, Adam, with the engine's fused batch norm) and of the embedding at inference, the FLOPs of
a model counted from its layer shapes (`sigverify.bench_gpu.forward_flops`, the GPU benchmark's count), and
TensorFlow's own matrix-multiply peak on this machine."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from common import fastest_and_cpu_seconds

from sigverify.bench_gpu import forward_flops as forward_flops_per_image  # noqa: F401  (bench-train counts with it)
from sigverify.losses import TripletSemiHardLoss
from sigverify.models.embedding import build_embedding_model
from sigverify.training.tf_batch_norm import use_fused_batch_norm

TRAINING_PASSES = 3  # forward, then backward through the activations and through the weights: each costs one forward


def matmul_gflops(size: int = 4096, dtype: str = "float32") -> tuple[float, float]:
    """TensorFlow's tf.matmul on two size×size matrices (2·size³ FLOPs a product): GFLOP per second of the fastest of a
    few products, and GFLOP per CPU-second of this process."""
    rng = np.random.default_rng(0)
    a = tf.cast(tf.constant(rng.normal(size=(size, size)).astype(np.float32)), dtype)
    b = tf.cast(tf.constant(rng.normal(size=(size, size)).astype(np.float32)), dtype)
    product = tf.function(lambda: tf.reduce_sum(tf.cast(tf.matmul(a, b)[:1, :1], tf.float32)))
    product()
    wall, cpu = fastest_and_cpu_seconds(lambda: product().numpy(), repeats=5)
    return 2 * size**3 / wall / 1e9, 2 * size**3 / cpu / 1e9


def triplet_model(cut_layer: str, image_size: int, fused_batch_norm: bool = True) -> keras.Model:
    """The triplet experiment's embedding model, its batch norm run as the TensorFlow engine runs it (fused) unless
    `fused_batch_norm` is False (Keras's own ops: bench-train's levers)."""
    model = build_embedding_model("resnet50", cut_layer, image_size, weights=None)
    if fused_batch_norm:
        use_fused_batch_norm(model)
    return model


def make_train_step(model: keras.Model, loss_fn=None):
    """A compiled training step, (uint8 images, labels) → loss: the step `sigverify.training.tf_engine.Trainer` runs
    on each replica (`loss_fn` None: the semi-hard triplet loss)."""
    loss_fn = loss_fn or TripletSemiHardLoss()
    optimizer = keras.optimizers.Adam(1e-4)
    optimizer.build(model.trainable_variables)

    @tf.function
    def train_step(images, labels):
        with tf.GradientTape() as tape:
            loss = tf.cast(loss_fn(labels, model(images, training=True)), tf.float32)
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        return loss

    return train_step


def random_signatures(model: keras.Model, batch_size: int) -> tf.Tensor:
    height, width = model.input_shape[1:3]
    return tf.constant(np.random.default_rng(0).integers(0, 256, size=(batch_size, height, width), dtype=np.uint8))


def train_step_images_per_second(model: keras.Model, batch_size: int, steps: int, images_per_class: int = 4,
                                 loss_fn=None) -> tuple[float, float]:
    """Compiled training steps on one random batch of uint8 signatures B×H×W (the models scale their input
    themselves), after a warm-up step that traces: images per second of the fastest of `steps` steps, and images per
    CPU-second of this process."""
    images = random_signatures(model, batch_size)
    labels = tf.constant(np.repeat(np.arange(batch_size // images_per_class), images_per_class).astype(np.int32))
    train_step = make_train_step(model, loss_fn)
    train_step(images, labels).numpy()
    wall, cpu = fastest_and_cpu_seconds(lambda: train_step(images, labels).numpy(), repeats=steps)
    return batch_size / wall, batch_size / cpu


def inference_images_per_second(model: keras.Model, batch_size: int, repeats: int) -> tuple[float, float]:
    """Embeddings of one random batch as evaluation and verification compute them (`predict_on_batch`, inference
    mode), after a warm-up call: images per second of the fastest of `repeats` calls, and per CPU-second."""
    images = random_signatures(model, batch_size)
    model.predict_on_batch(images)
    wall, cpu = fastest_and_cpu_seconds(lambda: model.predict_on_batch(images), repeats=repeats)
    return batch_size / wall, batch_size / cpu


def with_precision(policy: str, function, *args):
    """`function(*args)` under a Keras dtype policy, restoring float32 afterwards."""
    keras.mixed_precision.set_dtype_policy(policy)
    try:
        return function(*args)
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
