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
BOOTSTRAP_RESAMPLES = 1000  # of the 95% intervals over test writers


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


def all_pair_distances(embeddings, metric: str = "cosine") -> np.ndarray:
    """N×N float64 distances between all rows, the same numbers as `paired_distances_numpy` row by row (cosine: a
    zero row has similarity 0), computed from the Gram matrix in NumPy; a learned pair score gives its own."""
    if not isinstance(metric, str):
        return metric.all_pairs(embeddings)
    embeddings = np.asarray(embeddings, dtype=np.float64)
    if metric == "cosine":
        norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
        unit = embeddings / np.maximum(norms, 1e-6)
        return 1.0 - unit @ unit.T
    squared_norms = np.sum(embeddings**2, axis=1)
    squared = np.maximum(squared_norms[:, None] + squared_norms[None, :] - 2.0 * embeddings @ embeddings.T, 0.0)
    np.fill_diagonal(squared, 0.0)
    if metric == "squared-euclidean":
        return squared
    if metric == "euclidean":
        return np.sqrt(squared)
    raise DataError(f"evaluation metric {metric!r} is not known; expected cosine, euclidean or squared-euclidean")


REFERENCE_RULES = {"mean": np.mean, "min": np.min}  # how K distances to enrolled references become one score


def reference_scores(distances: np.ndarray, writers, genuine, count: int, draws: int = 10,
                     rng: np.random.Generator | None = None, max_random_per_writer: int | None = None) -> dict | None:
    """Scores against `count` enrolled references, as a deployed system computes them: for each writer with more than
    `count` genuine signatures, `count` of them are enrolled (drawn at random, `draws` times), and each questioned
    signature gets the mean and the minimum of its distances (`distances`: N×N, all pairs) to the references.
    Questioned: the writer's other genuine signatures ("genuine"), their skilled forgeries ("skilled") and other
    writers' genuine signatures ("random"; at most `max_random_per_writer` per draw, drawn at random, if given).

    Returns {(rule, kind): float64 array of scores} with rule "mean" / "min", or None when no writer has enough
    genuine signatures."""
    writers = np.asarray(writers).ravel()
    genuine = np.asarray(genuine).ravel().astype(bool)
    rng = rng if rng is not None else np.random.default_rng(0)
    scores = {(rule, kind): [] for rule in REFERENCE_RULES for kind in ("genuine", "skilled", "random")}
    eligible = [w for w in np.unique(writers) if np.sum(genuine & (writers == w)) > count]
    for writer in eligible:
        own_genuine = np.flatnonzero(genuine & (writers == writer))
        questioned = {"skilled": np.flatnonzero(~genuine & (writers == writer)),
                      "random": np.flatnonzero(genuine & (writers != writer))}
        for _ in range(draws):
            enrolled = rng.choice(own_genuine, size=count, replace=False)
            questioned["genuine"] = np.setdiff1d(own_genuine, enrolled)
            for kind, rows in questioned.items():
                if kind == "random" and max_random_per_writer is not None and len(rows) > max_random_per_writer:
                    rows = rng.choice(rows, size=max_random_per_writer, replace=False)
                to_references = distances[np.ix_(rows, enrolled)]
                for rule, reduce in REFERENCE_RULES.items():
                    scores[rule, kind].append(reduce(to_references, axis=1))
    if not eligible:
        return None
    return {key: np.concatenate(parts) if parts else np.array([]) for key, parts in scores.items()}


def reference_verification(embeddings, writers, genuine, reference_counts=(1, 5, 12), metric: str = "cosine",
                           draws: int = 10, seed: int = 0) -> dict:
    """EERs of verification against K enrolled references (`reference_scores`: mean and min of the distances to
    them), over all writers and draws pooled.

    Returns {str(K): {"mean": {"hard": {"eer", "eer_interpolated"}, "easy": {...}}, "min": {...}, "n_writers": n}};
    None for a K that no writer has K + 1 genuine signatures for.
    """
    writers = np.asarray(writers).ravel()
    genuine = np.asarray(genuine).ravel().astype(bool)
    distances = all_pair_distances(embeddings, metric)
    results: dict = {}
    for count in reference_counts:
        scores = reference_scores(distances, writers, genuine, count, draws, np.random.default_rng([seed, count]))
        if scores is None:
            results[str(count)] = None
            continue
        entry: dict = {"n_writers": int(sum(np.sum(genuine & (writers == w)) > count for w in np.unique(writers)))}
        for rule in REFERENCE_RULES:
            entry[rule] = {}
            positive = scores[rule, "genuine"]
            for set_name, negative_kind in (("hard", "skilled"), ("easy", "random")):
                negative = scores[rule, negative_kind]
                if not len(negative):
                    entry[rule][set_name] = None
                    continue
                set_metrics = verification_metrics(np.concatenate([positive, negative]),
                                                   np.r_[np.ones(len(positive), int), np.zeros(len(negative), int)])
                entry[rule][set_name] = {"eer": set_metrics["eer"], "eer_interpolated": set_metrics["eer_interpolated"]}
        results[str(count)] = entry
    return results


def identification_metrics(embeddings, writers, genuine, metric: str = "cosine") -> dict:
    """Writer identification in a gallery of the genuine signatures, each one queried against all the others (itself
    left out), as pytorch-metric-learning's AccuracyCalculator reports it: precision@1 (the nearest signature is the
    same writer's) and MAP@R (R = the query's number of other genuine signatures by its writer; the mean over the
    first R retrieved of the precision at each correct one, divided by R). Queries with R = 0 are skipped; ties in
    distance keep gallery order. Returns {"precision_at_1", "map_at_r", "n_queries", "n_writers"}."""
    writers = np.asarray(writers).ravel()
    genuine = np.asarray(genuine).ravel().astype(bool)
    gallery_writers = writers[genuine]
    distances = all_pair_distances(np.asarray(embeddings)[genuine], metric)
    np.fill_diagonal(distances, np.inf)
    precision_at_1, map_at_r = [], []
    for query, writer in enumerate(gallery_writers):
        relevant_count = int(np.sum(gallery_writers == writer)) - 1
        if relevant_count == 0:
            continue
        ranked = np.argsort(distances[query], kind="stable")[:-1]  # the query itself (inf) is last
        relevant = gallery_writers[ranked[:relevant_count]] == writer
        precision_at_1.append(float(relevant[0]))
        precision_at_rank = np.cumsum(relevant) / np.arange(1, relevant_count + 1)
        map_at_r.append(float(np.sum(precision_at_rank * relevant) / relevant_count))
    if not precision_at_1:
        return {"precision_at_1": None, "map_at_r": None, "n_queries": 0, "n_writers": len(np.unique(gallery_writers))}
    return {"precision_at_1": float(np.mean(precision_at_1)), "map_at_r": float(np.mean(map_at_r)),
            "n_queries": len(precision_at_1), "n_writers": len(np.unique(gallery_writers))}


def max_balanced_accuracy(distances, same) -> float:
    """The `max_accuracy` of `verification_metrics` (max over thresholds of ½(TPR + TNR)), without the ROC and AUC
    around it: the bootstrap computes it thousands of times."""
    distances, same = _checked_scores(distances, same)
    order = np.argsort(distances, kind="stable")
    sorted_distances, sorted_same = distances[order], same[order]
    last_of_value = np.r_[sorted_distances[1:] != sorted_distances[:-1], True]
    genuine_accepted = np.cumsum(sorted_same)[last_of_value]
    negatives_accepted = np.cumsum(1 - sorted_same)[last_of_value]
    n_genuine, n_negative = int(same.sum()), int(len(same) - same.sum())
    scaled = np.r_[n_genuine * n_negative, genuine_accepted * n_negative + (n_negative - negatives_accepted) * n_genuine]
    return float(scaled.max() / (2 * n_genuine * n_negative))


@dataclass(frozen=True)
class WriterPairScores:
    """One run's pairs of one set with the writer each pair belongs to: what a bootstrap over test writers resamples."""

    distances: np.ndarray
    same: np.ndarray
    writers: np.ndarray
    train_threshold: float | None = None


BOOTSTRAP_STATISTICS = ("max_accuracy", "eer", "accuracy_at_train_threshold")


def bootstrap_intervals(runs: list[WriterPairScores], n_resamples: int = 1000, level: float = 0.95,
                        seed: int = 0) -> dict:
    """Percentile bootstrap confidence intervals over test writers for the mean over `runs` (one run: its own figure).

    Each resample draws, in every run, as many of its test writers as it has, with replacement, and takes all the
    pairs of each drawn writer (a writer drawn twice counts twice); the statistics of each run are averaged over runs.
    Returns {statistic: [low, high]} for max_accuracy, eer (the authors' way) and accuracy_at_train_threshold (None
    when a run has no training threshold).
    """
    rng = np.random.default_rng(seed)
    prepared = []
    for run in runs:
        distances, same = _checked_scores(run.distances, run.same)
        writers = np.asarray(run.writers).ravel()
        rows_by_writer = [np.flatnonzero(writers == w) for w in np.unique(writers)]
        prepared.append((distances, same, rows_by_writer, run.train_threshold))
    with_threshold = all(run.train_threshold is not None for run in runs)
    samples = {name: [] for name in BOOTSTRAP_STATISTICS}
    for _ in range(n_resamples):
        per_run = {name: [] for name in BOOTSTRAP_STATISTICS}
        for distances, same, rows_by_writer, threshold in prepared:
            drawn = rng.integers(0, len(rows_by_writer), size=len(rows_by_writer))
            rows = np.concatenate([rows_by_writer[i] for i in drawn])
            if same[rows].min() == same[rows].max():  # only writers without one kind of pair: not a usable resample
                continue
            per_run["max_accuracy"].append(max_balanced_accuracy(distances[rows], same[rows]))
            per_run["eer"].append(_authors_eer(distances[rows], same[rows]))
            if with_threshold:
                per_run["accuracy_at_train_threshold"].append(accuracy_at_threshold(distances[rows], same[rows],
                                                                                    threshold))
        if len(per_run["eer"]) == len(prepared):
            for name, values in per_run.items():
                if values:
                    samples[name].append(np.mean(values))
    tail = 100 * (1 - level) / 2
    return {name: ([float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))] if values else None)
            for name, values in samples.items()}
