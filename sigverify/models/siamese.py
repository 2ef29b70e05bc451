"""Siamese wrapper: two inputs through one shared tower, one Euclidean distance per pair (the contrastive baseline)."""

from __future__ import annotations

import keras

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


def build_siamese(tower: keras.Model, name: str = "siamese") -> keras.Model:
    """(a, b) → distance between tower(a) and tower(b); the tower's weights are shared by construction."""
    first = keras.Input(shape=tower.input.shape[1:], dtype=tower.input.dtype, name="first")
    second = keras.Input(shape=tower.input.shape[1:], dtype=tower.input.dtype, name="second")
    return keras.Model([first, second], PairDistance(name="distance")([tower(first), tower(second)]), name=name)
