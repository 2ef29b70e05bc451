"""tf.data feeds over preprocessed uint8 images: labelled image batches, pair batches and the two augmented views of
self-supervised pretraining (the TensorFlow path).

Which images form each batch is decided in NumPy from (seed, epoch) by `sigverify.data.samplers` (re-exported here), so
an epoch's batches are the same after a resume; tf.data only gathers, augments (in NumPy, `sigverify.augment`, with
draws that depend on the batch number alone), converts to backbone input and prefetches.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tensorflow as tf

from sigverify.data.samplers import pk_batches, shuffled_batches
from sigverify.preprocess import BACKBONE_INPUT_MODES, CAFFE_BGR_MEAN

__all__ = ["image_batches", "pair_batches", "pk_batches", "shuffled_batches", "view_pair_batches"]


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


def _in_numpy(function: Callable, images: tf.Tensor, batch_number: tf.Tensor, n_outputs: int) -> list[tf.Tensor]:
    """`function(uint8 images, batch number)` → n_outputs uint8 arrays of the images' shape, run in NumPy."""
    results = tf.numpy_function(lambda batch, number: function(batch, int(number)), [images, batch_number],
                                [tf.uint8] * n_outputs, stateful=False)
    return [tf.ensure_shape(result, images.shape) for result in results]


def image_batches(images: np.ndarray, labels: np.ndarray, batches: np.ndarray, backbone: str,
                  augment: Callable[[np.ndarray, int], np.ndarray] | None = None) -> tf.data.Dataset:
    """(backbone input float32 B×H×W×3, int32 labels B) for each row of `batches` (positions into images/labels).
    `augment(uint8 batch, batch number)` (e.g. `sigverify.augment.batch_augmenter(seed, epoch, strength)`) changes
    each batch's images before conversion."""
    images_tensor = tf.constant(images)
    labels_tensor = tf.constant(labels.astype(np.int32))

    def gather(batch_number, batch):
        batch_images = tf.gather(images_tensor, batch)
        if augment is not None:
            (batch_images,) = _in_numpy(augment, batch_images, batch_number, 1)
        return _to_backbone_input(batch_images, backbone), tf.gather(labels_tensor, batch)

    dataset = tf.data.Dataset.from_tensor_slices((np.arange(len(batches)), batches)).map(gather, num_parallel_calls=2)
    return dataset.prefetch(2).with_options(_options(deterministic=True))


def view_pair_batches(images: np.ndarray, batches: np.ndarray, backbone: str,
                      two_views: Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]) -> tf.data.Dataset:
    """((first views, second views) as backbone input, float32 zeros B) for each row of `batches`: the two augmented
    views of each image (`two_views(uint8 batch, batch number)`, e.g. `sigverify.augment.view_pair_augmenter`) for
    SimCLR and MoCo. The views are two tensors, not one of 2B rows, so that a batch split across replicas keeps each
    image's two views on the same replica; the zeros stand for the targets a self-supervised loss ignores."""
    images_tensor = tf.constant(images)

    def gather(batch_number, batch):
        first, second = _in_numpy(two_views, tf.gather(images_tensor, batch), batch_number, 2)
        views = (_to_backbone_input(first, backbone), _to_backbone_input(second, backbone))
        return views, tf.zeros(tf.shape(batch)[:1], tf.float32)

    dataset = tf.data.Dataset.from_tensor_slices((np.arange(len(batches)), batches)).map(gather, num_parallel_calls=2)
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
