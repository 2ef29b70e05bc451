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


def stream_batches(n_images: int, batch_size: int, seed: int, epoch: int, steps_per_epoch: int) -> np.ndarray:
    """Epoch `epoch`'s `steps_per_epoch` batches of an endless stream of shuffled passes (pass p: the batches
    shuffled_batches draws for epoch p): epochs shorter than a pass, so that a long pass over many images still
    checkpoints often, and longer ones, with no image twice before every image once."""
    passes = shuffled_batches(n_images, batch_size, seed, 0)
    per_pass = len(passes)
    first = epoch * steps_per_epoch
    wanted = np.arange(first, first + steps_per_epoch)
    by_pass = {p: passes if p == 0 else shuffled_batches(n_images, batch_size, seed, p)
               for p in np.unique(wanted // per_pass)}
    return np.stack([by_pass[g // per_pass][g % per_pass] for g in wanted])


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


def writer_and_forgery_batches(labels: np.ndarray, n_writers: int, writers_per_batch: int, images_per_class: int,
                               seed: int, epoch: int, n_batches: int) -> np.ndarray:
    """P×K batches in which every writer brings both its classes: K genuine signatures (class w) and K skilled
    forgeries of them (class w + n_writers), so that each batch holds its anchors' hardest negatives. P = 2 ×
    `writers_per_batch` classes; n_batches × (P·K) positions, drawn from (seed, epoch)."""
    if writers_per_batch < 1 or writers_per_batch > n_writers:
        raise ConfigError(f"writer batches: {writers_per_batch} writers per batch; expected 1 to {n_writers}")
    rng = np.random.default_rng([seed, epoch, 2])
    order = np.argsort(labels, kind="stable")
    starts = np.searchsorted(labels[order], np.arange(2 * n_writers))
    counts = np.diff(np.append(starts, len(labels)))
    if counts.min() < images_per_class:
        raise ConfigError(f"writer batches: a class has {int(counts.min())} images; expected at least "
                          f"K={images_per_class} for each writer's genuine and forged classes")
    batch_classes = np.empty((n_batches, 2 * writers_per_batch), dtype=np.int64)
    for b in range(n_batches):
        chosen = rng.choice(n_writers, size=writers_per_batch, replace=False)
        batch_classes[b] = np.stack([chosen, chosen + n_writers], axis=1).reshape(-1)
    # K distinct members of each class: the first K of a random key per member, within the class's run of `order`
    offsets = np.argsort(rng.random((n_batches, batch_classes.shape[1], int(counts.max()))), axis=2)
    picks = np.empty((n_batches, batch_classes.shape[1], images_per_class), dtype=np.int64)
    for b in range(n_batches):
        for j, c in enumerate(batch_classes[b]):
            members = offsets[b, j][offsets[b, j] < counts[c]][:images_per_class]
            picks[b, j] = order[starts[c] + members]
    return picks.reshape(n_batches, -1)


def training_batches(labels: np.ndarray, settings, seed: int) -> Callable[[int], np.ndarray]:
    """epoch → batches of the sampler that `settings` (a `sigverify.settings.BatchSettings`) names: the original
    shuffled batches, or class-balanced P×K batches."""
    if settings.sampler == "pk":
        return lambda epoch: pk_batches(labels, settings.classes_per_batch, settings.images_per_class, seed, epoch)
    return lambda epoch: shuffled_batches(len(labels), settings.batch_size, seed, epoch)
