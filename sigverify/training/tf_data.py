"""tf.data pipelines of the TensorFlow engine: a feed of `sigverify.training.engine` (labelled batches, pair batches,
the two augmented views of pretraining) as one dataset per epoch.

Which images form each batch is decided in NumPy by the feed, so an epoch's batches are the same after a resume;
tf.data only gathers, augments (in NumPy, `sigverify.data.augment`, with draws that depend on the batch number alone)
and prefetches. Images stay uint8: every model scales its input itself.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tensorflow as tf

from sigverify.training.engine import LabelledBatches, PairBatches, ViewBatches


def _options() -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = True
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


def _batches(batches: np.ndarray, gather) -> tf.data.Dataset:
    dataset = tf.data.Dataset.from_tensor_slices((np.arange(len(batches)), batches)).map(gather, num_parallel_calls=2)
    return dataset.prefetch(2).with_options(_options())


def labelled_dataset(feed: LabelledBatches, epoch: int) -> tf.data.Dataset:
    """(uint8 images B×H×W, int32 labels B) for each batch of the epoch, augmented when the feed says so."""
    images, labels = tf.constant(feed.images), tf.constant(feed.labels.astype(np.int32))
    augment = feed.augment_of_epoch(epoch) if feed.augment_of_epoch is not None else None

    def gather(batch_number, batch):
        batch_images = tf.gather(images, batch)
        if augment is not None:
            (batch_images,) = _in_numpy(augment, batch_images, batch_number, 1)
        return batch_images, tf.gather(labels, batch)

    return _batches(feed.batches_of_epoch(epoch), gather)


def view_dataset(feed: ViewBatches, epoch: int) -> tf.data.Dataset:
    """((first views, second views), float32 zeros B) for each batch of the epoch. The views are two tensors, not one of
    2B rows, so that a batch split across replicas keeps each image's two views on the same replica."""
    images, two_views = tf.constant(feed.images), feed.views_of_epoch(epoch)

    def gather(batch_number, batch):
        first, second = _in_numpy(two_views, tf.gather(images, batch), batch_number, 2)
        return (first, second), tf.zeros(tf.shape(batch)[:1], tf.float32)

    return _batches(feed.batches_of_epoch(epoch), gather)


def pair_dataset(feed: PairBatches, epoch: int) -> tf.data.Dataset:
    """((inputs[first], inputs[second]), same) for each step of the epoch."""
    inputs = tf.constant(feed.inputs)
    first, second, same = feed.pairs_of_epoch(epoch)  # steps of equal size, the last one possibly shorter
    pairs = tf.data.Dataset.from_tensor_slices(tuple(np.concatenate(column) for column in (first, second, same)))
    dataset = pairs.batch(len(first[0])).map(lambda a, b, y: ((tf.gather(inputs, a), tf.gather(inputs, b)), y),
                                             num_parallel_calls=2)
    return dataset.prefetch(2).with_options(_options())


def dataset_of(feed, epoch: int) -> tf.data.Dataset:
    if isinstance(feed, LabelledBatches):
        return labelled_dataset(feed, epoch)
    if isinstance(feed, PairBatches):
        return pair_dataset(feed, epoch)
    return view_dataset(feed, epoch)
