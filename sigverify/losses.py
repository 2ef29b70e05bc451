"""Metric-learning losses as Keras 3 losses, written in keras.ops so that every backend runs them.

`TripletSemiHardLoss` and `TripletHardLoss` reproduce TensorFlow Addons' classes exactly (see SPEC.md,
"TripletSemiHardLoss, exactly"), except that a batch without a positive pair gives 0 instead of NaN
and the semi-hard search needs memory in B² rather than B³. Triplet losses are called as
`loss(y_true=labels, y_pred=embeddings)`; `ContrastiveLoss` as `loss(y_true=pair_labels, y_pred=pair_distances)`.
"""

import inspect

import keras
from keras import ops

from sigverify.distances import pairwise_distances, resolve_pairwise_metric
from sigverify.errors import ConfigError


def _same_label_and_not_self(labels):
    """Boolean B×B masks: same label (diagonal included), and the positive pairs (same label, a ≠ p)."""
    labels = ops.reshape(labels, (-1,))
    same_label = ops.equal(ops.expand_dims(labels, 1), ops.expand_dims(labels, 0))
    row_ids = ops.arange(ops.shape(labels)[0])
    not_self = ops.not_equal(ops.expand_dims(row_ids, 1), ops.expand_dims(row_ids, 0))
    return same_label, ops.logical_and(same_label, not_self)


def count_positive_pairs(labels):
    """Number of ordered (anchor, positive) pairs in a batch: the triplet losses' denominator.

    A batch where it is 0 gives a loss of 0 and no training signal; the training loop counts them.
    """
    _, positive_mask = _same_label_and_not_self(labels)
    return ops.sum(ops.cast(positive_mask, "int32"))


def _float32_distances(embeddings, distance_metric):
    """Pairwise distances computed in float32 at least (float16/bfloat16 lose the small gaps)."""
    embeddings = ops.convert_to_tensor(embeddings)
    if keras.backend.standardize_dtype(embeddings.dtype) in ("float16", "bfloat16"):
        embeddings = ops.cast(embeddings, "float32")
    return ops.cast(pairwise_distances(embeddings, distance_metric), embeddings.dtype)


def _masked_row_max(matrix, mask):
    """Per row, the largest entry where `mask` holds; the row's smallest entry if none does (tfa)."""
    row_min = ops.min(matrix, axis=1, keepdims=True)
    return ops.max(ops.where(mask, matrix, row_min), axis=1)


def _masked_row_min(matrix, mask):
    """Per row, the smallest entry where `mask` holds; the row's largest entry if none does (tfa)."""
    row_max = ops.max(matrix, axis=1, keepdims=True)
    return ops.min(ops.where(mask, matrix, row_max), axis=1)


def _flagged_positions(flags, positions):
    """Per row, the positions where `flags` holds, in increasing order, then B: a B×(B+1) int matrix.

    A scatter by cumulative count, O(B²); a sort would do the same slower, and keras.ops has no cumulative minimum.
    """
    batch_size = ops.shape(flags)[0]
    rank_among_flagged = ops.cumsum(ops.cast(flags, "int32"), axis=1) - 1
    column = ops.where(flags, rank_among_flagged, batch_size)  # the unflagged all land in the spare column B
    rows = ops.broadcast_to(ops.expand_dims(ops.arange(batch_size, dtype="int32"), 1), ops.shape(flags))
    indices = ops.stack([ops.reshape(rows, (-1,)), ops.reshape(column, (-1,))], axis=1)
    # Stored relative to B and added to B, so that slots nobody writes read B.
    offsets = ops.reshape(ops.where(flags, positions - batch_size, 0), (-1,))
    return ops.scatter(indices, offsets, (batch_size, batch_size + 1)) + batch_size


def sorted_semihard_negatives(distances, negative_mask):
    """Each row of `distances` sorted, and for each sorted entry the distance to its semi-hard negative.

    Returns (order, sorted_distances, negative_distances), all B×B: row a of `sorted_distances` is
    D[a, order[a]], and entry (a, r) of `negative_distances` belongs to the pair (a, order[a, r]).
    The semi-hard negative for D[a, j] is the one with the smallest D[a, n] among a's negatives with
    D[a, n] > D[a, j]; if there is none, a's farthest negative; if a has no negative at all, the
    smallest entry of row a (tfa's corner case). Instead of tfa's B×B×B comparison, each row is
    sorted once and negatives are counted with cumulative sums, so memory stays in B² (time B² log B).
    """
    batch_size = ops.shape(distances)[0]
    positions = ops.broadcast_to(ops.expand_dims(ops.arange(batch_size, dtype="int32"), 0), ops.shape(distances))

    order = ops.cast(ops.argsort(distances, axis=1), "int32")
    sorted_distances = ops.take_along_axis(distances, order, axis=1)
    sorted_is_negative = ops.take_along_axis(negative_mask, order, axis=1)

    # A negative at the same distance as j is not farther: look past the end of j's group of equal distances.
    ends_tie_group = ops.concatenate(
        [ops.not_equal(sorted_distances[:, 1:], sorted_distances[:, :-1]), ops.ones_like(positions[:, :1], "bool")],
        axis=1,
    )
    ends_as_int = ops.cast(ends_tie_group, "int32")
    tie_group = ops.cumsum(ends_as_int, axis=1) - ends_as_int
    tie_group_end = ops.take_along_axis(_flagged_positions(ends_tie_group, positions), tie_group, axis=1)
    negatives_up_to = ops.cumsum(ops.cast(sorted_is_negative, "int32"), axis=1)
    negatives_not_farther = ops.take_along_axis(negatives_up_to, tie_group_end, axis=1)
    semihard_position = ops.take_along_axis(
        _flagged_positions(sorted_is_negative, positions), negatives_not_farther, axis=1
    )

    # No farther negative: the farthest one; no negative at all: position 0, the row's smallest entry.
    farthest_negative = ops.max(ops.where(sorted_is_negative, positions, 0), axis=1, keepdims=True)
    chosen_position = ops.where(semihard_position < batch_size, semihard_position, farthest_negative)
    return order, sorted_distances, ops.take_along_axis(sorted_distances, chosen_position, axis=1)


def _metric_config(distance_metric):
    if callable(distance_metric):
        return keras.saving.serialize_keras_object(distance_metric)
    return distance_metric


def _metric_from_config(distance_metric):
    if isinstance(distance_metric, dict):
        return keras.saving.deserialize_keras_object(distance_metric)
    return distance_metric


class _TripletLoss(keras.losses.Loss):
    def __init__(self, margin=1.0, distance_metric="L2", name=None, **kwargs):
        super().__init__(name=name, **kwargs)
        self.margin = float(margin)
        self.distance_metric = _metric_from_config(distance_metric)
        resolve_pairwise_metric(self.distance_metric)  # an unknown name fails here, not at the first batch

    def get_config(self):
        config = super().get_config()
        config.update(margin=self.margin, distance_metric=_metric_config(self.distance_metric))
        return config


@keras.saving.register_keras_serializable(package="sigverify")
class TripletSemiHardLoss(_TripletLoss):
    """tfa.losses.TripletSemiHardLoss: mean over all positive pairs (a, p) of
    max(0, margin + D[a, p] − D[a, n]) with n a's semi-hard negative for p.

    Zero-loss pairs count in the mean. Labels are (B,) or (B, 1); float16/bfloat16 embeddings are
    computed in float32. A batch without a positive pair gives 0 (tfa gave NaN): count such
    batches with `count_positive_pairs`.
    """

    def __init__(self, margin=1.0, distance_metric="L2", name="triplet_semihard_loss", **kwargs):
        super().__init__(margin=margin, distance_metric=distance_metric, name=name, **kwargs)

    def call(self, y_true, y_pred):
        distances = _float32_distances(y_pred, self.distance_metric)
        same_label, positive_mask = _same_label_and_not_self(y_true)
        order, sorted_distances, negative_distances = sorted_semihard_negatives(
            distances, ops.logical_not(same_label)
        )
        pair_losses = ops.maximum(self.margin + sorted_distances - negative_distances, 0.0)
        is_positive_pair = ops.take_along_axis(positive_mask, order, axis=1)
        positive_pair_losses = ops.where(is_positive_pair, pair_losses, 0.0)
        positive_pairs = ops.sum(ops.cast(positive_mask, distances.dtype))
        return ops.sum(positive_pair_losses) / ops.maximum(positive_pairs, 1.0)


@keras.saving.register_keras_serializable(package="sigverify")
class TripletHardLoss(_TripletLoss):
    """tfa.losses.TripletHardLoss (batch-hard): mean over all B anchors of
    max(0, hardest positive − hardest negative + margin), or softplus(hardest positive − hardest
    negative) when `soft` (no margin then, as in tfa).

    An anchor without a positive takes its row's smallest distance (0) as hardest positive; one
    without a negative takes its row's largest distance as hardest negative.
    """

    def __init__(self, margin=1.0, soft=False, distance_metric="L2", name="triplet_hard_loss", **kwargs):
        super().__init__(margin=margin, distance_metric=distance_metric, name=name, **kwargs)
        self.soft = bool(soft)

    def call(self, y_true, y_pred):
        distances = _float32_distances(y_pred, self.distance_metric)
        same_label, positive_mask = _same_label_and_not_self(y_true)
        hardest_positive = _masked_row_max(distances, positive_mask)
        hardest_negative = _masked_row_min(distances, ops.logical_not(same_label))
        if self.soft:
            anchor_losses = ops.softplus(hardest_positive - hardest_negative)
        else:
            anchor_losses = ops.maximum(hardest_positive - hardest_negative + self.margin, 0.0)
        return ops.mean(anchor_losses)

    def get_config(self):
        config = super().get_config()
        config.update(soft=self.soft)
        return config


@keras.saving.register_keras_serializable(package="sigverify")
class ContrastiveLoss(keras.losses.Loss):
    """Contrastive loss on one distance per pair, y_true = 1 for a similar pair:
    mean of y·d² + (1 − y)·max(margin − d, 0)². y_true and y_pred are (N,) or (N, 1).
    """

    def __init__(self, margin=1.0, name="contrastive_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.margin = float(margin)

    def call(self, y_true, y_pred):
        distances = ops.reshape(y_pred, (-1,))
        similar = ops.cast(ops.reshape(y_true, (-1,)), distances.dtype)
        shortfall = ops.maximum(self.margin - distances, 0.0)
        return similar * ops.square(distances) + (1.0 - similar) * ops.square(shortfall)

    def get_config(self):
        config = super().get_config()
        config.update(margin=self.margin)
        return config


LOSSES = {
    "semihard": TripletSemiHardLoss,
    "hard": TripletHardLoss,
    "contrastive": ContrastiveLoss,
}


def get_loss(name, **params) -> keras.losses.Loss:
    """The loss called `name` ("semihard", "hard" or "contrastive"), built with `params`."""
    if name not in LOSSES:
        raise ConfigError(f"loss {name!r} is not known; expected one of {', '.join(LOSSES)}")
    loss_class = LOSSES[name]
    accepted = [key for key in inspect.signature(loss_class.__init__).parameters if key not in ("self", "kwargs")]
    unknown = sorted(set(params) - set(accepted) - {"reduction", "dtype"})
    if unknown:
        raise ConfigError(f"loss {name!r} does not take {', '.join(unknown)}; it takes {', '.join(accepted)}")
    return loss_class(**params)
