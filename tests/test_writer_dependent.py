"""Tests of the writer-dependent SVM protocol on synthetic embeddings, its EERs against a loop over writers written
from the definition with sklearn's roc_curve."""

import json

import numpy as np
import pytest
from sklearn.metrics import roc_curve

from sigverify.errors import DataError
from sigverify.evaluation.writer_dependent import writer_dependent_metrics, writer_dependent_scores

N_WRITERS, N_GENUINE, N_FORGERIES, DIMENSION, REFERENCES = 16, 14, 10, 32, 8


def synthetic_embeddings(forgery_pull: float | None, noise: float = 0.3, seed: int = 0):
    """Embeddings (N x D) float32, writer ids (N,) int from 1, genuine flags (N,) bool. Each writer is a cluster
    around a random centre; a forgery sits at `forgery_pull` times its writer's centre, between the writer and the
    population, where a forger who roughly imitates the signature lands. `forgery_pull=None`: pure noise."""
    rng = np.random.default_rng(seed)
    per_writer = N_GENUINE + N_FORGERIES
    writers = np.repeat(np.arange(1, N_WRITERS + 1), per_writer)
    genuine = np.tile(np.r_[np.ones(N_GENUINE, bool), np.zeros(N_FORGERIES, bool)], N_WRITERS)
    if forgery_pull is None:
        return rng.normal(size=(len(writers), DIMENSION)).astype(np.float32), writers, genuine
    centres = rng.normal(size=(N_WRITERS, DIMENSION))[writers - 1]
    embeddings = centres * np.where(genuine, 1.0, forgery_pull)[:, None] + noise * rng.normal(size=centres.shape)
    return embeddings.astype(np.float32), writers, genuine


def interpolated_eer_oracle(genuine_scores, negative_scores) -> float:
    """The rate where the ROC's straight segments cross FAR = FRR, walking the points of sklearn's roc_curve."""
    labels = np.r_[np.ones(len(genuine_scores)), np.zeros(len(negative_scores))]
    false_accept, true_accept, _ = roc_curve(labels, np.r_[genuine_scores, negative_scores])
    false_reject = 1.0 - true_accept
    for i in range(len(false_accept) - 1):
        gap_here = false_accept[i] - false_reject[i]
        gap_next = false_accept[i + 1] - false_reject[i + 1]
        if gap_here == 0:
            return float(false_accept[i])
        if gap_here < 0 <= gap_next:
            weight = -gap_here / (gap_next - gap_here)
            return float(false_accept[i] + weight * (false_accept[i + 1] - false_accept[i]))
    raise AssertionError("an ROC always crosses FAR = FRR")


def test_clustered_writers_are_verified_well_below_chance():
    metrics = writer_dependent_metrics(*synthetic_embeddings(forgery_pull=0.5), references=REFERENCES)
    assert metrics["n_writers"] == N_WRITERS and metrics["skipped_writers"] == []
    for kind in ("skilled", "random"):
        assert metrics[kind]["eer_global_threshold"] < 0.1
        assert metrics[kind]["eer_user_thresholds"] < 0.1


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pure_noise_is_verified_near_chance(seed):
    metrics = writer_dependent_metrics(*synthetic_embeddings(forgery_pull=None, seed=seed), references=REFERENCES)
    for kind in ("skilled", "random"):
        assert abs(metrics[kind]["eer_global_threshold"] - 0.5) < 0.15
        assert abs(metrics[kind]["eer_user_thresholds"] - 0.5) < 0.15


def test_results_are_reproducible_for_a_seed_and_json_able():
    embeddings, writers, genuine = synthetic_embeddings(forgery_pull=0.8, noise=0.6)
    first = writer_dependent_metrics(embeddings, writers, genuine, references=REFERENCES, negatives_per_writer=5, seed=3)
    again = writer_dependent_metrics(embeddings, writers, genuine, references=REFERENCES, negatives_per_writer=5, seed=3)
    other = writer_dependent_metrics(embeddings, writers, genuine, references=REFERENCES, negatives_per_writer=5, seed=4)
    assert json.loads(json.dumps(first)) == first == again
    assert other != first
    assert "C=1.0" in first["svm"]


@pytest.mark.parametrize("negatives_per_writer", [None, 5])
def test_test_sets_are_the_remaining_genuine_the_forgeries_and_the_untrained_half(negatives_per_writer):
    scores = writer_dependent_scores(*synthetic_embeddings(forgery_pull=0.8), references=REFERENCES,
                                     negatives_per_writer=negatives_per_writer)
    random_forgery_writers = (N_WRITERS - 1) // 2  # the first half, rounded up, trains
    assert sorted(scores) == list(range(1, N_WRITERS + 1))
    for writer_scores in scores.values():
        assert len(writer_scores["genuine"]) == N_GENUINE - REFERENCES
        assert len(writer_scores["skilled"]) == N_FORGERIES
        assert len(writer_scores["random"]) == random_forgery_writers * N_GENUINE


def test_a_writer_with_too_few_genuine_signatures_is_skipped():
    embeddings, writers, genuine = synthetic_embeddings(forgery_pull=0.5)
    keep = ~((writers == 5) & genuine & (np.cumsum(writers == 5) > REFERENCES))  # writer 5 keeps only K genuine
    metrics = writer_dependent_metrics(embeddings[keep], writers[keep], genuine[keep], references=REFERENCES)
    assert metrics["skipped_writers"] == [5]
    assert metrics["n_writers"] == N_WRITERS - 1


def test_eers_match_a_loop_over_writers_with_roc_curve():
    inputs = synthetic_embeddings(forgery_pull=0.8, noise=0.6, seed=5)
    scores = writer_dependent_scores(*inputs, references=REFERENCES, seed=2)
    metrics = writer_dependent_metrics(*inputs, references=REFERENCES, seed=2)
    for kind in ("skilled", "random"):
        per_writer = [interpolated_eer_oracle(s["genuine"], s[kind]) for s in scores.values()]
        pooled = interpolated_eer_oracle(np.concatenate([s["genuine"] for s in scores.values()]),
                                         np.concatenate([s[kind] for s in scores.values()]))
        assert 0 < np.mean(per_writer) < 0.5  # a set where the crossing is interpolated, not trivially 0
        assert metrics[kind]["eer_user_thresholds"] == pytest.approx(np.mean(per_writer), abs=1e-12)
        assert metrics[kind]["eer_global_threshold"] == pytest.approx(pooled, abs=1e-12)


def test_random_forgeries_are_none_when_every_other_writer_trains():
    embeddings, writers, genuine = synthetic_embeddings(forgery_pull=0.5)
    two_writers = writers <= 2
    metrics = writer_dependent_metrics(embeddings[two_writers], writers[two_writers], genuine[two_writers],
                                       references=REFERENCES)
    assert metrics["random"] == {"eer_global_threshold": None, "eer_user_thresholds": None}
    assert metrics["skilled"]["eer_global_threshold"] is not None


def test_bad_inputs_are_refused():
    embeddings, writers, genuine = synthetic_embeddings(forgery_pull=0.5)
    with pytest.raises(DataError, match="expected one of each per signature"):
        writer_dependent_metrics(embeddings, writers[:-1], genuine)
    with pytest.raises(DataError, match="expected one of each per signature"):
        writer_dependent_metrics(embeddings, writers, genuine[:-1])
    with pytest.raises(DataError, match="no writer has more than references=14"):
        writer_dependent_metrics(embeddings, writers, genuine, references=N_GENUINE)
