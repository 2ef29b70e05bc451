"""Tests for the quadruplet and margin-softmax losses (CosFace, ArcFace, SphereFace) against NumPy loops written from
each paper's formula, in float32 and float16, with finite gradients where the angle to a class is 0 or π."""

import itertools
import math

import keras
import numpy as np
import pytest
from keras import ops

from sigverify.errors import ConfigError
from sigverify.losses import (
    ArcFaceLoss,
    CosFaceLoss,
    MarginSoftmaxLoss,
    QuadrupletLoss,
    SphereFaceLoss,
    get_loss,
)
from tests.metric_oracles import pairwise_distances_oracle, value_and_gradient

# (batch size, embedding dim, number of classes): 1–2 classes leave no negative pair for the second quadruplet term.
BATCH_SHAPES = [(2, 2, 1), (4, 3, 2), (6, 2, 3), (9, 4, 3), (12, 5, 4), (16, 8, 6), (24, 3, 8), (33, 6, 12)]


def to_float(value):
    return float(ops.convert_to_numpy(ops.cast(value, "float32")))


def random_batch(batch_size, dim, num_classes, seed, dtype="float32"):
    rng = np.random.default_rng(seed)
    return rng.integers(0, num_classes, size=batch_size), rng.normal(size=(batch_size, dim)).astype(dtype)


def quadruplet_loss_oracle(distances, labels, margin, margin2):
    """Batch-hard quadruplet loss by loops over anchors, positives, negatives and negative pairs (the docstring's
    definition): mean of each term over the anchors that define it, summed."""
    labels = np.asarray(labels).reshape(-1)
    batch_size = len(labels)
    first_terms, second_terms = [], []
    for anchor in range(batch_size):
        positives = [distances[anchor, p] for p in range(batch_size) if p != anchor and labels[p] == labels[anchor]]
        negatives = [distances[anchor, n] for n in range(batch_size) if labels[n] != labels[anchor]]
        negative_pairs = [distances[i, j] for i, j in itertools.product(range(batch_size), repeat=2)
                          if labels[i] != labels[j] and labels[anchor] not in (labels[i], labels[j])]
        if positives and negatives:
            first_terms.append(max(0.0, max(positives) - min(negatives) + margin))
        if positives and negative_pairs:
            second_terms.append(max(0.0, max(positives) - min(negative_pairs) + margin2))
    return sum(float(np.mean(terms)) if terms else 0.0 for terms in (first_terms, second_terms))


def margin_softmax_oracle(kind, embeddings, class_weights, labels, class_labels, scale, margin, easy_margin=False):
    """Cross-entropy with each paper's margin, row by row in float64 through θ = arccos(cos θ)."""
    embeddings = np.asarray(embeddings, dtype=np.float64)
    class_weights = np.asarray(class_weights, dtype=np.float64)
    row_losses = []
    for embedding, label in zip(embeddings, np.ravel(labels)):
        if label not in class_labels:
            continue
        target = class_labels.index(label)
        cosines = [float(np.clip(embedding @ class_weights[:, j]
                                 / (np.linalg.norm(embedding) * np.linalg.norm(class_weights[:, j])), -1.0, 1.0))
                   for j in range(class_weights.shape[1])]
        theta = math.acos(cosines[target])
        if kind == "cosface":
            target_value = cosines[target] - margin
        elif kind == "arcface":
            if easy_margin:
                target_value = math.cos(theta + margin) if cosines[target] > 0 else cosines[target]
            elif theta + margin < math.pi:
                target_value = math.cos(theta + margin)
            else:
                target_value = cosines[target] - margin * math.sin(margin)
        else:
            k = min(math.floor(margin * theta / math.pi), margin - 1)
            target_value = (-1) ** k * math.cos(margin * theta) - 2 * k
        logits = [scale * (target_value if j == target else c) for j, c in enumerate(cosines)]
        largest = max(logits)
        row_losses.append(largest + math.log(sum(math.exp(v - largest) for v in logits)) - logits[target])
    return float(np.mean(row_losses)) if row_losses else 0.0


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("metric", ["euclidean", "squared-euclidean", "cosine"])
@pytest.mark.parametrize("batch_size,dim,num_classes", BATCH_SHAPES)
def test_quadruplet_matches_loop_oracle(batch_size, dim, num_classes, metric, dtype):
    labels, embeddings = random_batch(batch_size, dim, num_classes, seed=batch_size * dim, dtype=dtype)
    loss = QuadrupletLoss(margin=0.8, margin2=0.3, distance_metric=metric)
    value = to_float(loss(labels.reshape(-1, 1) if batch_size % 2 else labels, embeddings))
    expected = quadruplet_loss_oracle(pairwise_distances_oracle(embeddings.astype(np.float64), metric), labels, 0.8, 0.3)
    assert value == pytest.approx(expected, rel=1e-4, abs=1e-5)


def test_quadruplet_golden_values():
    """Four classes on a line at 0, 1, 3, 6 with one repeat: every mined distance can be read off by hand."""
    embeddings = np.array([[0.0], [0.5], [1.0], [3.0], [6.0]], dtype="float32")
    labels = np.array([0, 0, 1, 2, 3])
    # Anchors 0, 1 have positives (distance 0.5); nearest negatives 1.0 and 0.5; the closest pair avoiding class 0 is
    # (1.0, 3.0) at 2.0. Term 1: mean(max(0, .5 - 1 + 1), max(0, .5 - .5 + 1)) = 0.75; term 2: max(0, .5 - 2 + 1) = 0.
    assert to_float(QuadrupletLoss(margin=1.0, margin2=1.0)(labels, embeddings)) == pytest.approx(0.75)
    assert to_float(QuadrupletLoss(margin=1.0, margin2=2.0)(labels, embeddings)) == pytest.approx(0.75 + 0.5)


def test_quadruplet_closest_pair_avoids_the_anchors_class_when_the_batch_minimum_involves_it():
    # The closest different-class pair (0.0, 0.1) involves class 0 and class 1: anchors of class 0 must use (2.0, 2.3)
    # of classes 2 and 3 (distance 0.3), those of class 1 the same, those of class 2 or 3 the global pair (0.1).
    embeddings = np.array([[0.0], [0.0], [0.1], [0.1], [2.0], [2.0], [2.3], [2.3]], dtype="float32")
    labels = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    expected = quadruplet_loss_oracle(pairwise_distances_oracle(embeddings, "euclidean"), labels, 0.1, 1.0)
    # anchors 0-3: max(0, 0 - 0.3 + 1) = 0.7; anchors 4-7: max(0, 0 - 0.1 + 1) = 0.9; term 1 is 0 everywhere
    assert expected == pytest.approx((4 * 0.7 + 4 * 0.9) / 8)
    assert to_float(QuadrupletLoss(margin=0.1, margin2=1.0)(labels, embeddings)) == pytest.approx(expected, rel=1e-5)


def test_quadruplet_gradient_is_finite_when_embeddings_coincide():
    labels = np.array([0, 0, 1, 1, 2, 2])
    value, gradient = value_and_gradient(lambda x: QuadrupletLoss()(labels, x), np.zeros((6, 3), dtype="float32"))
    assert value == pytest.approx(1.0 + 0.5)
    assert np.all(np.isfinite(gradient))


MARGIN_LOSSES = {
    "cosface": (CosFaceLoss, {"scale": 30.0, "margin": 0.35}),
    "arcface": (ArcFaceLoss, {"scale": 16.0, "margin": 0.5}),
    "arcface_easy": (ArcFaceLoss, {"scale": 16.0, "margin": 0.5, "easy_margin": True}),
    "arcface_wide": (ArcFaceLoss, {"scale": 8.0, "margin": 2.0}),  # θ + m > π for many rows: the fallback branch
    "sphereface": (SphereFaceLoss, {"scale": 10.0, "margin": 4}),
    "sphereface_m1": (SphereFaceLoss, {"scale": 10.0, "margin": 1}),
    "sphereface_m3": (SphereFaceLoss, {"scale": 5.0, "margin": 3}),
}


def oracle_for(name, loss, embeddings, labels):
    kind = name.split("_")[0]
    weights = ops.convert_to_numpy(loss.class_weights)
    return margin_softmax_oracle(kind, embeddings, weights, labels, loss.class_labels, loss.scale, loss.margin,
                                 easy_margin=getattr(loss, "easy_margin", False))


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("name", list(MARGIN_LOSSES))
@pytest.mark.parametrize("batch_size,dim,num_classes", [(2, 2, 2), (7, 3, 4), (16, 8, 5), (40, 16, 30)])
def test_margin_softmax_matches_loop_oracle(batch_size, dim, num_classes, name, dtype):
    loss_class, params = MARGIN_LOSSES[name]
    rng = np.random.default_rng(batch_size + dim)
    class_labels = sorted(rng.choice(200, size=num_classes, replace=False).tolist())  # labels need not be 0..C-1
    labels = rng.choice(class_labels, size=batch_size)
    embeddings = rng.normal(size=(batch_size, dim)).astype(dtype)
    loss = loss_class(dim, class_labels=class_labels, **params)
    value = to_float(loss(labels if batch_size % 2 else labels.reshape(-1, 1), embeddings))
    assert value == pytest.approx(oracle_for(name, loss, embeddings, labels), rel=2e-4, abs=2e-4)


def test_margin_softmax_leaves_rows_of_unknown_classes_out():
    loss = CosFaceLoss(3, class_labels=[5, 9], scale=10.0)
    embeddings = np.random.default_rng(0).normal(size=(4, 3)).astype("float32")
    labels = np.array([5, 77, 9, 78])
    known_only = to_float(loss(labels[[0, 2]], embeddings[[0, 2]]))
    assert to_float(loss(labels, embeddings)) == pytest.approx(known_only, rel=1e-6)
    assert to_float(loss(np.array([77, 78]), embeddings[:2])) == 0.0


def test_margins_make_the_true_class_harder():
    """With the embedding on its class's column, the margin is all that separates the loss from plain normalized
    softmax: CosFace lowers the target cosine by m, ArcFace turns θ = 0 into cos m, SphereFace keeps cos(m·0) = 1."""
    weights = np.eye(3, dtype="float32")
    embeddings, labels = weights[:2].copy(), np.array([0, 1])
    plain = math.log(1 + 2 * math.exp(-10.0))
    for loss, target in ((CosFaceLoss(3, n_classes=3, scale=10.0, margin=0.35), 1 - 0.35),
                         (ArcFaceLoss(3, n_classes=3, scale=10.0, margin=0.5), math.cos(0.5)),
                         (SphereFaceLoss(3, n_classes=3, scale=10.0, margin=4), 1.0)):
        loss.class_weights.assign(weights)
        expected = math.log(math.exp(10 * target) + 2) - 10 * target
        assert to_float(loss(labels, embeddings)) == pytest.approx(expected, rel=1e-4, abs=1e-6)
        assert expected >= plain - 1e-12


def aligned_batches():
    """Embeddings at angle 0 and π to their class column, and within 1e-4 rad of it (cos θ rounds to ±1)."""
    weights = np.random.default_rng(3).normal(size=(4, 3)).astype("float32")
    columns = weights.T / np.linalg.norm(weights.T, axis=1, keepdims=True)
    nudge = np.array([1e-4, -1e-4, 5e-5, 0.0], dtype="float32")
    labels = np.array([0, 1, 2, 0, 1, 2])
    embeddings = np.stack([columns[0], -columns[1], columns[2] + nudge * 0.1, columns[0] + nudge,
                           -columns[1] - nudge, 3.0 * columns[2]]).astype("float32")
    return weights, embeddings, labels


@pytest.mark.parametrize("name", list(MARGIN_LOSSES))
def test_margin_softmax_gradients_are_finite_at_angles_0_and_pi(name):
    loss_class, params = MARGIN_LOSSES[name]
    weights, embeddings, labels = aligned_batches()
    loss = loss_class(4, n_classes=3, **params)
    loss.class_weights.assign(weights)
    value, gradient = value_and_gradient(lambda x: loss(labels, x), embeddings)
    assert np.isfinite(value) and np.all(np.isfinite(gradient))
    assert value == pytest.approx(oracle_for(name, loss, embeddings, labels), rel=1e-4)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            tape_value = loss(labels, embeddings)
        weight_gradient = tape.gradient(tape_value, loss.trainable_variables)[0]
        assert np.all(np.isfinite(weight_gradient.numpy())) and np.any(weight_gradient.numpy() != 0)


@pytest.mark.parametrize("name", ["cosface", "arcface", "sphereface"])
def test_margin_softmax_losses_round_trip_and_come_by_name(name):
    loss_class, params = MARGIN_LOSSES[name]
    loss = get_loss(name, embedding_dim=5, class_labels=[3, 1, 4], **params)
    assert type(loss) is loss_class and isinstance(loss, MarginSoftmaxLoss)
    assert [v.shape for v in loss.trainable_variables] == [(5, 3)] and loss.trainable_weights == loss.trainable_variables
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert type(restored) is loss_class and restored.get_config() == loss.get_config()
    restored.class_weights.assign(loss.class_weights)
    labels, embeddings = np.array([1, 3, 4, 4]), np.random.default_rng(1).normal(size=(4, 5)).astype("float32")
    assert to_float(restored(labels, embeddings)) == to_float(loss(labels, embeddings))


def test_quadruplet_round_trips_and_comes_by_name():
    loss = get_loss("quadruplet", margin=0.7, margin2=0.2, distance_metric="cosine")
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert type(restored) is QuadrupletLoss and (restored.margin, restored.margin2) == (0.7, 0.2)


def test_bad_margin_softmax_settings_are_refused():
    with pytest.raises(ConfigError, match="n_classes or class_labels"):
        CosFaceLoss(4)
    with pytest.raises(ConfigError, match="two distinct"):
        CosFaceLoss(4, class_labels=[1, 1])
    with pytest.raises(ConfigError, match="integer"):
        SphereFaceLoss(4, n_classes=3, margin=1.5)
    with pytest.raises(ConfigError, match="angle"):
        ArcFaceLoss(4, n_classes=3, margin=4.0)
    with pytest.raises(ConfigError, match="does not take margin2"):
        get_loss("arcface", embedding_dim=4, n_classes=3, margin2=0.1)


def train_with_class_weights(run_dir, epochs, loss_seed=0):
    """A small dense embedding trained with ArcFace by the Trainer: 3 separable classes labelled 10, 20, 30."""
    import tensorflow as tf

    from sigverify.training.tf_engine import Trainer

    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 6)) * 3
    labels = np.repeat([10, 20, 30], 8)
    inputs = (centers[np.repeat([0, 1, 2], 8)] + rng.normal(size=(24, 6))).astype("float32")
    strategy = tf.distribute.get_strategy()
    keras.utils.set_random_seed(loss_seed)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4), keras.layers.UnitNormalization()])
    loss = ArcFaceLoss(4, class_labels=[10, 20, 30], scale=8.0, margin=0.3)
    trainer = Trainer(model, loss, keras.optimizers.Adam(0.05), strategy, run_dir)
    batches = lambda epoch: tf.data.Dataset.from_tensor_slices((inputs, labels)).shuffle(24, seed=epoch).batch(12)
    initial_weights = ops.convert_to_numpy(loss.class_weights).copy()
    result = trainer.fit(batches, epochs=epochs, steps_per_epoch=2, verbose=0)
    return loss, initial_weights, result


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="the Trainer is the TensorFlow loop")
def test_trainer_optimizes_and_checkpoints_the_class_weights_of_the_loss(tmp_path):
    loss, initial, result = train_with_class_weights(tmp_path / "run", epochs=4)
    trained = ops.convert_to_numpy(loss.class_weights)
    assert not np.allclose(trained, initial), "the class weights of the loss were not trained"
    assert result.history["loss"][-1] < result.history["loss"][0]
    # Resuming the finished run restores the class weights from the checkpoint (a fresh loss starts elsewhere).
    resumed, fresh, result = train_with_class_weights(tmp_path / "run", epochs=4, loss_seed=1)
    assert result.initial_epoch == 4 and not np.allclose(fresh, trained)
    np.testing.assert_allclose(ops.convert_to_numpy(resumed.class_weights), trained)
