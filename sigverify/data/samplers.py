"""Which training images form each batch, decided in NumPy from (seed, epoch): the original shuffled batches and
class-balanced P×K batches. Every feed (tf.data, Keras PyDataset) uses these, so an epoch's batches are the same after
a resume and on every backend."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from sigverify.errors import ConfigError


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
    if eligible < 2:
        raise ConfigError(
            f"P×K sampler: --images-per-class {images_per_class}, but {eligible} class(es) of the training images have "
            f"that many (the largest has {int(counts.max()) if len(counts) else 0}); expected --images-per-class at most "
            f"{int(np.sort(counts)[-2]) if len(counts) > 1 else 0}, so that at least two classes can fill a batch"
        )
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


def training_batches(labels: np.ndarray, settings, seed: int) -> Callable[[int], np.ndarray]:
    """epoch → batches of the sampler that `settings` (a `sigverify.settings.BatchSettings`) names: the original
    shuffled batches, or class-balanced P×K batches."""
    if settings.sampler == "pk":
        return lambda epoch: pk_batches(labels, settings.classes_per_batch, settings.images_per_class, seed, epoch)
    return lambda epoch: shuffled_batches(len(labels), settings.batch_size, seed, epoch)
