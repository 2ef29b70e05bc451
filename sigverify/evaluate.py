"""Verification metrics from pair distances: max accuracy, EER (as the original authors computed it, and interpolated),
AUC, and the honest accuracy at a threshold chosen on training writers. Knows nothing of models.

Convention used throughout: a pair is accepted as "same writer" when its distance is <= the threshold. Positive pairs
are genuine–genuine (`same` = 1); FAR (false acceptance rate) is the share of negative pairs accepted, FRR (false
rejection rate) the share of genuine pairs rejected.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score, roc_curve

from sigverify.data.pairs import easy_pairs, hard_pairs
from sigverify.distances import paired_distances_numpy
from sigverify.errors import DataError

PAIR_SETS = {"hard": hard_pairs, "easy": easy_pairs}


@dataclass(frozen=True)
class PairSetScores:
    """What the plots of one pair set need: one distance and label per pair, and the ROC of those distances."""

    distances: np.ndarray  # float64, one per pair
    same: np.ndarray  # int, 1 = genuine–genuine, 0 = negative
    fpr: np.ndarray  # FAR at each threshold
    tpr: np.ndarray  # 1 - FRR at each threshold
    thresholds: np.ndarray  # distance thresholds, ascending; accepted when distance <= threshold
    eer: float


def _checked_scores(distances, same) -> tuple[np.ndarray, np.ndarray]:
    distances = np.asarray(distances, dtype=np.float64).ravel()
    same = np.asarray(same).ravel()
    if distances.shape != same.shape:
        raise DataError(f"got {distances.size} distances but {same.size} pair labels: expected one label per distance")
    if not np.all(np.isfinite(distances)):
        raise DataError("pair distances contain NaN or infinity: expected finite distances")
    if not np.isin(same, (0, 1)).all():
        raise DataError("pair labels must be 1 (genuine–genuine) or 0 (negative pair)")
    same = same.astype(int)
    if same.min() == same.max():
        raise DataError("verification metrics need both genuine–genuine (same=1) and negative (same=0) pairs")
    return distances, same


def _authors_eer(distances: np.ndarray, same: np.ndarray) -> float:
    """EER exactly as the original notebooks computed it, except where FPR equals FNR at an ROC point.

    They called `roc_curve(label, distance, pos_label=0)` (the positive class is the negative pair, the score the
    distance), so their FNR is the false acceptance rate, and returned FNR at the first index i where
    sign(FPR - FNR) differs between i and i+1, without interpolation. Where FPR - FNR is exactly 0 at an ROC point,
    their `np.diff(np.sign(...))` picked the point before it (so a perfectly separated set got a positive EER); we
    return that exact crossing instead. sklearn's default `drop_intermediate=True`, which they relied on, keeps
    only the corners of the ROC, so this EER reads the last corner before the crossing: it is never below the
    interpolated EER, and on small sets can be far above it.
    """
    fpr, tpr, _ = roc_curve(same, distances, pos_label=0)
    fnr = 1.0 - tpr
    gap = fpr - fnr  # -1 at the first ROC point (everything accepted), +1 at the last
    first_not_below = int(np.argmax(gap >= -1e-12))
    if abs(gap[first_not_below]) <= 1e-12:
        return float(fnr[first_not_below])
    return float(fnr[first_not_below - 1])


def _interpolated_eer(fpr: np.ndarray, fnr: np.ndarray) -> float:
    """The rate where the straight segment between two ROC points crosses FPR = FNR (`fpr` rising, `fnr` falling)."""
    gap = fpr - fnr
    k = int(np.argmax(gap >= 0))
    if gap[k] == 0:
        return float(fpr[k])
    weight = -gap[k - 1] / (gap[k] - gap[k - 1])
    return float(fpr[k - 1] + weight * (fpr[k] - fpr[k - 1]))


def verification_metrics(distances, same) -> dict:
    """Metrics of one pair set from its distances (smaller = more alike) and labels (1 genuine–genuine, 0 negative).

    Returns plain floats: `max_accuracy` (max over ROC thresholds of ½(TPR + TNR)), `threshold` (the distance at
    that max: a pair is accepted when distance <= threshold; the smallest such threshold on ties), `eer` (the authors'
    way, see `_authors_eer`), `eer_interpolated`, `auc`; and under `roc` the arrays `fpr`, `tpr`, `thresholds`
    (ascending distance thresholds) for plots: pop `roc` before writing the dict as JSON.
    """
    distances, same = _checked_scores(distances, same)
    fpr, tpr, score_thresholds = roc_curve(same, -distances, drop_intermediate=False)
    # sklearn accepts when score >= threshold, i.e. distance <= -threshold; its first threshold (+inf, nobody
    # accepted) becomes the largest float below the smallest distance, which accepts nobody as well.
    thresholds = -score_thresholds
    thresholds[0] = np.nextafter(distances.min(), -np.inf)
    # ½(TPR + TNR) in whole pair counts, so that equal accuracies compare equal and ties go to the smallest threshold
    n_genuine, n_negative = int(same.sum()), int(len(same) - same.sum())
    genuine_accepted = np.rint(tpr * n_genuine).astype(np.int64)
    negatives_rejected = n_negative - np.rint(fpr * n_negative).astype(np.int64)
    scaled_accuracy = genuine_accepted * n_negative + negatives_rejected * n_genuine
    best = int(np.argmax(scaled_accuracy))
    return {
        "max_accuracy": float(scaled_accuracy[best] / (2 * n_genuine * n_negative)),
        "threshold": float(thresholds[best]),
        "eer": _authors_eer(distances, same),
        "eer_interpolated": _interpolated_eer(fpr, 1.0 - tpr),
        "auc": float(roc_auc_score(same, -distances)),
        "roc": {"fpr": fpr, "tpr": tpr, "thresholds": thresholds},
    }


def accuracy_at_threshold(distances, same, threshold: float) -> float:
    """Balanced accuracy ½(TPR + TNR) when pairs with distance <= `threshold` are accepted as the same writer."""
    distances, same = _checked_scores(distances, same)
    accepted = distances <= threshold
    true_accept_rate = accepted[same == 1].mean()
    true_reject_rate = (~accepted[same == 0]).mean()
    return float(0.5 * (true_accept_rate + true_reject_rate))


def raw_pixel_embeddings(images: np.ndarray) -> np.ndarray:
    """Ink as signal, one flat vector per preprocessed uint8 image: the no-learning baseline (cosine on raw pixels)."""
    return (255.0 - images.reshape(len(images), -1).astype(np.float32)) / 255.0


def pair_distances(embeddings, pairs: pd.DataFrame, metric: str = "cosine") -> np.ndarray:
    """One distance per row of `pairs`, between the embeddings at its positions `a` and `b`."""
    embeddings = np.asarray(embeddings)
    missing = {"a", "b", "same", "kind"} - set(pairs.columns)
    if missing:
        raise DataError(f"pair table lacks the column(s) {sorted(missing)}: expected a, b, same, kind, writer")
    if embeddings.ndim != 2:
        raise DataError(f"embeddings have shape {embeddings.shape}: expected a 2-D array, one row per image")
    positions = pairs[["a", "b"]].to_numpy()
    if positions.size and (positions.min() < 0 or positions.max() >= len(embeddings)):
        raise DataError(
            f"pair positions run from {positions.min()} to {positions.max()} but there are {len(embeddings)} "
            "embeddings: expected positions into the index table the embeddings were computed from"
        )
    return paired_distances_numpy(embeddings[positions[:, 0]], embeddings[positions[:, 1]], metric=metric)


def evaluate_embeddings(
    embeddings, pairs: pd.DataFrame, metric: str = "cosine", train_embeddings=None, train_pairs=None
) -> tuple[dict, dict[str, PairSetScores]]:
    """Metrics of the hard (genuine + skilled) and easy (genuine + random) pair sets, and the scores behind them.

    Returns `(metrics, scores)`. `metrics` is JSON-able: {"hard": {...}, "easy": {...}, "n_pairs": {"hard": n,
    "easy": n}}, each set holding max_accuracy, threshold, eer, eer_interpolated, auc, train_threshold and
    accuracy_at_train_threshold (the honest figure: the max-accuracy threshold of the training writers' pairs of the
    same set, applied here; both None without training pairs). A set with no negative pair is None. `scores` maps
    each evaluated set name to its `PairSetScores` for plots.
    """
    all_distances = pair_distances(embeddings, pairs, metric)
    train_distances = None
    if train_pairs is not None:
        if train_embeddings is None:
            raise DataError("train_pairs were given without train_embeddings: expected both or neither")
        train_distances = pair_distances(train_embeddings, train_pairs, metric)

    metrics: dict = {"n_pairs": {}}
    scores: dict[str, PairSetScores] = {}
    for set_name, select in PAIR_SETS.items():
        rows = select(pairs.assign(distance=all_distances))
        metrics["n_pairs"][set_name] = len(rows)
        if not (rows["same"] == 0).any():
            metrics[set_name] = None
            continue
        set_metrics = verification_metrics(rows["distance"], rows["same"])
        roc = set_metrics.pop("roc")
        set_metrics["train_threshold"] = None
        set_metrics["accuracy_at_train_threshold"] = None
        if train_distances is not None:
            train_rows = select(train_pairs.assign(distance=train_distances))
            if (train_rows["same"] == 0).any():
                train_threshold = verification_metrics(train_rows["distance"], train_rows["same"])["threshold"]
                set_metrics["train_threshold"] = train_threshold
                set_metrics["accuracy_at_train_threshold"] = accuracy_at_threshold(
                    rows["distance"], rows["same"], train_threshold
                )
        metrics[set_name] = set_metrics
        scores[set_name] = PairSetScores(
            distances=rows["distance"].to_numpy(),
            same=rows["same"].to_numpy().astype(int),
            fpr=roc["fpr"],
            tpr=roc["tpr"],
            thresholds=roc["thresholds"],
            eer=set_metrics["eer"],
        )
    return metrics, scores
