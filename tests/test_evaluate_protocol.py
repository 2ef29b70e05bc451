"""The honest-protocol metrics of sigverify.evaluation.metrics on hand-made embeddings: verification against K
enrolled references (mean and min distance), writer identification (precision@1, MAP@R), and bootstrap intervals over
writers."""

import numpy as np
import pytest

from sigverify.distances import paired_distances_numpy
from sigverify.evaluation.metrics import (
    WriterPairScores,
    all_pair_distances,
    bootstrap_intervals,
    identification_metrics,
    max_balanced_accuracy,
    reference_verification,
    verification_metrics,
)


@pytest.mark.parametrize("metric", ["cosine", "euclidean", "squared-euclidean"])
def test_all_pair_distances_match_paired_distances(metric):
    embeddings = np.random.default_rng(0).normal(size=(7, 5))
    embeddings[3] = 0.0  # a zero row: cosine similarity 0
    rows, columns = np.meshgrid(np.arange(7), np.arange(7), indexing="ij")
    expected = paired_distances_numpy(embeddings[rows.ravel()], embeddings[columns.ravel()], metric).reshape(7, 7)
    np.testing.assert_allclose(all_pair_distances(embeddings, metric), expected, atol=1e-5)


def two_mode_writers():
    """Two writers whose genuine signatures fall in two tight clusters, 20 apart, with skilled forgeries halfway.

    With K = 3 of the 4 genuine enrolled, a questioned genuine always has a sibling among the references (min distance
    0.1) but is far from the other cluster (mean ≈ 13.4), while a forgery is ≈ 10 from everything: the minimum
    separates genuine from forged, the mean inverts them. The other writer is 1000 away (random forgeries are easy).
    """
    positions, writers, genuine = [], [], []
    for writer, offset in ((1, 0.0), (2, 1000.0)):
        positions += [offset + p for p in (0.0, 0.1, 20.0, 20.1)] + [offset + 10.0, offset + 10.05]
        writers += [writer] * 6
        genuine += [True] * 4 + [False] * 2
    return np.array(positions)[:, None], np.array(writers), np.array(genuine)


def test_reference_verification_min_and_mean_of_enrolled_references():
    embeddings, writers, genuine = two_mode_writers()
    result = reference_verification(embeddings, writers, genuine, reference_counts=(3, 1, 4, 12), metric="euclidean",
                                    draws=5)
    assert set(result) == {"3", "1", "4", "12"}
    three = result["3"]
    assert three["n_writers"] == 2
    assert three["min"]["hard"]["eer"] == 0.0 and three["min"]["easy"]["eer"] == 0.0
    assert three["mean"]["hard"]["eer_interpolated"] == 1.0 and three["mean"]["easy"]["eer"] == 0.0
    one = result["1"]
    assert one["mean"] == one["min"], "with one reference the mean is the minimum"
    assert 0.0 < one["min"]["hard"]["eer_interpolated"] < 1.0  # the enrolled cluster decides
    assert result["4"] is None and result["12"] is None, "a writer needs K + 1 genuine signatures"


def test_reference_verification_draws_are_seeded():
    embeddings, writers, genuine = two_mode_writers()
    rng = np.random.default_rng(1)
    embeddings = embeddings + rng.normal(scale=3.0, size=embeddings.shape)
    first = reference_verification(embeddings, writers, genuine, (1, 2), "euclidean", draws=3, seed=7)
    assert first == reference_verification(embeddings, writers, genuine, (1, 2), "euclidean", draws=3, seed=7)


def test_identification_precision_at_1_and_map_at_r():
    # Writer 1: 0, 1 with writer 3's lone signature at 0.6 between them (both queries miss); writer 2: 10, 11
    # (both hit); writer 4: 20, 21, 30 with writer 5 at 22.5 (R = 2: ranks [hit, miss], [hit, miss], [miss, hit]).
    # A forgery at 0.01 is not in the gallery.
    positions = [0, 1, 0.6, 10, 11, 20, 21, 30, 22.5, 0.01]
    writers = [1, 1, 3, 2, 2, 4, 4, 4, 5, 2]
    genuine = [True] * 9 + [False]
    result = identification_metrics(np.array(positions, dtype=float)[:, None], writers, genuine, metric="euclidean")
    assert result["n_queries"] == 7 and result["n_writers"] == 5
    assert result["precision_at_1"] == pytest.approx((0 + 0 + 1 + 1 + 1 + 1 + 0) / 7)
    assert result["map_at_r"] == pytest.approx((0 + 0 + 1 + 1 + 0.5 + 0.5 + 0.25) / 7)


def test_identification_without_repeated_writers_has_no_queries():
    result = identification_metrics(np.eye(3), [1, 2, 3], [True] * 3)
    assert result["n_queries"] == 0 and result["precision_at_1"] is None


def test_max_balanced_accuracy_is_verification_metrics_max_accuracy():
    rng = np.random.default_rng(0)
    for size in (2, 7, 50, 400):
        distances = np.round(rng.random(size), 1)  # many ties
        same = rng.integers(0, 2, size)
        same[:2] = [0, 1]
        assert max_balanced_accuracy(distances, same) == verification_metrics(distances, same)["max_accuracy"]


def writer_pairs(bad_writers=(), n_writers=6, seed=0):
    """Per writer 10 genuine pairs at distance ~0.2 and 10 negatives at ~0.8; a bad writer has them swapped."""
    rng = np.random.default_rng(seed)
    distances, same, writers = [], [], []
    for writer in range(n_writers):
        genuine, negative = 0.2 + 0.05 * rng.random(10), 0.8 + 0.05 * rng.random(10)
        if writer in bad_writers:
            genuine, negative = negative, genuine
        distances += [*genuine, *negative]
        same += [1] * 10 + [0] * 10
        writers += [writer] * 20
    return WriterPairScores(np.array(distances), np.array(same), np.array(writers), train_threshold=0.5)


def test_bootstrap_of_a_perfect_run_is_a_point():
    intervals = bootstrap_intervals([writer_pairs()], n_resamples=50)
    assert intervals == {"max_accuracy": [1.0, 1.0], "eer": [0.0, 0.0], "accuracy_at_train_threshold": [1.0, 1.0]}


def test_bootstrap_interval_covers_the_run_and_reflects_the_writers():
    run = writer_pairs(bad_writers=(0,))
    intervals = bootstrap_intervals([run], n_resamples=300, seed=1)
    observed = verification_metrics(run.distances, run.same)
    for name, value in (("max_accuracy", observed["max_accuracy"]), ("eer", observed["eer"])):
        low, high = intervals[name]
        assert low <= value <= high and low < high
    # Five of six writers are right at threshold 0.5: a resample's honest accuracy is its share of good writers.
    low, high = intervals["accuracy_at_train_threshold"]
    assert 0.5 <= low < 5 / 6 < high == 1.0
    assert intervals == bootstrap_intervals([run], n_resamples=300, seed=1)
    # The mean over runs: a perfect second run pulls the interval up, and without thresholds there is none.
    two_runs = bootstrap_intervals([run, writer_pairs(seed=3)], n_resamples=300, seed=1)
    assert two_runs["max_accuracy"][0] > intervals["max_accuracy"][0]
    no_threshold = WriterPairScores(run.distances, run.same, run.writers)
    assert bootstrap_intervals([no_threshold], n_resamples=20)["accuracy_at_train_threshold"] is None
