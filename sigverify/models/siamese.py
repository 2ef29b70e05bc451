"""Siamese models: two inputs through one shared tower, then one Euclidean distance per pair (the contrastive baseline)
or a small head that classifies the pair as genuine, skilled forgery or random forgery (the pair cross-entropy model,
whose P(genuine) scores verification pairs)."""

from __future__ import annotations

import keras
import numpy as np

from sigverify.data.pairs import PAIR_KINDS
from sigverify.distances import paired_distances


@keras.saving.register_keras_serializable(package="sigverify")
class PairDistance(keras.layers.Layer):
    """Euclidean distance between two batches of embeddings, row by row, in float32 (guarded square root)."""

    def __init__(self, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)

    def call(self, inputs):
        first, second = inputs
        return paired_distances(keras.ops.cast(first, "float32"), keras.ops.cast(second, "float32"), metric="euclidean")

    def compute_output_shape(self, input_shape):
        return (input_shape[0][0],)


def _pair_inputs(tower: keras.Model):
    """The two image inputs of a Siamese model around `tower`."""
    return tuple(keras.Input(shape=tower.input.shape[1:], dtype=tower.input.dtype, name=name)
                 for name in ("first", "second"))


def build_siamese(tower: keras.Model, name: str = "siamese") -> keras.Model:
    """(a, b) → distance between tower(a) and tower(b); the tower's weights are shared by construction."""
    first, second = _pair_inputs(tower)
    return keras.Model([first, second], PairDistance(name="distance")([tower(first), tower(second)]), name=name)


PAIR_CLASSIFIER = "pair-classifier"  # the run's scoring, recorded where other runs name their distance
HEAD_HIDDEN_UNITS = 64


@keras.saving.register_keras_serializable(package="sigverify")
class PairFeatures(keras.layers.Layer):
    """|e₁ − e₂| and e₁ ⊙ e₂ of two batches of embeddings, side by side (N × 2D), in float32: symmetric in the two
    images, so a pair scores the same either way round."""

    def __init__(self, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)

    def call(self, inputs):
        first, second = (keras.ops.cast(x, "float32") for x in inputs)
        return keras.ops.concatenate([keras.ops.abs(first - second), first * second], axis=-1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0][0], 2 * input_shape[0][-1])


def build_pair_head(embedding_dim: int, hidden_units: int = HEAD_HIDDEN_UNITS, name: str = "pair_head") -> keras.Model:
    """(e₁, e₂) → logits over PAIR_KINDS (a pair scores by the first, P(genuine)): the pair features, one ReLU layer, a linear layer (all float32)."""
    first = keras.Input(shape=(embedding_dim,), name="first_embedding")
    second = keras.Input(shape=(embedding_dim,), name="second_embedding")
    features = PairFeatures(name="pair_features")([first, second])
    hidden = keras.layers.Dense(hidden_units, activation="relu", dtype="float32", name="pair_hidden")(features)
    logits = keras.layers.Dense(len(PAIR_KINDS), dtype="float32", name="pair_logits")(hidden)
    return keras.Model([first, second], logits, name=name)


def build_pair_classifier(tower: keras.Model, head: keras.Model, name: str = "pair_classifier") -> keras.Model:
    """(a, b) → head(tower(a), tower(b)): the pair cross-entropy model; tower and head weights are shared with the
    models passed in, so training it trains them."""
    first, second = _pair_inputs(tower)
    return keras.Model([first, second], head([tower(first), tower(second)]), name=name)


class PairClassifierScore:
    """A trained pair head as a verification distance: d(a, b) = 1 − P(genuine | a, b) for rows of embeddings, so that
    smaller means "same writer" as for every distance. `name` is what metrics and run files record."""

    name = PAIR_CLASSIFIER

    def __init__(self, head: keras.Model, batch_size: int = 8192):
        self.head = head
        self.batch_size = batch_size

    def genuine_probability(self, first, second):
        first, second = (np.asarray(x, dtype=np.float32) for x in (first, second))
        probabilities = []
        for start in range(0, len(first), self.batch_size):
            logits = self.head.predict_on_batch([first[start : start + self.batch_size],
                                                 second[start : start + self.batch_size]])
            probabilities.append(keras.ops.convert_to_numpy(keras.ops.softmax(logits, axis=-1))[:, 0])
        return np.concatenate(probabilities).astype(np.float64) if probabilities else np.zeros(0)

    def __call__(self, first, second) -> np.ndarray:
        return 1.0 - self.genuine_probability(first, second)

    def all_pairs(self, embeddings) -> np.ndarray:
        """N×N distances between every two rows (exact 0 on the diagonal)."""
        embeddings = np.asarray(embeddings, dtype=np.float32)
        n = len(embeddings)
        distances = np.zeros((n, n))
        rows_per_block = max(1, self.batch_size // max(n, 1))
        for start in range(0, n, rows_per_block):
            block = embeddings[start : start + rows_per_block]
            distances[start : start + len(block)] = self(np.repeat(block, n, axis=0),
                                                         np.tile(embeddings, (len(block), 1))).reshape(len(block), n)
        np.fill_diagonal(distances, 0.0)
        return distances
