"""Writer-dependent verification as Hafemann et al. evaluate it (luizgh/sigver, `sigver/wd/`): per writer, a linear SVM
on embeddings of a few of their genuine signatures against other writers' genuine ones. Knows nothing of models."""

from __future__ import annotations

import numpy as np
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from sigverify.errors import DataError
from sigverify.evaluation.metrics import verification_metrics

SVM_C = 1.0  # sigver's default --svm-c
SVM_DESCRIPTION = (
    f"sklearn SVC(kernel='linear', C={SVM_C}, class_weight={{genuine: n_negatives / n_references, negative: 1}}) "
    "after StandardScaler(with_mean=False) fitted on each writer's training set, as sigver.wd.training"
)
NEGATIVE_KINDS = ("skilled", "random")


def _checked_inputs(embeddings, writers, genuine) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    embeddings = np.asarray(embeddings, dtype=np.float64)
    writers = np.asarray(writers).ravel()
    genuine = np.asarray(genuine).ravel()
    if embeddings.ndim != 2:
        raise DataError(f"embeddings have shape {embeddings.shape}: expected a 2-D array, one row per signature")
    if not len(embeddings) == len(writers) == len(genuine):
        raise DataError(f"got {len(embeddings)} embeddings, {len(writers)} writer ids and {len(genuine)} genuine "
                        "flags: expected one of each per signature")
    if not np.all(np.isfinite(embeddings)):
        raise DataError("embeddings contain NaN or infinity: expected finite values")
    if not np.issubdtype(writers.dtype, np.integer) or (writers.size and writers.min() < 0):
        raise DataError("writer ids must be non-negative integers (they seed each writer's random draws)")
    if not (genuine.dtype == bool or np.isin(genuine, (0, 1)).all()):
        raise DataError("genuine flags must be booleans: True = genuine, False = skilled forgery of that writer")
    return embeddings, writers.astype(np.int64), genuine.astype(bool)


def writer_dependent_scores(embeddings, writers, genuine, references: int = 12, negatives_per_writer: int | None = None,
                            seed: int = 0) -> dict[int, dict[str, np.ndarray]]:
    """SVM scores (decision_function, higher = more genuine) of each evaluated writer's test signatures.

    `embeddings` (N x D) float, `writers` (N,) non-negative int, `genuine` (N,) bool (False = a skilled forgery of
    that writer). A writer is evaluated when they have more than `references` genuine signatures. With
    `np.random.default_rng([seed, writer])`, for each such writer: `references` of their genuine signatures are drawn
    as positives; the other writers that have genuine signatures (those with too few to be evaluated included) are
    shuffled and split in two halves (the first, rounded up, trains): the training half gives the negatives, all of
    each writer's genuine signatures or `negatives_per_writer` drawn from each, as sigver draws 14 from each
    development writer. The SVM is `SVM_DESCRIPTION`.

    Returns {writer: {"genuine": (n,) float64, "skilled": (m,) float64, "random": (r,) float64}}: the writer's
    remaining genuine signatures, their skilled forgeries, and the genuine signatures of the other half of the
    writers (random forgeries, never seen in training; empty when there is only one other writer).
    """
    embeddings, writers, genuine = _checked_inputs(embeddings, writers, genuine)
    if references < 1:
        raise DataError(f"references is {references}: expected at least 1 genuine signature to train on")
    if negatives_per_writer is not None and negatives_per_writer < 1:
        raise DataError(f"negatives_per_writer is {negatives_per_writer}: expected at least 1, or None for all")
    genuine_rows = {int(w): np.flatnonzero(genuine & (writers == w)) for w in np.unique(writers[genuine])}
    evaluated = [w for w, rows in genuine_rows.items() if len(rows) > references]
    if not evaluated:
        most = max((len(rows) for rows in genuine_rows.values()), default=0)
        raise DataError(f"no writer has more than references={references} genuine signatures (the most is {most}): "
                        "lower references or add signatures")
    if len(genuine_rows) < 2:
        raise DataError("writer-dependent SVMs need genuine signatures of at least two writers (others are negatives)")

    scores: dict[int, dict[str, np.ndarray]] = {}
    for writer in evaluated:
        rng = np.random.default_rng([seed, writer])
        reference_rows = rng.choice(genuine_rows[writer], size=references, replace=False)
        others = rng.permutation([w for w in genuine_rows if w != writer])
        training_writers, random_forgery_writers = np.array_split(others, [(len(others) + 1) // 2])
        negative_rows = np.concatenate([
            genuine_rows[w] if negatives_per_writer is None or negatives_per_writer >= len(genuine_rows[w])
            else rng.choice(genuine_rows[w], size=negatives_per_writer, replace=False)
            for w in training_writers
        ])
        # sigver weighs the genuine class by the class skew and leaves the negatives at 1: the same ratio as
        # class_weight="balanced", but it keeps C on the scale of the negatives, as sigver's C=1 was tuned.
        # SVC rather than LinearSVC: on CEDAR-sized sets it fits in ~5 ms, LinearSVC (another loss, a penalized
        # intercept) took 66-530 ms without converging and scored differently.
        genuine_weight = len(negative_rows) / references
        classifier = make_pipeline(StandardScaler(with_mean=False),
                                   SVC(kernel="linear", C=SVM_C, class_weight={1: genuine_weight, -1: 1.0}))
        classifier.fit(embeddings[np.r_[reference_rows, negative_rows]],
                       np.r_[np.ones(references, int), -np.ones(len(negative_rows), int)])
        test_rows = {
            "genuine": np.setdiff1d(genuine_rows[writer], reference_rows),
            "skilled": np.flatnonzero(~genuine & (writers == writer)),
            "random": np.concatenate([genuine_rows[w] for w in random_forgery_writers] or [np.array([], int)]),
        }
        scores[writer] = {kind: (classifier.decision_function(embeddings[rows]) if len(rows) else np.array([]))
                          for kind, rows in test_rows.items()}
    return scores


def _eer(genuine_scores: np.ndarray, negative_scores: np.ndarray) -> float:
    labels = np.r_[np.ones(len(genuine_scores), int), np.zeros(len(negative_scores), int)]
    return verification_metrics(-np.r_[genuine_scores, negative_scores], labels)["eer_interpolated"]


def writer_dependent_metrics(embeddings, writers, genuine, references: int = 12, negatives_per_writer: int | None = None,
                             seed: int = 0) -> dict:
    """Equal error rates of the writer-dependent protocol on `writer_dependent_scores` (see it for inputs and draws).

    Returns a JSON-able dict: {"references": K, "n_writers": writers evaluated, "skipped_writers": [ids with at most K
    genuine signatures], "skilled": {"eer_global_threshold", "eer_user_thresholds"}, "random": {the same},
    "svm": description}. Both EERs are `verification_metrics`' "eer_interpolated" (the FAR = FRR crossing of the ROC,
    interpolated between its points), negatives being the skilled or the random forgeries: with a global threshold,
    the EER of all evaluated writers' test scores pooled (sigver's "EER"); with user thresholds, the mean over writers
    of each writer's own EER (where sigver pools the error counts at each writer's threshold instead), over the writers
    that have such negatives. A figure is None when no writer has such negatives: no skilled forgeries in the input,
    or (random) only two writers with genuine signatures, so that the other one is needed to train.
    """
    scores = writer_dependent_scores(embeddings, writers, genuine, references, negatives_per_writer, seed)
    all_writers = np.unique(np.asarray(writers).ravel())
    metrics: dict = {
        "references": references,
        "n_writers": len(scores),
        "skipped_writers": [int(w) for w in all_writers if int(w) not in scores],
    }
    for kind in NEGATIVE_KINDS:
        with_negatives = [s for s in scores.values() if len(s[kind])]
        if not with_negatives:
            metrics[kind] = {"eer_global_threshold": None, "eer_user_thresholds": None}
            continue
        pooled_genuine = np.concatenate([s["genuine"] for s in scores.values()])
        pooled_negative = np.concatenate([s[kind] for s in with_negatives])
        metrics[kind] = {
            "eer_global_threshold": _eer(pooled_genuine, pooled_negative),
            "eer_user_thresholds": float(np.mean([_eer(s["genuine"], s[kind]) for s in with_negatives])),
        }
    metrics["svm"] = SVM_DESCRIPTION
    return metrics
