"""Reference implementations for the distance and loss tests: plain NumPy loops written from SPEC.md,
the naive B×B×B tiled TripletSemiHardLoss of TensorFlow Addons in keras.ops, and backend-specific
gradient and graph-inspection helpers (the only place the tests touch TensorFlow or JAX directly).
"""

import itertools
import math

import keras
import numpy as np
import pytest
from keras import ops

from sigverify.distances import pairwise_distances


def pairwise_distances_oracle(embeddings, metric):
    """B×B distances by a loop over row pairs, in float64, straight from each metric's definition."""
    embeddings = np.asarray(embeddings, dtype=np.float64)
    batch_size = len(embeddings)
    distances = np.zeros((batch_size, batch_size))
    for i, j in itertools.product(range(batch_size), repeat=2):
        if i == j:
            continue
        if metric == "euclidean":
            distances[i, j] = math.sqrt(np.sum((embeddings[i] - embeddings[j]) ** 2))
        elif metric == "squared-euclidean":
            distances[i, j] = np.sum((embeddings[i] - embeddings[j]) ** 2)
        elif metric == "cosine":
            norms = max(np.linalg.norm(embeddings[i]) * np.linalg.norm(embeddings[j]), 1e-12)
            distances[i, j] = max(1.0 - embeddings[i] @ embeddings[j] / norms, 0.0)
        else:
            raise ValueError(metric)
    return distances


def semihard_loss_oracle(distances, labels, margin):
    """TripletSemiHardLoss by a loop over (a, p, n), as SPEC.md defines it; 0 without a positive pair."""
    labels = np.asarray(labels).reshape(-1)
    batch_size = len(labels)
    pair_losses = []
    for anchor, positive in itertools.product(range(batch_size), repeat=2):
        if anchor == positive or labels[anchor] != labels[positive]:
            continue
        negatives = [distances[anchor, n] for n in range(batch_size) if labels[n] != labels[anchor]]
        farther = [d for d in negatives if d > distances[anchor, positive]]
        if farther:
            negative_distance = min(farther)
        elif negatives:
            negative_distance = max(negatives)
        else:
            negative_distance = min(distances[anchor])
        pair_losses.append(max(0.0, margin + distances[anchor, positive] - negative_distance))
    return float(np.mean(pair_losses)) if pair_losses else 0.0


def hard_loss_oracle(distances, labels, margin, soft):
    """TripletHardLoss by a loop over anchors, as SPEC.md defines it."""
    labels = np.asarray(labels).reshape(-1)
    batch_size = len(labels)
    anchor_losses = []
    for anchor in range(batch_size):
        positives = [distances[anchor, j] for j in range(batch_size) if j != anchor and labels[j] == labels[anchor]]
        negatives = [distances[anchor, n] for n in range(batch_size) if labels[n] != labels[anchor]]
        hardest_positive = max(positives) if positives else min(distances[anchor])
        hardest_negative = min(negatives) if negatives else max(distances[anchor])
        if soft:
            anchor_losses.append(math.log1p(math.exp(hardest_positive - hardest_negative)))
        else:
            anchor_losses.append(max(0.0, hardest_positive - hardest_negative + margin))
    return float(np.mean(anchor_losses))


def contrastive_loss_oracle(pair_distances, similar, margin):
    """Contrastive loss by a loop over pairs, as SPEC.md defines it."""
    pair_losses = [
        d**2 if y == 1 else max(margin - d, 0.0) ** 2
        for d, y in zip(np.ravel(pair_distances).astype(np.float64), np.ravel(similar))
    ]
    return float(np.mean(pair_losses))


def naive_tiled_semihard_loss(labels, embeddings, margin=1.0, distance_metric="euclidean"):
    """tfa's triplet_semihard_loss, transcribed op by op into keras.ops: it tiles a B²×B tensor."""
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


def value_and_gradient(function, x):
    """(function(x), d function / dx) as NumPy, through the active backend's autodiff."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        x = tf.convert_to_tensor(x)
        with tf.GradientTape() as tape:
            tape.watch(x)
            value = function(x)
        return ops.convert_to_numpy(value), ops.convert_to_numpy(tape.gradient(value, x))
    if backend == "jax":
        import jax

        value, gradient = jax.value_and_grad(function)(jax.numpy.asarray(x))
        return ops.convert_to_numpy(value), ops.convert_to_numpy(gradient)
    pytest.skip(f"no gradient helper for the {backend} backend")


def compiled_results(function, x, y):
    """function(x, y) run compiled: on TensorFlow as a graph with an unknown batch size, with and
    without XLA; on JAX under jit."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        signature = [tf.TensorSpec([None, *x.shape[1:]], x.dtype), tf.TensorSpec([None, *y.shape[1:]], y.dtype)]
        return [
            ops.convert_to_numpy(tf.function(function, input_signature=signature, jit_compile=xla)(x, y))
            for xla in (False, True)
        ]
    if backend == "jax":
        import jax

        return [ops.convert_to_numpy(jax.jit(function)(x, y))]
    pytest.skip(f"no compilation helper for the {backend} backend")


def largest_intermediate_size(function, x, y):
    """Element count of the largest tensor built by function(x, y) and its gradient in x, as traced."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        @tf.function
        def value_and_gradient_graph(x, y):
            with tf.GradientTape() as tape:
                tape.watch(x)
                value = function(x, y)
            return value, tape.gradient(value, x)

        graph = value_and_gradient_graph.get_concrete_function(
            tf.TensorSpec(x.shape, x.dtype), tf.TensorSpec(y.shape, y.dtype)
        ).graph
        return max(
            output.shape.num_elements()
            for operation in graph.get_operations()
            for output in operation.outputs
            if output.shape.is_fully_defined()
        )
    if backend == "jax":
        import jax

        def sizes(jaxpr):
            for equation in jaxpr.eqns:
                yield from (math.prod(variable.aval.shape) for variable in equation.outvars)
                for parameter in equation.params.values():
                    for inner in parameter if isinstance(parameter, (tuple, list)) else [parameter]:
                        inner = getattr(inner, "jaxpr", inner)
                        if hasattr(inner, "eqns"):
                            yield from sizes(inner)

        closed = jax.make_jaxpr(jax.value_and_grad(function))(jax.numpy.asarray(x), jax.numpy.asarray(y))
        return max(sizes(closed.jaxpr))
    pytest.skip(f"no graph inspection for the {backend} backend")
