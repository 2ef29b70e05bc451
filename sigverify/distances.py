"""Distances between embeddings, the one place that losses, evaluation and plots take them from, with one vocabulary:
"euclidean", "squared-euclidean" and "cosine" (1 − cosine similarity).

Training losses use `pairwise_distances` (every row against every row, TensorFlow Addons semantics: its "L2",
"squared-L2" and "angular" are our three names); evaluation uses `paired_distances` (row i of one array against row i
of another); `scoring_distance` says which of them scores a run's verification pairs. A pair classifier's run scores by
a learned distance instead (`sigverify.models.siamese.PairClassifierScore`), which the evaluation functions accept
wherever they take a metric name.
"""

from collections.abc import Callable

import keras
import numpy as np
from keras import ops

from sigverify.errors import ConfigError

METRICS = ("euclidean", "squared-euclidean", "cosine")

# tfa.losses.metric_learning.pairwise_distance adds this to exact zeros before the square root.
_SQRT_GUARD = 1e-16
# tf.math.l2_normalize's default floor on the squared norm.
_NORMALIZE_EPSILON = 1e-12


def guarded_sqrt(squared):
    """Square root of non-negative values with a finite gradient everywhere.

    Negative values (rounding error) become 0; where the value is 0, the output is exactly 0 and
    the gradient is 0 instead of infinite.
    """
    squared = ops.maximum(squared, 0.0)
    is_zero = ops.cast(ops.less_equal(squared, 0.0), squared.dtype)
    return ops.sqrt(squared + is_zero * _SQRT_GUARD) * (1.0 - is_zero)


def l2_normalize_rows(x):
    """Rows scaled to unit L2 norm, as tf.math.l2_normalize(x, axis=1) does (all-zero rows stay 0)."""
    squared_norms = ops.sum(ops.square(x), axis=1, keepdims=True)
    return x * ops.rsqrt(ops.maximum(squared_norms, _NORMALIZE_EPSILON))


def _zero_diagonal(matrix):
    batch_size = ops.shape(matrix)[0]
    row_ids = ops.arange(batch_size)
    off_diagonal = ops.not_equal(ops.expand_dims(row_ids, 1), ops.expand_dims(row_ids, 0))
    return matrix * ops.cast(off_diagonal, matrix.dtype)


def _squared_euclidean_matrix(embeddings):
    squared_norms = ops.sum(ops.square(embeddings), axis=1)
    gram = ops.matmul(embeddings, ops.transpose(embeddings))
    squared = ops.expand_dims(squared_norms, 1) + ops.expand_dims(squared_norms, 0) - 2.0 * gram
    return ops.maximum(squared, 0.0)


def _euclidean_matrix(embeddings):
    return _zero_diagonal(guarded_sqrt(_squared_euclidean_matrix(embeddings)))


def _squared_euclidean_matrix_zero_diagonal(embeddings):
    return _zero_diagonal(_squared_euclidean_matrix(embeddings))


def _angular_matrix(embeddings):
    unit_rows = l2_normalize_rows(embeddings)
    cosine_similarity = ops.matmul(unit_rows, ops.transpose(unit_rows))
    return _zero_diagonal(ops.maximum(1.0 - cosine_similarity, 0.0))


_PAIRWISE_FUNCTIONS = {
    "euclidean": _euclidean_matrix,
    "squared-euclidean": _squared_euclidean_matrix_zero_diagonal,
    "cosine": _angular_matrix,
}


def resolve_pairwise_metric(metric) -> Callable:
    """The function (embeddings B×D → distances B×B) for a metric name, or the callable itself."""
    if callable(metric):
        return metric
    if metric not in _PAIRWISE_FUNCTIONS:
        raise ConfigError(
            f"distance {metric!r} is not known; expected one of {', '.join(METRICS)} "
            "or a callable that returns the B×B distance matrix"
        )
    return _PAIRWISE_FUNCTIONS[metric]


def pairwise_distances(embeddings, metric="euclidean"):
    """B×B distances between all rows of `embeddings` (B×D), with an exact 0 diagonal.

    "euclidean" (tfa's "L2") is the Euclidean distance (not squared) with the square root guarded at 0 so that
    coinciding embeddings have a finite gradient; "squared-euclidean" the same without the root;
    "cosine" (tfa's "angular") is 1 − cosine similarity, clipped at 0. A callable gets the embeddings and returns
    the matrix itself. Computed from the Gram matrix, as TensorFlow Addons does.
    """
    return resolve_pairwise_metric(metric)(embeddings)


def paired_distances(a, b, metric="cosine"):
    """One distance per row pair: `metric(a[i], b[i])` for N×D arrays or tensors `a` and `b`.

    "cosine" is 1 − cosine similarity (a zero row counts as similarity 0), "euclidean" has the same
    guarded square root as `pairwise_distances`, so it can also sit inside a Siamese model.
    """
    if metric not in METRICS:
        raise ConfigError(f"distance {metric!r} is not known; expected one of {', '.join(METRICS)}")
    a = ops.convert_to_tensor(a)
    b = ops.convert_to_tensor(b)
    if metric == "cosine":
        return 1.0 - ops.sum(l2_normalize_rows(a) * l2_normalize_rows(b), axis=1)
    squared = ops.sum(ops.square(a - b), axis=1)
    if metric == "squared-euclidean":
        return squared
    return guarded_sqrt(squared)


def paired_distances_numpy(a, b, metric="cosine") -> np.ndarray:
    """`paired_distances` returned as a float64 NumPy vector, for evaluation code. `metric` may also be a learned pair
    score (`sigverify.models.siamese.PairClassifierScore`: a callable of two embedding arrays with a `name`)."""
    if not isinstance(metric, str):
        return np.asarray(metric(a, b), dtype=np.float64)
    distances = paired_distances(np.asarray(a, dtype="float32"), np.asarray(b, dtype="float32"), metric)
    return keras.ops.convert_to_numpy(distances).astype(np.float64)


def metric_name(metric) -> str:
    """What metrics.json records for a metric: its name, or a learned pair score's `name`."""
    return metric if isinstance(metric, str) else metric.name


def scoring_distance(training_distance: str, l2_normalized: bool = True) -> str:
    """The distance that scores a run's verification pairs: the one it trained with, except that on L2-normalized
    embeddings every distance ranks pairs as cosine distance does (squared Euclidean = 2 × cosine there), and cosine
    is the score the post reports, so thresholds read on its scale."""
    if training_distance not in METRICS:
        raise ConfigError(f"--distance {training_distance}: not known; expected one of {', '.join(METRICS)}")
    return "cosine" if l2_normalized else training_distance
