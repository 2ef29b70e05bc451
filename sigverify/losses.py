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


def _flat_labels(labels):
    return ops.reshape(labels, (-1,))


def _same_label_and_not_self(labels):
    """Boolean B×B masks: same label (diagonal included), and the positive pairs (same label, a ≠ p)."""
    labels = _flat_labels(labels)
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


def semihard_negative_distances(distances, negative_mask):
    """B×B matrix whose entry (a, j) is the distance from a to the semi-hard negative for D[a, j].

    That negative is the one with the smallest D[a, n] among a's negatives with D[a, n] > D[a, j];
    if there is none, a's farthest negative; if a has no negative at all, the smallest entry of
    row a (tfa's corner case). Instead of tfa's B×B×B comparison, each row is sorted once and
    the negatives are counted with cumulative sums, so memory stays in B² (time B² log B).
    Exact ties count as "not farther", which tie groups of equal sorted distances ensure.
    """
    batch_size = ops.shape(distances)[0]
    positions = ops.broadcast_to(ops.expand_dims(ops.arange(batch_size, dtype="int32"), 0), ops.shape(distances))
    past_end = ops.full_like(positions[:, :1], batch_size)

    order = ops.cast(ops.argsort(distances, axis=1), "int32")
    sorted_distances = ops.take_along_axis(distances, order, axis=1)
    sorted_is_negative = ops.take_along_axis(ops.cast(negative_mask, "int32"), order, axis=1)

    # Equal distances form a tie group; a negative in the same group as j is not farther than j.
    starts_tie_group = ops.concatenate(
        [ops.ones_like(sorted_is_negative[:, :1], dtype="bool"),
         ops.not_equal(sorted_distances[:, 1:], sorted_distances[:, :-1])],
        axis=1,
    )
    tie_group = ops.cumsum(ops.cast(starts_tie_group, "int32"), axis=1) - 1
    group_starts = ops.sort(ops.where(starts_tie_group, positions, batch_size), axis=1)
    next_group_start = ops.take_along_axis(ops.concatenate([group_starts, past_end], axis=1), tie_group + 1, axis=1)

    negatives_before = ops.concatenate(
        [ops.zeros_like(past_end), ops.cumsum(sorted_is_negative, axis=1)], axis=1
    )
    negatives_not_farther = ops.take_along_axis(negatives_before, next_group_start, axis=1)
    negative_count = negatives_before[:, -1:]

    # Sorted positions of a's negatives, nearest first; the semi-hard one follows those not farther.
    negative_positions = ops.sort(ops.where(ops.cast(sorted_is_negative, "bool"), positions, batch_size), axis=1)
    negative_rank = ops.where(
        negatives_not_farther < negative_count, negatives_not_farther, negative_count - 1
    )
    chosen_position = ops.take_along_axis(negative_positions, ops.maximum(negative_rank, 0), axis=1)
    chosen_position = ops.where(negative_count > 0, chosen_position, 0)
    sorted_choice = ops.take_along_axis(sorted_distances, chosen_position, axis=1)

    inverse_order = ops.argsort(order, axis=1)
    return ops.take_along_axis(sorted_choice, inverse_order, axis=1)


def _check_metric(distance_metric):
    resolve_pairwise_metric(distance_metric)
    return distance_metric


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
        self.distance_metric = _check_metric(_metric_from_config(distance_metric))

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
        negative_distances = semihard_negative_distances(distances, ops.logical_not(same_label))
        pair_losses = ops.maximum(self.margin + distances - negative_distances, 0.0)
        positive_pair_losses = ops.where(positive_mask, pair_losses, 0.0)
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
