"""The original's TripletSemiHardLoss formulation, for comparison only: TensorFlow Addons' `triplet_semihard_loss`
transcribed op by op into keras.ops. It tiles the B×B distance matrix B times (B³ elements), which is what
`sigverify.losses.TripletSemiHardLoss` avoids. A copy of the reference in tests/metric_oracles.py; not in the package."""

from keras import ops

from sigverify.distances import pairwise_distances


def naive_tiled_semihard_loss(labels, embeddings, margin=1.0, distance_metric="L2"):
    labels = ops.reshape(labels, (-1, 1))
    embeddings = ops.cast(embeddings, "float32")
    pdist_matrix = pairwise_distances(embeddings, distance_metric)
    adjacency = ops.equal(labels, ops.transpose(labels))
    adjacency_not = ops.logical_not(adjacency)
    batch_size = ops.shape(labels)[0]
    pdist_matrix_tile = ops.tile(pdist_matrix, [batch_size, 1])
    mask = ops.logical_and(
        ops.tile(adjacency_not, [batch_size, 1]),
        ops.greater(pdist_matrix_tile, ops.reshape(ops.transpose(pdist_matrix), [-1, 1])),
    )
    mask_final = ops.reshape(
        ops.greater(ops.sum(ops.cast(mask, "float32"), 1, keepdims=True), 0.0), [batch_size, batch_size]
    )
    mask_final = ops.transpose(mask_final)
    adjacency_not = ops.cast(adjacency_not, "float32")
    mask = ops.cast(mask, "float32")

    def masked_minimum(data, data_mask):
        axis_maximums = ops.max(data, 1, keepdims=True)
        return ops.min((data - axis_maximums) * data_mask, 1, keepdims=True) + axis_maximums

    def masked_maximum(data, data_mask):
        axis_minimums = ops.min(data, 1, keepdims=True)
        return ops.max((data - axis_minimums) * data_mask, 1, keepdims=True) + axis_minimums

    negatives_outside = ops.reshape(masked_minimum(pdist_matrix_tile, mask), [batch_size, batch_size])
    negatives_outside = ops.transpose(negatives_outside)
    negatives_inside = ops.tile(masked_maximum(pdist_matrix, adjacency_not), [1, batch_size])
    semi_hard_negatives = ops.where(mask_final, negatives_outside, negatives_inside)
    loss_mat = margin + pdist_matrix - semi_hard_negatives
    mask_positives = ops.cast(adjacency, "float32") - ops.eye(batch_size, dtype="float32")
    num_positives = ops.sum(mask_positives)
    return ops.sum(ops.maximum(loss_mat * mask_positives, 0.0)) / num_positives
