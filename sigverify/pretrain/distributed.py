"""The TensorFlow edge of SimCLR under tf.distribute: the negatives of every replica, with each image's two views
still paired.

The training loop (`sigverify.train.Trainer`) all-gathers every replica's outputs before the loss (with
`tf.distribute.get_replica_context().all_gather`, whose gradient hands each replica the part of its own outputs), so
the loss sees the global batch. A replica's SimCLR output is its first views then its second views; gathered, that is
one such block per replica. NTXentLoss pairs row i with row i + N, so the blocks are reordered here into every
replica's first views, then every replica's second views.
"""

from __future__ import annotations

import tensorflow as tf


class CrossReplicaViews:
    """`loss(targets, views)` for the training loop: `views` are the replicas' blocks [first views; second views] in
    replica order (one block on one replica), given to the loss as [all first views; all second views]."""

    def __init__(self, loss):
        self.loss = loss

    def __call__(self, targets, views):
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        if replicas == 1:
            return self.loss(targets, views)
        dim = tf.shape(views)[-1]
        blocks = tf.reshape(views, [replicas, 2, -1, dim])  # replica, view, image, feature
        return self.loss(targets, tf.reshape(tf.transpose(blocks, [1, 0, 2, 3]), [-1, dim]))
