"""Metric-learning losses as Keras 3 losses, written in keras.ops so that every backend runs them.

`TripletSemiHardLoss` and `TripletHardLoss` reproduce TensorFlow Addons' classes exactly (see SPEC.md,
"TripletSemiHardLoss, exactly"), except that a batch without a positive pair gives 0 instead of NaN
and the semi-hard search needs memory in B² rather than B³. Triplet losses are called as
`loss(y_true=labels, y_pred=embeddings)`; `ContrastiveLoss` as `loss(y_true=pair_labels, y_pred=pair_distances)`.
`QuadrupletLoss` and the margin-softmax losses (`CosFaceLoss`, `ArcFaceLoss`, `SphereFaceLoss`, which own a trainable
class-weight matrix) are called like the triplet losses. The self-supervised pretraining losses take views, not labels:
`NTXentLoss` (SimCLR) `y_pred` = two views' embeddings, `MoCoLoss` `y_pred` = (query, key, queue).
`SoftmaxLoss` is a plain writer classifier (owning W and b) on the embedding model; `PairCrossEntropyLoss` takes a
pair classifier's logits (`sigverify.models.siamese.build_pair_classifier`) and each pair's class.
"""

import inspect
import math

import keras
from keras import ops

from sigverify.distances import guarded_sqrt, l2_normalize_rows, pairwise_distances, resolve_pairwise_metric
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
    order, sorted_distances, chosen_position = _sorted_semihard_positions(distances, negative_mask)
    return order, sorted_distances, ops.take_along_axis(sorted_distances, chosen_position, axis=1)


def _sorted_semihard_positions(distances, negative_mask):
    """`sorted_semihard_negatives`, with the positions of the semi-hard negatives in the sorted rows instead."""
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
    return order, sorted_distances, chosen_position


# Up to this many positives per anchor, the semi-hard loss finds the negatives of every anchor's k-th positive in one
# pass over the B×B matrix per k, in a table of this many slots per anchor; beyond, it sorts every row once
# (`sorted_semihard_negatives`, B² log B). At B = 2048 on a 2-core CPU a pass costs under a hundredth of the sort; the
# bound keeps the table, which every batch gathers through, small.
_MAX_POSITIVE_PASSES = 32
# float32 +inf as a uint32 bit pattern. The patterns of the finite floats ≥ +0 lie below it, in the order of the values.
_INFINITY_BITS = 0x7F800000


def _float32_bits(x, dtype="uint32"):
    """The bit patterns of float32 `x` as `dtype` (uint32 or int32), same shape."""
    # Through a static last axis of 1: Keras's TensorFlow `view` refuses a tensor whose last axis has no static size.
    return ops.squeeze(ops.view(ops.expand_dims(x, -1), dtype), -1)


def _entries(matrix, rows, columns):
    """matrix[rows, columns] for int32 index tensors that broadcast together, by one gather from the flat matrix.

    Its gradient is a scatter into the flat matrix: no broadcast of a computed shape, which XLA cannot differentiate
    inside ops.cond.
    """
    return ops.take(ops.reshape(matrix, (-1,)), rows * ops.shape(matrix)[1] + columns)


def _label_groups(labels):
    """The batch grouped by label, in O(B) after one sort of the B labels.

    Returns (order, start, size, rank), int32 vectors of length B: `order` lists the batch sorted by label, and
    anchor a's label group occupies order[start[a] : start[a] + size[a]], a itself at start[a] + rank[a].
    """
    batch_size = ops.shape(labels)[0]
    order = ops.cast(ops.argsort(labels), "int32")
    sorted_labels = ops.take(labels, order)
    positions = ops.arange(batch_size, dtype="int32")
    changes = ops.not_equal(sorted_labels[1:], sorted_labels[:-1])
    first = ops.ones((1,), "bool")
    starts_group = ops.concatenate([first, changes], axis=0)
    ends_group = ops.concatenate([changes, first], axis=0)
    group = ops.cumsum(ops.cast(starts_group, "int32")) - 1

    def group_positions(flags):  # per group, the one position where `flags` holds (the others land in the spare B)
        slot = ops.expand_dims(ops.where(flags, group, batch_size), 1)
        return ops.take(ops.scatter(slot, ops.where(flags, positions, 0), (batch_size + 1,)), group)

    sorted_start = group_positions(starts_group)
    sorted_size = group_positions(ends_group) + 1 - sorted_start
    position = ops.scatter(ops.expand_dims(order, 1), positions, (batch_size,))  # where each anchor sits in `order`
    start = ops.take(sorted_start, position)
    return order, start, ops.take(sorted_size, position), position - start


def _semihard_by_positive_passes(distances, labels, groups, margin):
    """`_semihard_loss_sum` by one pass over the B×B matrix per positive slot: pass k finds, for every anchor a at
    once, the semi-hard negative of a's k-th positive p. Needs float32 distances, all finite and ≥ +0, and every
    anchor with a negative and at most _MAX_POSITIVE_PASSES positives.

    The passes read the bit patterns K of the stopped distances, with −0 at a's own label. The patterns of finite
    floats ≥ +0 are in the order of the values and, as uint32, below −0's, so K[a, n] − (K[a, p] + 1) in uint32 wraps
    around exactly for the negatives not farther than p, above the −0 entries: one argmin per row gives the nearest
    farther negative, or a −0 entry where there is none. As int32, −0 is the smallest pattern: one argmax per row gives
    a's farthest negative. The gradient reaches D through the chosen entries, gathered after the passes.
    """
    batch_size = ops.shape(distances)[0]
    order, start, size, rank = groups
    fixed = ops.stop_gradient(distances)
    anchors = ops.arange(batch_size, dtype="int32")
    slots = ops.expand_dims(ops.arange(_MAX_POSITIVE_PASSES, dtype="int32"), 1)  # against the anchors: S×B below
    has_positive = slots < size - 1
    # Slot k of anchor a: the k-th member of a's group other than a. Past a's last positive it is a itself, so that
    # the gathers at empty slots read a's row where the others do.
    member = ops.take(order, ops.minimum(start + slots + ops.cast(slots >= rank, "int32"), batch_size - 1))
    positives = ops.where(has_positive, member, anchors)

    different_label = ops.not_equal(ops.expand_dims(labels, 1), ops.expand_dims(labels, 0))
    to_negatives = ops.where(different_label, fixed, -0.0)
    keys = _float32_bits(to_negatives)
    positive_distances = _entries(fixed, anchors, positives)
    above_positive = _float32_bits(positive_distances) + 1

    def search(slot, nearest):
        farther_first = keys - ops.expand_dims(ops.take(above_positive, slot, axis=0), 1)
        return ops.slice_update(nearest, (slot, 0), ops.expand_dims(ops.argmin(farther_first, axis=1), 0))

    nearest = ops.fori_loop(0, ops.max(size) - 1, search, positives)
    not_found = ops.logical_and(has_positive, _entries(to_negatives, anchors, nearest) <= positive_distances)
    farthest = ops.cond(
        ops.any(not_found), lambda: ops.argmax(_float32_bits(to_negatives, "int32"), axis=1), lambda: anchors
    )
    negatives = ops.where(has_positive, ops.where(not_found, farthest, nearest), anchors)
    # One gather for both ends of every triplet: its gradient is then one scatter into the B×B matrix.
    chosen = _entries(distances, anchors, ops.concatenate([positives, negatives], axis=0))
    pair_losses = ops.maximum(margin + chosen[:_MAX_POSITIVE_PASSES] - chosen[_MAX_POSITIVE_PASSES:], 0.0)
    return ops.sum(ops.where(has_positive, pair_losses, 0.0))


def _semihard_by_sorting(distances, labels, margin):
    """`_semihard_loss_sum` by sorting every row once (`sorted_semihard_negatives`)."""
    same_label, positive_mask = _same_label_and_not_self(labels)
    order, _, chosen_position = _sorted_semihard_positions(ops.stop_gradient(distances), ops.logical_not(same_label))
    is_positive_pair = ops.take_along_axis(positive_mask, order, axis=1)
    anchors = ops.expand_dims(ops.arange(ops.shape(distances)[0], dtype="int32"), 1)
    negatives = ops.take_along_axis(order, chosen_position, axis=1)
    pair_losses = margin + _entries(distances, anchors, order) - _entries(distances, anchors, negatives)
    return ops.sum(ops.where(is_positive_pair, ops.maximum(pair_losses, 0.0), 0.0))


def _semihard_loss_sum(distances, labels, groups, margin, named_metric=False):
    """Sum over the positive pairs (a, p) of max(0, margin + D[a, p] − D[a, n]), n a's semi-hard negative for p.

    By one pass per positive where no anchor has more than _MAX_POSITIVE_PASSES positives; by sorting the rows where
    one has more, where an anchor has no negative, or where a distance is negative, −0, infinite or NaN (the passes
    compare bit patterns). `named_metric`: the distances come from one of the named metrics, finite and ≥ +0 for
    finite embeddings, which spares checking them.
    """
    if keras.backend.standardize_dtype(distances.dtype) != "float32":
        return _semihard_by_sorting(distances, labels, margin)
    largest_group = ops.max(groups[2])
    passes_apply = ops.logical_and(largest_group - 1 <= _MAX_POSITIVE_PASSES, largest_group < ops.shape(labels)[0])
    if not named_metric:
        ordered = ops.max(_float32_bits(ops.stop_gradient(distances))) < _INFINITY_BITS
        passes_apply = ops.logical_and(passes_apply, ordered)
    return ops.cond(
        passes_apply,
        lambda: _semihard_by_positive_passes(distances, labels, groups, margin),
        lambda: _semihard_by_sorting(distances, labels, margin),
    )


def _metric_config(distance_metric):
    if callable(distance_metric):
        return keras.saving.serialize_keras_object(distance_metric)
    return distance_metric


def _metric_from_config(distance_metric):
    if isinstance(distance_metric, dict):
        return keras.saving.deserialize_keras_object(distance_metric)
    return distance_metric


class _TripletLoss(keras.losses.Loss):
    def __init__(self, margin=1.0, distance_metric="euclidean", name=None, **kwargs):
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

    def __init__(self, margin=1.0, distance_metric="euclidean", name="triplet_semihard_loss", **kwargs):
        super().__init__(margin=margin, distance_metric=distance_metric, name=name, **kwargs)

    def call(self, y_true, y_pred):
        distances = _float32_distances(y_pred, self.distance_metric)
        labels = ops.reshape(y_true, (-1,))
        groups = _label_groups(labels)
        positive_pairs = ops.cast(ops.sum(groups[2] - 1), distances.dtype)
        loss_sum = _semihard_loss_sum(distances, labels, groups, self.margin, isinstance(self.distance_metric, str))
        return loss_sum / ops.maximum(positive_pairs, 1.0)


@keras.saving.register_keras_serializable(package="sigverify")
class TripletHardLoss(_TripletLoss):
    """tfa.losses.TripletHardLoss (batch-hard): mean over all B anchors of
    max(0, hardest positive − hardest negative + margin), or softplus(hardest positive − hardest
    negative) when `soft` (no margin then, as in tfa).

    An anchor without a positive takes its row's smallest distance (0) as hardest positive; one
    without a negative takes its row's largest distance as hardest negative.
    """

    def __init__(self, margin=1.0, soft=False, distance_metric="euclidean", name="triplet_hard_loss", **kwargs):
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
        distances = ops.cast(ops.reshape(y_pred, (-1,)), "float32")  # half-precision inputs: computed in float32
        similar = ops.cast(ops.reshape(y_true, (-1,)), "float32")
        shortfall = ops.maximum(self.margin - distances, 0.0)
        # The mean here, not in Keras's reduction: Keras divides a per-pair loss by the replicas under tf.distribute,
        # and the training loop, whose loss sees the global batch, already does (scalars pass through unscaled).
        return ops.mean(similar * ops.square(distances) + (1.0 - similar) * ops.square(shortfall))

    def get_config(self):
        config = super().get_config()
        config.update(margin=self.margin)
        return config


@keras.saving.register_keras_serializable(package="sigverify")
class PairCrossEntropyLoss(keras.losses.Loss):
    """Softmax cross-entropy of a pair classifier: y_pred = logits (N × classes, the pair classes of
    `sigverify.data.pairs.PAIR_KINDS`: genuine, skilled forgery, random forgery), y_true = each pair's class
    index (N,) or (N, 1). Mean over pairs of logsumexp(logits) − logits[class], computed in float32."""

    def __init__(self, name="pair_cross_entropy_loss", **kwargs):
        super().__init__(name=name, **kwargs)

    def call(self, y_true, y_pred):
        logits = ops.cast(y_pred, "float32")
        classes = ops.cast(ops.reshape(y_true, (-1,)), "int32")
        target = ops.one_hot(classes, ops.shape(logits)[-1], dtype="float32")
        return ops.mean(ops.logsumexp(logits, axis=1) - ops.sum(target * logits, axis=1))


@keras.saving.register_keras_serializable(package="sigverify")
class QuadrupletLoss(_TripletLoss):
    """Quadruplet loss (Chen et al. 2017, "Beyond triplet loss"), mined batch-hard inside the batch (a P×K batch).

    For each anchor a, with D the pairwise distances of `distance_metric`:
    - p*: a's farthest positive (same label, not a itself); n*: a's nearest negative (another label);
    - (n1*, n2*): the closest pair of images in the batch with two different labels, neither of them a's label.
    term 1 of a = max(0, D[a, p*] − D[a, n*] + margin), defined when a has a positive and a negative;
    term 2 of a = max(0, D[a, p*] − D[n1*, n2*] + margin2), defined when a has a positive and such a pair exists
    (at least three classes in the batch). Loss = mean of term 1 over the anchors where it is defined + mean of
    term 2 over the anchors where it is defined; a term that no anchor defines adds 0. Chen et al. take margin2
    smaller than margin (1.0 and 0.5 here by default). The closest pair avoiding a's class is found in O(B²): it is
    the batch's closest different-label pair unless that pair involves a's class, and only its two classes need
    a second search.
    """

    def __init__(self, margin=1.0, margin2=0.5, distance_metric="euclidean", name="quadruplet_loss", **kwargs):
        super().__init__(margin=margin, distance_metric=distance_metric, name=name, **kwargs)
        self.margin2 = float(margin2)

    def call(self, y_true, y_pred):
        distances = _float32_distances(y_pred, self.distance_metric)
        labels = ops.reshape(y_true, (-1,))
        same_label, positive_mask = _same_label_and_not_self(labels)
        different_label = ops.logical_not(same_label)
        has_positive = ops.any(positive_mask, axis=1)
        has_negative = ops.any(different_label, axis=1)
        hardest_positive = _masked_row_max(distances, positive_mask)
        hardest_negative = _masked_row_min(distances, different_label)

        closest_pair, has_pair = _closest_pair_avoiding_each_label(distances, labels, different_label)
        first_terms = ops.maximum(hardest_positive - hardest_negative + self.margin, 0.0)
        second_terms = ops.maximum(hardest_positive - closest_pair + self.margin2, 0.0)
        return (_mean_where(first_terms, ops.logical_and(has_positive, has_negative))
                + _mean_where(second_terms, ops.logical_and(has_positive, has_pair)))

    def get_config(self):
        config = super().get_config()
        config.update(margin2=self.margin2)
        return config


def trainable_loss_variables(loss) -> list:
    """The variables a loss trains with the model (a margin-softmax loss's class weights); [] for other losses."""
    return list(getattr(loss, "trainable_variables", None) or getattr(loss, "trainable_weights", None) or [])


def _mean_where(values, mask):
    """Mean of `values` where `mask` holds; 0 where it holds nowhere."""
    mask = ops.cast(mask, values.dtype)
    return ops.sum(values * mask) / ops.maximum(ops.sum(mask), 1.0)


def _masked_min(matrix, mask):
    """(smallest entry where `mask` holds, whether any does); the matrix's largest entry when none does."""
    return ops.min(ops.where(mask, matrix, ops.max(matrix))), ops.any(mask)


def _closest_pair_avoiding_each_label(distances, labels, different_label):
    """Per row a: the smallest D[i, j] over pairs with label(i) ≠ label(j), both ≠ label(a); and whether one exists."""
    batch_size = ops.shape(distances)[0]
    global_min, global_exists = _masked_min(distances, different_label)
    flat_position = ops.argmin(ops.reshape(ops.where(different_label, distances, ops.max(distances)), (-1,)))
    pair_labels = [ops.take(labels, flat_position // batch_size), ops.take(labels, flat_position % batch_size)]
    closest = ops.broadcast_to(global_min, ops.shape(labels))
    exists = ops.broadcast_to(global_exists, ops.shape(labels))
    for pair_label in pair_labels:  # rows of the closest pair's own classes must look further
        avoids = ops.not_equal(labels, pair_label)
        allowed = ops.logical_and(different_label, ops.logical_and(ops.expand_dims(avoids, 1), ops.expand_dims(avoids, 0)))
        label_min, label_exists = _masked_min(distances, allowed)
        row_has_label = ops.logical_not(avoids)
        closest = ops.where(row_has_label, label_min, closest)
        exists = ops.where(row_has_label, label_exists, exists)
    return closest, exists


class MarginSoftmaxLoss(keras.losses.Loss):
    """Softmax cross-entropy on scaled cosines between each embedding and a class-weight matrix that the loss owns,
    with a margin on the true class's logit (SphereFace, CosFace, ArcFace).

    The weight matrix W (embedding_dim × number of classes, a trainable `keras.Variable` in `trainable_variables`) is
    part of the loss, not of the embedding model, so the exported model is the same whichever loss trained it; a
    training loop must optimize (and checkpoint) `loss.trainable_variables` beside the model's. cos θ_j of an
    embedding f is f·W_j / (‖f‖‖W_j‖): both the rows of the embeddings and the columns of W are L2-normalized in
    the loss. Classes are the values of `class_labels` (the training labels, any integers: the one-hot targets come
    from comparing labels with them, so nothing needs remapping), or 0..n_classes−1. A row whose label is not one of
    the classes has no target: it is left out of the mean (such a batch, e.g. images of unseen writers, gives 0).
    Computed in float32 whatever the input dtype. Loss = mean over rows with a known class of
    −log softmax(logits)[y], logits_j = s·cos θ_j for j ≠ y and s·target(cos θ_y) for the true class y.
    """

    def __init__(self, embedding_dim, n_classes=None, class_labels=None, scale=64.0, margin=0.5, name=None, **kwargs):
        super().__init__(name=name, **kwargs)
        if (n_classes is None) == (class_labels is None):
            raise ConfigError(f"{type(self).__name__}: give either n_classes or class_labels (the training labels)")
        class_labels = list(range(int(n_classes))) if class_labels is None else [int(c) for c in class_labels]
        if len(class_labels) < 2 or len(set(class_labels)) != len(class_labels):
            raise ConfigError(f"{type(self).__name__}: class_labels {class_labels[:10]}...: expected at least two "
                              "distinct class labels")
        if scale <= 0:
            raise ConfigError(f"{type(self).__name__}: scale {scale}: expected s > 0")
        self.embedding_dim = int(embedding_dim)
        self.class_labels = class_labels
        self.scale = float(scale)
        self.margin = float(margin)
        self.class_weights = keras.Variable(keras.initializers.GlorotUniform(), shape=(self.embedding_dim, len(class_labels)),
                                            dtype="float32", name="class_weights")

    @property
    def trainable_variables(self) -> list:
        return [self.class_weights]

    @property
    def trainable_weights(self) -> list:
        return self.trainable_variables

    def cosines(self, embeddings):
        """cos θ (B × classes) between each embedding and each class column, in [−1, 1]."""
        unit_embeddings = l2_normalize_rows(ops.cast(embeddings, "float32"))
        unit_columns = ops.transpose(l2_normalize_rows(ops.transpose(ops.convert_to_tensor(self.class_weights))))
        return ops.clip(ops.matmul(unit_embeddings, unit_columns), -1.0, 1.0)

    def target_logit(self, cosine):
        """The true class's logit divided by s, from its cosine (the margin of each loss)."""
        raise NotImplementedError

    def is_target(self, y_true):
        """B × classes: whether each row's label is each class (a row of no class is all False)."""
        labels = ops.cast(ops.reshape(y_true, (-1, 1)), "float32")
        return ops.equal(labels, ops.convert_to_tensor([[float(c) for c in self.class_labels]], "float32"))

    def call(self, y_true, y_pred):
        cosines = self.cosines(y_pred)
        is_target = self.is_target(y_true)
        has_class = ops.any(is_target, axis=1)
        target_cosine = ops.sum(ops.where(is_target, cosines, 0.0), axis=1)
        target_logit = self.scale * self.target_logit(target_cosine)
        logits = ops.where(is_target, ops.expand_dims(target_logit, 1), self.scale * cosines)
        cross_entropy = ops.logsumexp(logits, axis=1) - target_logit
        return _mean_where(cross_entropy, has_class)

    def get_config(self):
        config = super().get_config()
        config.update(embedding_dim=self.embedding_dim, class_labels=self.class_labels, scale=self.scale,
                      margin=self.margin)
        return config


@keras.saving.register_keras_serializable(package="sigverify")
class CosFaceLoss(MarginSoftmaxLoss):
    """CosFace / Large Margin Cosine Loss (Wang et al. 2018): the true class's logit is s·(cos θ_y − m).
    Defaults s = 64, m = 0.35 as in the paper."""

    def __init__(self, embedding_dim, n_classes=None, class_labels=None, scale=64.0, margin=0.35,
                 name="cosface_loss", **kwargs):
        super().__init__(embedding_dim, n_classes, class_labels, scale=scale, margin=margin, name=name, **kwargs)

    def target_logit(self, cosine):
        return cosine - self.margin


@keras.saving.register_keras_serializable(package="sigverify")
class ArcFaceLoss(MarginSoftmaxLoss):
    """ArcFace / additive angular margin (Deng et al. 2019): the true class's logit is s·cos(θ_y + m).
    Defaults s = 64, m = 0.5 as in the paper.

    cos(θ + m) = cos θ·cos m − sin θ·sin m with sin θ = √(1 − cos²θ) (a square root with a finite gradient at 0,
    so θ = 0 and θ = π are safe; no arccos). cos(θ + m) stops decreasing once θ + m > π, so there, as in the
    authors' implementation, the logit is cos θ − m·sin m (still decreasing in θ); with `easy_margin` the margin
    applies only where cos θ > 0 and the logit is cos θ elsewhere.
    """

    def __init__(self, embedding_dim, n_classes=None, class_labels=None, scale=64.0, margin=0.5, easy_margin=False,
                 name="arcface_loss", **kwargs):
        if not 0 <= margin < math.pi:
            raise ConfigError(f"ArcFaceLoss: margin {margin}: expected an angle in [0, π) radians")
        super().__init__(embedding_dim, n_classes, class_labels, scale=scale, margin=margin, name=name, **kwargs)
        self.easy_margin = bool(easy_margin)

    def target_logit(self, cosine):
        sine = guarded_sqrt(1.0 - ops.square(cosine))
        shifted = cosine * math.cos(self.margin) - sine * math.sin(self.margin)
        if self.easy_margin:
            return ops.where(cosine > 0.0, shifted, cosine)
        return ops.where(cosine > math.cos(math.pi - self.margin), shifted, cosine - self.margin * math.sin(self.margin))

    def get_config(self):
        config = super().get_config()
        config.update(easy_margin=self.easy_margin)
        return config


@keras.saving.register_keras_serializable(package="sigverify")
class SphereFaceLoss(MarginSoftmaxLoss):
    """SphereFace / A-Softmax (Liu et al. 2017), multiplicative angular margin: the true class's logit is s·ψ(θ_y),
    ψ(θ) = (−1)^k·cos(mθ) − 2k for θ in [kπ/m, (k+1)π/m], an integer m ≥ 1 (the paper's extension of cos(mθ)
    beyond π/m, decreasing in θ). Defaults m = 4 as in the paper, s = 30.

    The paper scales by the embedding's norm ‖f‖; our embeddings are L2-normalized, so a fixed s stands in for it,
    as CosFace and ArcFace do. cos(mθ) is the Chebyshev polynomial T_m(cos θ) and k counts the thresholds
    cos(jπ/m) that cos θ is below: no arccos, so the gradient is finite at θ = 0 and θ = π. The paper's annealing
    (blending in plain softmax early in training) is not used.
    """

    def __init__(self, embedding_dim, n_classes=None, class_labels=None, scale=30.0, margin=4, name="sphereface_loss",
                 **kwargs):
        if float(margin) != int(margin) or int(margin) < 1:
            raise ConfigError(f"SphereFaceLoss: margin {margin}: expected an integer m >= 1 (the angle multiplier)")
        super().__init__(embedding_dim, n_classes, class_labels, scale=scale, margin=int(margin), name=name, **kwargs)
        self.margin = int(margin)

    def target_logit(self, cosine):
        previous, chebyshev = ops.ones_like(cosine), cosine
        for _ in range(self.margin - 1):
            previous, chebyshev = chebyshev, 2.0 * cosine * chebyshev - previous
        k = sum(ops.cast(cosine <= math.cos(j * math.pi / self.margin), "float32") for j in range(1, self.margin))
        sign = 1.0 - 2.0 * ops.mod(k, 2.0)
        return sign * chebyshev - 2.0 * k


@keras.saving.register_keras_serializable(package="sigverify")
class SoftmaxLoss(MarginSoftmaxLoss):
    """Plain softmax cross-entropy of a writer classifier on top of the embedding model: logits = f·W + b on the
    embedding f as it comes (no normalization, no scale, no margin); the classifier (W, b) is owned by the loss as in
    the margin-softmax losses, so the exported model ends at the penultimate layer, which is compared by cosine
    (the "classify identities, compare features" baseline of the reference material). Rows whose label is not a class
    are left out of the mean (e.g. forgeries when `class_labels` are only the genuine writers)."""

    def __init__(self, embedding_dim, n_classes=None, class_labels=None, name="softmax_loss", **kwargs):
        super().__init__(embedding_dim, n_classes, class_labels, scale=1.0, margin=0.0, name=name, **kwargs)
        self.class_biases = keras.Variable(keras.initializers.Zeros(), shape=(len(self.class_labels),),
                                           dtype="float32", name="class_biases")

    @property
    def trainable_variables(self) -> list:
        return [self.class_weights, self.class_biases]

    def call(self, y_true, y_pred):
        logits = ops.matmul(ops.cast(y_pred, "float32"), ops.convert_to_tensor(self.class_weights)) + self.class_biases
        is_target = self.is_target(y_true)
        cross_entropy = ops.logsumexp(logits, axis=1) - ops.sum(ops.where(is_target, logits, 0.0), axis=1)
        return _mean_where(cross_entropy, ops.any(is_target, axis=1))

    def get_config(self):
        config = super().get_config()
        config.pop("scale"), config.pop("margin")
        return config


def _float32_unit_rows(x):
    return l2_normalize_rows(ops.cast(x, "float32"))


def _positive_temperature(loss_name: str, temperature) -> float:
    if not temperature > 0:
        raise ConfigError(f"{loss_name}: temperature {temperature}: expected τ > 0")
    return float(temperature)


@keras.saving.register_keras_serializable(package="sigverify")
class NTXentLoss(keras.losses.Loss):
    """NT-Xent, the normalized temperature-scaled cross-entropy of SimCLR (Chen et al. 2020).

    `y_pred` holds two views of N images: a 2N×D tensor whose rows i and i + N are the two views of image i (the first
    views, then the second views), or a tuple (first views N×D, second views N×D). `y_true` is ignored (self-
    supervised: the pairing is the label). Rows are L2-normalized in the loss, computed in float32; s = z·zᵀ/τ.
    Loss of row i (paired with row j): −log(exp(s_ij) / Σ_{k ≠ i} exp(s_ik)), i.e. every other row of the 2N is a
    negative; the result is their mean over the 2N rows (a scalar, as the triplet losses give: Keras would divide a
    per-row result by the number of replicas under tf.distribute). Under tf.distribute the training loop gathers the
    rows of all replicas and `sigverify.pretrain.distributed` puts them in this layout, so the negatives are the global
    batch's.
    """

    def __init__(self, temperature=0.2, name="ntxent_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.temperature = _positive_temperature("NTXentLoss", temperature)

    def call(self, y_true, y_pred):
        if isinstance(y_pred, (tuple, list)):
            y_pred = ops.concatenate(list(y_pred), axis=0)
        embeddings = _float32_unit_rows(y_pred)
        n_rows = ops.shape(embeddings)[0]
        half = n_rows // 2
        logits = ops.matmul(embeddings, ops.transpose(embeddings)) / self.temperature
        row_ids = ops.arange(n_rows)
        is_self = ops.equal(ops.expand_dims(row_ids, 1), ops.expand_dims(row_ids, 0))
        partner = ops.where(row_ids < half, row_ids + half, row_ids - half)
        is_partner = ops.equal(ops.expand_dims(partner, 1), ops.expand_dims(row_ids, 0))
        # exp(−1e9) is exactly 0 in float32: the row's own similarity leaves the denominator.
        others = ops.where(is_self, -1e9, logits)
        positive = ops.sum(ops.where(is_partner, logits, 0.0), axis=1)
        return ops.mean(ops.logsumexp(others, axis=1) - positive)

    def get_config(self):
        config = super().get_config()
        config.update(temperature=self.temperature)
        return config


@keras.saving.register_keras_serializable(package="sigverify")
class MoCoLoss(keras.losses.Loss):
    """InfoNCE with a queue of negatives, the loss of MoCo (He et al. 2020; v2: Chen et al. 2020).

    `y_pred` is the tuple (query N×D, key N×D, queue K×D): query i's positive is key i (the other view of the same
    image, from the momentum encoder), its negatives are the K keys of earlier batches in the queue. `y_true` is
    ignored. Rows are L2-normalized in the loss, computed in float32. Loss of query i:
    −log(exp(q_i·k_i/τ) / (exp(q_i·k_i/τ) + Σ_j exp(q_i·queue_j/τ))), the cross-entropy of the logits [positive,
    negatives] with class 0; the result is the mean over the N queries (a scalar). No gradient flows into
    the key or the queue in MoCo; the loss does not stop it itself (the momentum encoder's outputs carry none).
    """

    def __init__(self, temperature=0.2, name="moco_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.temperature = _positive_temperature("MoCoLoss", temperature)

    def call(self, y_true, y_pred):
        if not isinstance(y_pred, (tuple, list)) or len(y_pred) != 3:
            raise ConfigError("MoCoLoss: y_pred must be the tuple (query, key, queue)")
        query, key, queue = (_float32_unit_rows(x) for x in y_pred)
        positive = ops.sum(query * key, axis=1, keepdims=True) / self.temperature
        negatives = ops.matmul(query, ops.transpose(queue)) / self.temperature
        return ops.mean(ops.logsumexp(ops.concatenate([positive, negatives], axis=1), axis=1) - positive[:, 0])

    def get_config(self):
        config = super().get_config()
        config.update(temperature=self.temperature)
        return config


LOSSES = {
    "semihard": TripletSemiHardLoss,
    "hard": TripletHardLoss,
    "contrastive": ContrastiveLoss,
    "quadruplet": QuadrupletLoss,
    "cosface": CosFaceLoss,
    "arcface": ArcFaceLoss,
    "sphereface": SphereFaceLoss,
    "softmax": SoftmaxLoss,
    "softmax-genuine": SoftmaxLoss,
    "pair-ce": PairCrossEntropyLoss,
    "ntxent": NTXentLoss,
    "moco": MoCoLoss,
}
# Losses of self-supervised pretraining (make exp-pretrain): no labels, two views of each image.
SELF_SUPERVISED_LOSSES = ("ntxent", "moco")
# Losses on verification pairs (a Siamese model), not on labelled batches.
PAIR_LOSSES = ("contrastive", "pair-ce")


def get_loss(name, **params) -> keras.losses.Loss:
    """The loss called `name` (one of LOSSES: "semihard", "hard", "contrastive", "quadruplet", "cosface", "arcface",
    "sphereface", "softmax", "softmax-genuine", "pair-ce", and the self-supervised "ntxent" and "moco"), built with
    `params`."""
    if name not in LOSSES:
        raise ConfigError(f"loss {name!r} is not known; expected one of {', '.join(LOSSES)}")
    loss_class = LOSSES[name]
    accepted = [key for key in inspect.signature(loss_class.__init__).parameters if key not in ("self", "kwargs")]
    unknown = sorted(set(params) - set(accepted) - {"reduction", "dtype"})
    if unknown:
        raise ConfigError(f"loss {name!r} does not take {', '.join(unknown)}; it takes {', '.join(accepted)}")
    return loss_class(**params)


def labelled_losses() -> list[str]:
    """The losses that train on labelled batches (triplet-style and softmax), what `--loss` may name."""
    return [name for name in LOSSES if name not in PAIR_LOSSES and name not in SELF_SUPERVISED_LOSSES]


def loss_from_settings(settings, class_labels=(0, 1), embedding_dim: int = 256, genuine_labels=None) -> keras.losses.Loss:
    """The loss `settings.loss` names (a `sigverify.settings.LossSettings`), with its settings: margin and distance
    (triplet and quadruplet losses), margin2 (quadruplet), scale and softmax margin (margin-softmax
    losses, whose classes are `class_labels`, the training labels, and whose weights have `embedding_dim` rows);
    "softmax-genuine" classifies only `genuine_labels` (the labels of genuine signatures). Called with the default
    placeholder classes it checks the settings before any work. Pair losses train on pairs: not here."""
    name = settings.loss
    if name not in LOSSES:
        raise ConfigError(f"--loss {name}: not known; expected one of {', '.join(labelled_losses())}")
    if name in SELF_SUPERVISED_LOSSES:
        raise ConfigError(f"--loss {name}: a self-supervised pretraining loss on two views of unlabelled images "
                          f"(make exp-pretrain); expected a loss on labelled batches: {', '.join(labelled_losses())}")
    if name in PAIR_LOSSES:  # trains on verification pairs (exp-contrastive, exp-losses), not on labelled batches
        raise ConfigError(f"--loss {name}: a pair loss, trained on verification pairs by make exp-losses (contrastive "
                          f"also by make exp-contrastive); expected a loss on labelled batches: "
                          f"{', '.join(labelled_losses())}")
    if issubclass(LOSSES[name], MarginSoftmaxLoss):
        if name == "softmax-genuine":
            class_labels = (0, 1) if genuine_labels is None else genuine_labels
        params = {"embedding_dim": embedding_dim, "class_labels": sorted({int(c) for c in class_labels}),
                  "scale": settings.scale, "margin": settings.softmax_margin}
        if issubclass(LOSSES[name], SoftmaxLoss):
            params.update(scale=None, margin=None)  # a plain classifier has neither
        return get_loss(name, **{key: value for key, value in params.items() if value is not None})
    params = {"margin": settings.margin, "distance_metric": settings.distance}
    if name == "quadruplet":
        params["margin2"] = settings.margin2
    return get_loss(name, **params)


def describe_loss(loss: keras.losses.Loss) -> str:
    """One line for reports: the class and its settings, e.g. `ArcFaceLoss(scale=64.0, margin=0.5, 88 classes)`."""
    config = loss.get_config()
    skipped = {"name", "reduction", "dtype", "embedding_dim", "class_labels"}
    settings = [f"{key}={value}" for key, value in config.items() if key not in skipped]
    if isinstance(loss, MarginSoftmaxLoss):
        settings.append(f"{len(loss.class_labels)} classes")
    return f"{type(loss).__name__}({', '.join(settings)})"
