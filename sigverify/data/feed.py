"""tf.data feeds over preprocessed uint8 images: labelled image batches and pair batches (the TensorFlow path).

Which images form each batch is decided in NumPy from (seed, epoch) by `sigverify.data.samplers` (re-exported here), so
an epoch's batches are the same after a resume; tf.data only gathers, converts to backbone input and prefetches.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from sigverify.data.samplers import pk_batches, shuffled_batches
from sigverify.preprocess import BACKBONE_INPUT_MODES, CAFFE_BGR_MEAN

__all__ = ["image_batches", "pair_batches", "pk_batches", "shuffled_batches"]


def _to_backbone_input(images: tf.Tensor, backbone: str) -> tf.Tensor:
    """Same numbers as `sigverify.preprocess.to_backbone_input`, in graph ops."""
    grey = tf.cast(images, tf.float32)[..., None]
    rgb = tf.repeat(grey, 3, axis=-1)
    if BACKBONE_INPUT_MODES[backbone] == "caffe":
        return rgb - tf.constant(CAFFE_BGR_MEAN)
    return rgb / 255.0


def _options(deterministic: bool) -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = deterministic
    # A finished iterator otherwise waits for the autotune thread when torn down (up to an epoch's time, measured here).
    options.autotune.enabled = False
    # Every element is a whole global batch gathered from in-memory arrays (no files to shard): under tf.distribute each
    # batch is split into one slice per replica and each worker keeps its own slices, so workers see different images.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return options


def image_batches(images: np.ndarray, labels: np.ndarray, batches: np.ndarray, backbone: str) -> tf.data.Dataset:
    """(backbone input float32 B×H×W×3, int32 labels B) for each row of `batches` (positions into images/labels)."""
    images_tensor = tf.constant(images)
    labels_tensor = tf.constant(labels.astype(np.int32))

    def gather(batch):
        return _to_backbone_input(tf.gather(images_tensor, batch), backbone), tf.gather(labels_tensor, batch)

    dataset = tf.data.Dataset.from_tensor_slices(batches).map(gather, num_parallel_calls=2)
    return dataset.prefetch(2).with_options(_options(deterministic=True))


def pair_batches(inputs: np.ndarray, pairs_a: np.ndarray, pairs_b: np.ndarray, same: np.ndarray, batch_size: int,
                 seed: int, epoch: int, backbone: str | None = None, shuffle: bool = True) -> tf.data.Dataset:
    """((inputs[a], inputs[b]), same) batches for a Siamese model. `inputs` are cached backbone features (used as they
    are) or preprocessed uint8 images (converted to `backbone` input)."""
    order = np.random.default_rng([seed, epoch, 2]).permutation(len(same)) if shuffle else np.arange(len(same))
    inputs_tensor = tf.constant(inputs)

    def gather(positions):
        batch = tf.gather(inputs_tensor, positions)
        return batch if backbone is None else _to_backbone_input(batch, backbone)

    dataset = tf.data.Dataset.from_tensor_slices((pairs_a[order], pairs_b[order], same[order].astype(np.float32)))
    dataset = dataset.batch(batch_size).map(lambda a, b, y: ((gather(a), gather(b)), y), num_parallel_calls=2)
    return dataset.prefetch(2).with_options(_options(deterministic=True))
