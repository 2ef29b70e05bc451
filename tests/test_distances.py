"""Tests for sigverify.distances against NumPy loops written from the metric definitions."""

import numpy as np
import pytest
from keras import ops

from sigverify.distances import (
    METRICS,
    paired_distances,
    paired_distances_numpy,
    pairwise_distances,
    scoring_distance,
)
from sigverify.errors import ConfigError
from tests.metric_oracles import pairwise_distances_oracle, value_and_gradient


def random_embeddings(seed, batch_size, dim, dtype="float32"):
    return np.random.default_rng(seed).normal(size=(batch_size, dim)).astype(dtype)


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("batch_size,dim", [(2, 2), (7, 3), (16, 8), (33, 16)])
def test_pairwise_distances_match_loop(metric, batch_size, dim):
    embeddings = random_embeddings(batch_size * dim, batch_size, dim)
    distances = ops.convert_to_numpy(pairwise_distances(embeddings, metric))
    assert distances.shape == (batch_size, batch_size)
    np.testing.assert_allclose(distances, pairwise_distances_oracle(embeddings, metric), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(np.diag(distances), 0.0)
    np.testing.assert_allclose(distances, distances.T, atol=1e-6)


def test_golden_pair_distance():
    distances = ops.convert_to_numpy(pairwise_distances(np.array([[0.0, 1.0], [1.0, 0.0]], dtype="float32")))
    np.testing.assert_allclose(distances, [[0.0, np.sqrt(2.0)], [np.sqrt(2.0), 0.0]], rtol=1e-6)


def test_callable_metric_is_used_as_is():
    embeddings = random_embeddings(0, 5, 3)

    def manhattan(x):
        return ops.sum(ops.abs(ops.expand_dims(x, 1) - ops.expand_dims(x, 0)), axis=-1)

    expected = np.abs(embeddings[:, None, :] - embeddings[None, :, :]).sum(-1)
    np.testing.assert_allclose(ops.convert_to_numpy(pairwise_distances(embeddings, manhattan)), expected, rtol=1e-6)


def test_unknown_pairwise_metric_lists_the_valid_names():
    with pytest.raises(ConfigError, match="euclidean.*squared-euclidean.*cosine"):
        pairwise_distances(random_embeddings(0, 3, 2), "angular")


@pytest.mark.parametrize("metric", METRICS)
def test_gradient_is_finite_when_embeddings_coincide(metric):
    embeddings = random_embeddings(1, 4, 3)
    embeddings[1] = embeddings[0]
    embeddings[3] = 0.0

    def total_distance(x):
        return ops.sum(pairwise_distances(x, metric))

    value, gradient = value_and_gradient(total_distance, embeddings)
    assert np.isfinite(value)
    assert np.all(np.isfinite(gradient))
    distances = ops.convert_to_numpy(pairwise_distances(embeddings, metric))
    assert distances[0, 1] == pytest.approx(0.0, abs=1e-3)


@pytest.mark.parametrize("metric", METRICS)
def test_paired_distances_match_loop(metric):
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(2, 20, 6))
    expected = []
    for row_a, row_b in zip(a, b):
        if metric == "cosine":
            expected.append(1.0 - row_a @ row_b / (np.linalg.norm(row_a) * np.linalg.norm(row_b)))
        elif metric == "euclidean":
            expected.append(np.linalg.norm(row_a - row_b))
        else:
            expected.append(np.sum((row_a - row_b) ** 2))
    from_numpy = paired_distances_numpy(a, b, metric)
    assert from_numpy.dtype == np.float64 and from_numpy.shape == (20,)
    np.testing.assert_allclose(from_numpy, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ops.convert_to_numpy(paired_distances(a, b, metric)), expected, rtol=1e-5, atol=1e-6)


def test_paired_euclidean_gradient_is_finite_for_identical_rows():
    a = random_embeddings(4, 3, 5)
    value, gradient = value_and_gradient(lambda x: ops.sum(paired_distances(x, a, "euclidean")), a)
    assert value == 0.0
    assert np.all(np.isfinite(gradient))


def test_unknown_paired_metric_lists_the_valid_names():
    with pytest.raises(ConfigError, match="euclidean.*squared-euclidean.*cosine"):
        paired_distances(np.ones((2, 2)), np.ones((2, 2)), "L2")


@pytest.mark.parametrize("loss_metric", METRICS)
def test_evaluation_metric_ranks_pairs_like_the_loss_metric(loss_metric):
    """On L2-normalized embeddings, the evaluation metric orders pairs as the training metric does."""
    embeddings = random_embeddings(5, 12, 8)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    rows, columns = np.triu_indices(12, k=1)
    training = ops.convert_to_numpy(pairwise_distances(embeddings, loss_metric))[rows, columns]
    evaluation = paired_distances_numpy(embeddings[rows], embeddings[columns], scoring_distance(loss_metric))
    assert scoring_distance(loss_metric) == "cosine"
    np.testing.assert_array_equal(np.argsort(training), np.argsort(evaluation))


def test_evaluation_metric_without_normalization_and_for_callables():
    assert scoring_distance("euclidean", l2_normalized=False) == "euclidean"
    assert scoring_distance("squared-euclidean", l2_normalized=False) == "squared-euclidean"
    assert scoring_distance("cosine", l2_normalized=False) == "cosine"
    with pytest.raises(ConfigError, match="not known; expected one of euclidean, squared-euclidean, cosine"):
        scoring_distance(lambda x: x)
