"""Verification metrics against answers worked out by hand, and against brute force over every threshold."""

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_curve

from sigverify.data.pairs import verification_pairs
from sigverify.errors import DataError
from sigverify.evaluation.metrics import accuracy_at_threshold, evaluate_embeddings, verification_metrics


def scalars(metrics: dict) -> dict:
    return {key: value for key, value in metrics.items() if key != "roc"}


def test_perfect_separation():
    metrics = verification_metrics([0.1, 0.2, 0.3, 0.6, 0.7, 0.8], [1, 1, 1, 0, 0, 0])
    assert metrics["max_accuracy"] == 1.0
    assert metrics["threshold"] == 0.3  # the smallest distance threshold that accepts every genuine pair
    assert metrics["eer"] == 0.0  # the authors' np.diff(np.sign(...)) would give 2/3 here, see _authors_eer
    assert metrics["eer_interpolated"] == 0.0
    assert metrics["auc"] == 1.0


def test_complete_overlap():
    # Both classes hold the same four distances. sklearn's roc_curve (drop_intermediate=True, as the authors called it)
    # keeps only the corners (0, 0), (.25, .25), (1, 1) of the diagonal: FPR - FNR = -1, -0.5, +1, so the authors' EER
    # is FNR at the middle point, 0.75, while the straight segment crosses FPR = FNR at 0.5.
    distances = [0.2, 0.4, 0.6, 0.8] * 2
    metrics = verification_metrics(distances, [1, 1, 1, 1, 0, 0, 0, 0])
    assert metrics["max_accuracy"] == 0.5
    assert metrics["auc"] == 0.5
    assert metrics["eer"] == pytest.approx(0.75)
    assert metrics["eer_interpolated"] == pytest.approx(0.5)


def test_first_sign_change_and_interpolation_by_hand():
    # genuine 0.1, 0.5; negatives 0.2, 0.3, 0.6.
    # Authors' ROC (positive = negative pair, score = distance, thresholds 0.6, 0.5, 0.3, 0.2, 0.1; 0.3 is dropped
    # as collinear): FPR = share of genuine pairs with distance >= t = [0, 0, .5, .5, 1],
    # FNR = share of negatives below t = [1, 2/3, 2/3, 0, 0], FPR - FNR = [-1, -2/3, -1/6, +.5, +1]:
    # the sign changes after index 2, where FNR = 2/3.
    # Accepting distance <= t: (FAR, FRR) = (1/3, .5) at t = 0.2 and (2/3, .5) at t = 0.3, so the segment crosses
    # FAR = FRR at 0.5.
    # Balanced accuracy: t = 0.1 -> (.5 + 1) / 2 = .75; t = 0.2 -> (.5 + 2/3) / 2; t = 0.5 -> (1 + 1/3) / 2.
    # AUC: 4 of the 6 genuine/negative orderings put the genuine pair closer.
    metrics = verification_metrics([0.1, 0.5, 0.2, 0.3, 0.6], [1, 1, 0, 0, 0])
    assert metrics["eer"] == pytest.approx(2 / 3)
    assert metrics["eer_interpolated"] == pytest.approx(0.5)
    assert metrics["max_accuracy"] == pytest.approx(0.75)
    assert metrics["threshold"] == 0.1
    assert metrics["auc"] == pytest.approx(4 / 6)


def test_exact_crossing_hidden_between_corners():
    # genuine 0.1, 0.2, 0.5; negatives 0.3, 0.4, 0.6. Accepting distance <= 0.4 gives FAR = FRR = 1/3 exactly, but
    # that point lies on a straight run of the authors' ROC and is dropped: their EER reads the corner before (2/3).
    metrics = verification_metrics([0.1, 0.2, 0.5, 0.3, 0.4, 0.6], [1, 1, 1, 0, 0, 0])
    assert metrics["eer"] == pytest.approx(2 / 3)
    assert metrics["eer_interpolated"] == pytest.approx(1 / 3)


def authors_find_eer(fprs, tprs):
    """The original notebooks' EER, transcribed: FNR at the first sign change of FPR - FNR."""
    fnrs = 1 - tprs
    crossover_idx = np.argwhere(np.diff(np.sign(fprs - fnrs)))[0].item()
    return fnrs[crossover_idx]


@pytest.mark.parametrize("seed", range(5))
def test_eer_matches_the_authors_code_where_no_rate_pair_is_exactly_equal(seed):
    rng = np.random.default_rng(seed)
    same = np.repeat([1, 0], [37, 53])  # unequal counts: FPR = FNR exactly cannot happen
    distances = np.round(rng.normal(0.5 - 0.1 * same, 0.2), 2)
    fprs, tprs, _ = roc_curve(same, distances, pos_label=0)
    assert not np.any(fprs == 1 - tprs)
    assert verification_metrics(distances, same)["eer"] == pytest.approx(authors_find_eer(fprs, tprs))


def brute_force_max_accuracy(distances: np.ndarray, same: np.ndarray) -> float:
    best = 0.0
    for threshold in np.concatenate([[-np.inf], np.unique(distances)]):
        accepted = distances <= threshold
        true_accept_rate = np.mean(accepted[same == 1])
        true_reject_rate = np.mean(~accepted[same == 0])
        best = max(best, 0.5 * (true_accept_rate + true_reject_rate))
    return best


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("rounding", [None, 1])
def test_max_accuracy_matches_brute_force(seed, rounding):
    rng = np.random.default_rng(seed)
    same = (rng.random(120) < 0.4).astype(int)
    distances = rng.normal(0.5 - 0.15 * same, 0.2)
    if rounding is not None:
        distances = np.round(distances, rounding)  # many ties
    metrics = verification_metrics(distances, same)
    assert metrics["max_accuracy"] == pytest.approx(brute_force_max_accuracy(distances, same))
    assert accuracy_at_threshold(distances, same, metrics["threshold"]) == pytest.approx(metrics["max_accuracy"])
    assert metrics["eer"] >= metrics["eer_interpolated"] - 1e-12  # the authors' EER reads the corner before
    roc = metrics["roc"]
    assert len(roc["fpr"]) == len(roc["tpr"]) == len(roc["thresholds"])
    assert np.all(np.diff(roc["thresholds"]) >= 0) and np.all(np.isfinite(roc["thresholds"]))
    assert roc["fpr"][0] == 0 and roc["tpr"][0] == 0 and roc["fpr"][-1] == 1 and roc["tpr"][-1] == 1
    json.dumps(scalars(metrics))


def test_accuracy_at_threshold_by_hand():
    distances = [0.1, 0.4, 0.5, 0.2, 0.5, 0.9]
    same = [1, 1, 1, 0, 0, 0]
    # distance <= 0.5 accepts all three genuine pairs and two of three negatives (0.5 itself is accepted)
    assert accuracy_at_threshold(distances, same, 0.5) == pytest.approx(0.5 * (1 + 1 / 3))
    # distance <= 0.3 accepts genuine 0.1 and negative 0.2
    assert accuracy_at_threshold(distances, same, 0.3) == pytest.approx(0.5 * (1 / 3 + 2 / 3))
    assert accuracy_at_threshold(distances, same, -1.0) == 0.5


@pytest.mark.parametrize(
    "distances, same",
    [([0.1, 0.2], [1, 1]), ([0.1, 0.2], [1, 2]), ([0.1, np.nan], [1, 0]), ([0.1, 0.2, 0.3], [1, 0])],
)
def test_bad_scores_are_refused(distances, same):
    with pytest.raises(DataError):
        verification_metrics(distances, same)


def unit_vectors(degrees) -> np.ndarray:
    radians = np.deg2rad(np.asarray(degrees, dtype=np.float64))
    return np.stack([np.cos(radians), np.sin(radians)], axis=1).astype(np.float32)


def cosine_distance_of_angle(degrees: float) -> float:
    return 1.0 - np.cos(np.deg2rad(degrees))


def test_evaluate_embeddings_on_a_constructed_set():
    # writer 1: genuine at 0°, 10°, 20°; forgeries at 15° and 90°; writer 2: genuine at 180°.
    embeddings = unit_vectors([0, 10, 20, 15, 90, 180])
    pairs = pd.DataFrame(
        [
            (0, 1, 1, "genuine"), (0, 2, 1, "genuine"), (1, 2, 1, "genuine"),  # 10°, 20°, 10°
            (0, 3, 0, "skilled"), (0, 4, 0, "skilled"), (2, 4, 0, "skilled"),  # 15°, 90°, 70°
            (0, 5, 0, "random"), (1, 5, 0, "random"), (2, 5, 0, "random"),  # 180°, 170°, 160°
        ],
        columns=["a", "b", "same", "kind"],
    ).assign(writer=1)
    # training writers: one genuine pair 17° apart, one skilled pair 90°, one random pair 180°
    train_embeddings = unit_vectors([0, 17, 90, 180])
    train_pairs = pd.DataFrame(
        [(0, 1, 1, "genuine", 3), (0, 2, 0, "skilled", 3), (0, 3, 0, "random", 3)],
        columns=["a", "b", "same", "kind", "writer"],
    )

    metrics, scores = evaluate_embeddings(embeddings, pairs, "cosine", train_embeddings, train_pairs)

    json.dumps(metrics)
    assert metrics["n_pairs"] == {"hard": 6, "easy": 6}
    hard, easy = metrics["hard"], metrics["easy"]
    # hard: accepting <= d(10°) takes 2/3 genuine and no forgery; <= d(20°) all genuine and the 15° forgery: both 5/6
    assert hard["max_accuracy"] == pytest.approx(5 / 6)
    assert hard["threshold"] == pytest.approx(cosine_distance_of_angle(10), abs=1e-6)
    # the training threshold d(17°) accepts the 10° genuine pairs and the 15° forgery: (2/3 + 2/3) / 2
    assert hard["train_threshold"] == pytest.approx(cosine_distance_of_angle(17), abs=1e-6)
    assert hard["accuracy_at_train_threshold"] == pytest.approx(2 / 3)
    assert easy["max_accuracy"] == 1.0 and easy["eer"] == 0.0 and easy["auc"] == 1.0
    assert easy["threshold"] == pytest.approx(cosine_distance_of_angle(20), abs=1e-6)
    # the easy training threshold is d(17°) as well: it rejects the 20° genuine pair, (2/3 + 1) / 2
    assert easy["train_threshold"] == pytest.approx(cosine_distance_of_angle(17), abs=1e-6)
    assert easy["accuracy_at_train_threshold"] == pytest.approx(5 / 6)

    assert set(scores) == {"hard", "easy"}
    hard_scores = scores["hard"]
    expected = [cosine_distance_of_angle(angle) for angle in (10, 20, 10, 15, 90, 70)]
    np.testing.assert_allclose(hard_scores.distances, expected, atol=1e-6)
    np.testing.assert_array_equal(hard_scores.same, [1, 1, 1, 0, 0, 0])
    assert hard_scores.eer == hard["eer"]
    assert len(hard_scores.fpr) == len(hard_scores.tpr) == len(hard_scores.thresholds)


def test_evaluate_embeddings_on_sampled_pairs_without_train_pairs():
    writers = np.repeat([1, 2, 3], 8)
    genuine = np.tile([True] * 4 + [False] * 4, 3)
    index = pd.DataFrame(
        {"path": [f"img{i}.png" for i in range(24)], "writer": writers, "genuine": genuine,
         "sample": np.tile(np.arange(1, 5), 6), "label": writers + 55 * ~genuine}
    )
    pairs = verification_pairs(index)
    embeddings = np.random.default_rng(0).normal(size=(24, 8)).astype(np.float32)

    metrics, scores = evaluate_embeddings(embeddings, pairs)

    assert metrics["n_pairs"] == {"hard": 3 * 12, "easy": 3 * 12}
    for name in ("hard", "easy"):
        assert metrics[name]["train_threshold"] is None and metrics[name]["accuracy_at_train_threshold"] is None
        assert 0.5 <= metrics[name]["max_accuracy"] <= 1.0
        assert len(scores[name].distances) == metrics["n_pairs"][name]


def test_a_set_without_negatives_is_none():
    embeddings = unit_vectors([0, 10, 50])
    pairs = pd.DataFrame([(0, 1, 1, "genuine", 1), (0, 2, 0, "skilled", 1)], columns=["a", "b", "same", "kind", "writer"])
    metrics, scores = evaluate_embeddings(embeddings, pairs)
    assert metrics["easy"] is None and metrics["n_pairs"]["easy"] == 1
    assert set(scores) == {"hard"}


def test_positions_outside_the_embeddings_are_refused():
    pairs = pd.DataFrame([(0, 5, 1, "genuine", 1), (0, 1, 0, "skilled", 1)], columns=["a", "b", "same", "kind", "writer"])
    with pytest.raises(DataError, match="positions"):
        evaluate_embeddings(unit_vectors([0, 10]), pairs)
