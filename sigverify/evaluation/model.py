"""A model scored on an experiment's test writers: the embeddings of both splits, the verification metrics of the test
pairs (threshold of the training writers' pairs for the honest figure), and the protocol's figures beside the post's:
verification against K = 1, 5, 12 enrolled references, writer identification, bootstrap intervals over test writers."""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np

from sigverify.data.prepare import ExperimentData, SplitData
from sigverify.distances import metric_name
from sigverify.evaluation.baselines import raw_pixel_embeddings
from sigverify.evaluation.metrics import (
    BOOTSTRAP_RESAMPLES,
    PAIR_SETS,
    PairSetScores,
    WriterPairScores,
    bootstrap_intervals,
    evaluate_embeddings,
    identification_metrics,
    reference_verification,
)
from sigverify.models.inference import embed

REFERENCE_COUNTS = (1, 5, 12)


@dataclass
class Evaluation:
    metrics: dict  # what metrics.json holds of the evaluation
    scores: dict[str, PairSetScores]  # "hard", "easy": each test pair's distance and label, the ROC
    test_embeddings: np.ndarray  # float32 N×D, rows of data.test.index
    train_embeddings: np.ndarray


def evaluate_model(model: keras.Model, data: ExperimentData, distance: str = "cosine",
                   embeddings: tuple[np.ndarray, np.ndarray] | None = None) -> Evaluation:
    """Embed the test and training writers' images (or take `embeddings` (test, train) an experiment already has) and
    score the test pairs by `distance`."""
    if embeddings is None:
        embeddings = embed(model, data.test.images), embed(model, data.train.images)
    test_embeddings, train_embeddings = embeddings
    metrics, scores = score_test_split(test_embeddings, data.test, distance, train_embeddings, data.train.pairs)
    return Evaluation(metrics, scores, test_embeddings, train_embeddings)


def score_test_split(test_embeddings: np.ndarray, test: SplitData, distance: str = "cosine",
                     train_embeddings: np.ndarray | None = None, train_pairs=None) -> tuple[dict, dict[str, PairSetScores]]:
    """The metrics of a split's pairs from its embeddings (float32 N×D, rows of `test.index`): the pair sets (with
    the honest threshold when training embeddings and pairs are given), verification against K references, writer
    identification and bootstrap intervals over the split's writers. Returns (metrics, scores per pair set)."""
    metrics, scores = evaluate_embeddings(test_embeddings, test.pairs, metric=distance,
                                          train_embeddings=train_embeddings, train_pairs=train_pairs)
    writers, genuine = test.index["writer"].to_numpy(), test.index["genuine"].to_numpy()
    pairs_by_set = {name: PAIR_SETS[name](test.pairs) for name in scores}
    intervals = {name: bootstrap_intervals([WriterPairScores(s.distances, s.same, pairs_by_set[name]["writer"].to_numpy(),
                                                             metrics[name]["train_threshold"])],
                                           n_resamples=BOOTSTRAP_RESAMPLES)
                 for name, s in scores.items()}
    metrics.update({
        "distance": metric_name(distance),
        "reference_k": reference_verification(test_embeddings, writers, genuine, REFERENCE_COUNTS, distance),
        "identification": identification_metrics(test_embeddings, writers, genuine, distance),
        "confidence_intervals": {"level": 0.95, "resamples": BOOTSTRAP_RESAMPLES, "over": "test writers", **intervals},
    })
    return metrics, scores


def reference_points(model: keras.Model, data: ExperimentData) -> dict:
    """What a trained model must beat on the test pairs: raw pixels at the run's preprocessing, and the same model
    before training (max accuracy, skilled and random forgeries)."""
    points = {}
    for name, embeddings in (("raw_pixels", raw_pixel_embeddings(data.test.images)),
                             ("untrained_model", embed(model, data.test.images))):
        metrics, _ = evaluate_embeddings(embeddings, data.test.pairs, metric="cosine")
        points[name] = {k: metrics[k]["max_accuracy"] for k in ("hard", "easy") if metrics.get(k)}
    return points
