"""The models that pretraining trains around a cut backbone (keras and keras.ops only): SimCLR's two-view encoder with
its projection head, MoCo's query and momentum key encoders with their queue of negatives, and the frozen-feature
model (backbone + global average pooling) that pretraining is evaluated with.

Every one of them holds the backbone model itself as a layer, so training them trains the backbone object that the run
then saves (`build_cut_backbone`'s layers: its weights load into any model cut at or after the same layer).
"""

from __future__ import annotations

import keras
from keras import layers, ops

from sigverify.distances import l2_normalize_rows
from sigverify.errors import ConfigError

PROJECTION_HIDDEN_UNITS = 512


def build_projection_head(feature_dim: int, projection_dim: int, hidden_units: int = PROJECTION_HIDDEN_UNITS,
                          name: str = "projection_head") -> keras.Model:
    """SimCLR's and MoCo's g(·): Dense(hidden) → BatchNorm → ReLU → Dense(projection_dim), on pooled features;
    dropped after pretraining. BatchNorm as in SimCLR's and MoCo v3's code: on CEDAR (quick profile) it took SimCLR's
    frozen features from 0.739 to 0.768 max accuracy on skilled forgeries, and without it MoCo did not learn in 3
    epochs (loss near chance, frozen features 0.57 against 0.64 with it)."""
    features = keras.Input(shape=(feature_dim,), name="pooled_features")
    hidden = layers.Dense(hidden_units, use_bias=False, name="projection_hidden")(features)
    hidden = layers.ReLU(name="projection_relu")(layers.BatchNormalization(name="projection_bn")(hidden))
    return keras.Model(features, layers.Dense(projection_dim, name="projection")(hidden), name=name)


def build_frozen_features_model(backbone: keras.Model, name: str = "pretrained_features") -> keras.Model:
    """The backbone's globally average-pooled features: what pretraining is evaluated on (no fine-tuning)."""
    pooled = layers.GlobalAveragePooling2D(name="avg_pool")(backbone.output)
    return keras.Model(backbone.input, pooled, name=name)


def build_encoder(backbone: keras.Model, projection_dim: int, name: str) -> keras.Model:
    """image → backbone → global average pooling → projection head: one tower of SimCLR or MoCo."""
    image = keras.Input(shape=backbone.input.shape[1:], dtype=backbone.input.dtype, name="signature")
    pooled = layers.GlobalAveragePooling2D(name="avg_pool")(backbone(image))
    head = build_projection_head(pooled.shape[-1], projection_dim)
    return keras.Model(image, head(pooled), name=name)


def build_simclr_model(backbone: keras.Model, projection_dim: int) -> keras.Model:
    """(first views B×H×W uint8, second views B×H×W uint8) → projections 2B×D, the first views' rows then the second's
    (the layout NTXentLoss takes). The two views pass through the encoder as one batch, so BatchNorm sees both."""
    shape, dtype = backbone.input.shape[1:], backbone.input.dtype
    first = keras.Input(shape=shape, dtype=dtype, name="first_view")
    second = keras.Input(shape=shape, dtype=dtype, name="second_view")
    both = layers.Concatenate(axis=0, name="both_views")([first, second])
    encoder = build_encoder(backbone, projection_dim, name="encoder")
    return keras.Model([first, second], encoder(both), name="simclr")


class MomentumContrast(keras.Model):
    """MoCo v2 (He et al. 2020; Chen et al. 2020): (query views, key views) → (queries, keys, queue before this batch),
    the tuple MoCoLoss takes; queries and keys L2-normalized, float32.

    The key encoder is a copy of the query encoder that the optimizer never sees (its variables are not trainable):
    at each training call, before the keys are computed, each of its weights moves to momentum·key + (1 − momentum)·
    query. Its BatchNorm layers normalize with batch statistics, as MoCo's do, but over two interleaved halves of the
    key batch (even and odd positions) while the queries are normalized over the whole batch: one device's stand-in
    for MoCo's shuffled BatchNorm, so that a query and its positive key are never normalized with the same images'
    statistics (the paper's "cheating" through BatchNorm). Moving statistics do not serve here: measured on CEDAR, a key
    encoder in inference mode gave almost the same key for every image (mean cosine 0.9999) and MoCo learnt nothing.
    After the loss has its inputs, the batch's keys replace the oldest entries of the queue (K × D, started as random
    unit vectors). Calls with training=False change nothing and use moving statistics. The state updates happen inside
    `call`, so the training loop drives MoCo like any other model. One replica only: each replica would update its own
    queue (`sigverify.pretrain` refuses several); batches of at least 4 images (halves of 2).
    """

    def __init__(self, query_encoder: keras.Model, key_encoder: keras.Model, queue_size: int, momentum: float,
                 **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= momentum < 1.0:
            raise ConfigError(f"MoCo: momentum {momentum}: expected a value in [0, 1)")
        query_weights, key_weights = query_encoder.weights, key_encoder.weights
        if [w.shape for w in query_weights] != [w.shape for w in key_weights]:
            raise ConfigError("MoCo: the key encoder must be built like the query encoder (same weights, same order)")
        key_encoder.set_weights(query_encoder.get_weights())
        for weight in key_weights:  # the layers stay trainable, so that BatchNorm uses batch statistics in training
            weight.trainable = False
        self.query_encoder, self.key_encoder = query_encoder, key_encoder
        self.queue_size, self.momentum = int(queue_size), float(momentum)
        dim = query_encoder.output.shape[-1]
        self.queue = self.add_weight(shape=(self.queue_size, dim), initializer=_random_unit_rows, trainable=False,
                                     dtype="float32", name="queue")
        self.queue_start = self.add_weight(shape=(), initializer="zeros", trainable=False, dtype="int32",
                                           name="queue_start")

    def call(self, inputs, training=False):
        query_views, key_views = inputs
        queries = l2_normalize_rows(ops.cast(self.query_encoder(query_views, training=training), "float32"))
        if training:
            self._momentum_update()
        keys = ops.stop_gradient(l2_normalize_rows(ops.cast(self._encode_keys(key_views, training), "float32")))
        queue = ops.copy(self.queue)  # the value before this batch's keys are written (not the variable itself)
        if training:
            self._enqueue(keys)
        return queries, keys, queue

    def _encode_keys(self, key_views, training):
        if not training:
            return self.key_encoder(key_views, training=False)
        positions = ops.arange(ops.shape(key_views)[0])
        halves = (positions[0::2], positions[1::2])
        keys = ops.concatenate([self.key_encoder(ops.take(key_views, half, axis=0), training=True) for half in halves],
                               axis=0)
        return ops.take(keys, ops.argsort(ops.concatenate(halves)), axis=0)  # back in the batch's order

    def _momentum_update(self) -> None:
        for key_weight, query_weight in zip(self.key_encoder.weights, self.query_encoder.weights):
            key_weight.assign(self.momentum * key_weight + (1.0 - self.momentum) * ops.cast(query_weight,
                                                                                              key_weight.dtype))

    def _enqueue(self, keys) -> None:
        count = ops.shape(keys)[0]
        positions = ops.mod(self.queue_start + ops.arange(count, dtype="int32"), self.queue_size)
        self.queue.assign(ops.scatter_update(self.queue, ops.expand_dims(positions, 1), keys))
        self.queue_start.assign(ops.mod(self.queue_start + count, self.queue_size))


def _random_unit_rows(shape, dtype=None):
    return l2_normalize_rows(keras.initializers.RandomNormal()(shape, dtype=dtype or "float32"))


def build_moco_model(backbone: keras.Model, key_backbone: keras.Model, projection_dim: int, queue_size: int,
                     momentum: float) -> MomentumContrast:
    """MoCo v2 around `backbone` (the query side, which is kept) and `key_backbone` (another backbone built the same
    way; it becomes the momentum copy)."""
    return MomentumContrast(build_encoder(backbone, projection_dim, name="query_encoder"),
                            build_encoder(key_backbone, projection_dim, name="key_encoder"),
                            queue_size, momentum, name="moco")
