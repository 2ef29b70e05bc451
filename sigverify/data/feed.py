"""tf.data feeds over preprocessed uint8 images: shuffled labelled batches, class-balanced P×K batches and pair batches.

Which images form each batch is decided in NumPy from (seed, epoch), so an epoch's batches are the same after a resume;
tf.data only gathers, converts to backbone input and prefetches.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from sigverify.errors import ConfigError
from sigverify.preprocess import BACKBONE_INPUT_MODES, CAFFE_BGR_MEAN


def shuffled_batches(n_images: int, batch_size: int, seed: int, epoch: int, drop_remainder: bool = True) -> np.ndarray:
    """The original sampler: one shuffle of all training images per epoch, cut into batches (n_batches × batch_size)."""
    order = np.random.default_rng([seed, epoch]).permutation(n_images)
    n_batches = len(order) // batch_size if drop_remainder else -(-len(order) // batch_size)
    if n_batches == 0:
        raise ConfigError(f"batch size {batch_size} is larger than the {n_images} training images")
    if not drop_remainder and len(order) % batch_size:
        order = np.concatenate([order, order[: batch_size - len(order) % batch_size]])
    return order[: n_batches * batch_size].reshape(n_batches, batch_size)


def check_pk(labels: np.ndarray, classes_per_batch: int, images_per_class: int) -> None:
    if images_per_class < 2:
        raise ConfigError(f"P×K sampler: K={images_per_class} images per class; expected K >= 2 so every batch has positive pairs")
    counts = np.unique(labels, return_counts=True)[1]
    eligible = int((counts >= images_per_class).sum())
    if classes_per_batch < 2 or classes_per_batch > eligible:
        raise ConfigError(
            f"P×K sampler: P={classes_per_batch} classes per batch; expected 2 <= P <= {eligible} "
            f"(the classes with at least K={images_per_class} images)"
        )


def pk_batches(labels: np.ndarray, classes_per_batch: int, images_per_class: int, seed: int, epoch: int) -> np.ndarray:
    """Class-balanced batches: P classes × K images each, classes consecutive within a batch (so splitting a batch across
    replicas keeps whole classes together). As many batches as one pass over the images would give."""
    check_pk(labels, classes_per_batch, images_per_class)
    rng = np.random.default_rng([seed, epoch, 1])
    classes, counts = np.unique(labels, return_counts=True)
    eligible = classes[counts >= images_per_class]
    members = {c: np.flatnonzero(labels == c) for c in eligible}
    batch_size = classes_per_batch * images_per_class
    n_batches = max(1, len(labels) // batch_size)
    batches = np.empty((n_batches, batch_size), dtype=np.int64)
    for b in range(n_batches):
        chosen = rng.choice(eligible, size=classes_per_batch, replace=False)
        batches[b] = np.concatenate([rng.choice(members[c], size=images_per_class, replace=False) for c in chosen])
    return batches


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
