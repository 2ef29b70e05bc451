"""Tests for sigverify.losses against NumPy loops written from SPEC.md, and against tfa's tiled formulation."""

import time

import keras
import numpy as np
import pytest
from keras import ops

from sigverify.distances import pairwise_distances
from sigverify.errors import ConfigError
from sigverify.losses import (
    _MAX_POSITIVE_PASSES,
    ContrastiveLoss,
    TripletHardLoss,
    TripletSemiHardLoss,
    count_positive_pairs,
    get_loss,
)
from tests.metric_oracles import (
    compiled_results,
    contrastive_loss_oracle,
    hard_loss_oracle,
    largest_intermediate_size,
    naive_tiled_semihard_loss,
    pairwise_distances_oracle,
    semihard_loss_oracle,
    value_and_gradient,
)


@keras.saving.register_keras_serializable(package="sigverify_tests")
def manhattan_distances(embeddings):
    return ops.sum(ops.abs(ops.expand_dims(embeddings, 1) - ops.expand_dims(embeddings, 0)), axis=-1)


METRICS = ["euclidean", "squared-euclidean", "cosine", manhattan_distances]

# (batch size, embedding dim, number of classes): few classes leave anchors without negatives,
# many leave anchors (or the whole batch) without positives.
BATCH_SHAPES = [
    (2, 2, 1), (2, 3, 2), (3, 2, 2), (5, 4, 1), (5, 2, 3), (8, 3, 2), (8, 16, 8), (11, 5, 4),
    (13, 2, 3), (16, 8, 5), (21, 6, 2), (24, 12, 12), (32, 8, 6), (33, 16, 30), (40, 4, 3), (40, 10, 18),
]


HALF_DTYPES = ["float16", "bfloat16"]
HALF_EPSILON = {"float16": 2.0**-10, "bfloat16": 2.0**-7}  # spacing of the half dtypes just above 1


def random_batch(batch_size, dim, num_classes, seed, dtype="float32"):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, size=batch_size)
    embeddings = rng.normal(size=(batch_size, dim)).astype(dtype)
    return labels, embeddings


def labels_in_shape(labels, column):
    return labels.reshape(-1, 1) if column else labels


def to_float(value):
    return float(ops.convert_to_numpy(ops.cast(value, "float32")))


def our_distances(embeddings, metric):
    return ops.convert_to_numpy(pairwise_distances(embeddings.astype("float32"), metric)).astype(np.float64)


def oracle_distances(embeddings, metric):
    if callable(metric):
        return our_distances(embeddings, metric)
    return pairwise_distances_oracle(embeddings, metric)


def test_golden_value():
    loss = TripletSemiHardLoss()
    value = loss(y_true=np.array([0, 0]), y_pred=np.array([[0.0, 1.0], [1.0, 0.0]], dtype="float32"))
    assert to_float(value) == pytest.approx(1.0 + np.sqrt(2.0), rel=1e-6)
    assert to_float(value) == pytest.approx(2.4142137, rel=1e-7)


@pytest.mark.parametrize("metric", METRICS, ids=lambda metric: getattr(metric, "__name__", metric))
@pytest.mark.parametrize("batch_size,dim,num_classes", BATCH_SHAPES)
def test_semihard_matches_loop_oracle(batch_size, dim, num_classes, metric):
    labels, embeddings = random_batch(batch_size, dim, num_classes, seed=batch_size * 100 + dim)
    margin = 0.2 if metric == "cosine" else 1.0
    loss = TripletSemiHardLoss(margin=margin, distance_metric=metric)
    value = to_float(loss(labels_in_shape(labels, batch_size % 2), embeddings))
    # The oracle picks negatives on our distance matrix, so that rounding cannot flip a choice.
    assert value == pytest.approx(semihard_loss_oracle(our_distances(embeddings, metric), labels, margin), rel=1e-5)
    assert value == pytest.approx(semihard_loss_oracle(oracle_distances(embeddings, metric), labels, margin), rel=1e-4)


@pytest.mark.parametrize("metric", ["euclidean", "squared-euclidean"])
@pytest.mark.parametrize("seed", range(4))
def test_semihard_with_exact_ties_matches_loop_oracle(metric, seed):
    """Embeddings on a small integer grid give many exactly equal distances, where "D[a,n] > D[a,p]" matters."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, size=24)
    embeddings = rng.integers(0, 3, size=(24, 2)).astype("float32")
    distances = our_distances(embeddings, metric)
    exact = pairwise_distances_oracle(embeddings, metric)
    np.testing.assert_allclose(distances, exact, rtol=1e-6)
    np.testing.assert_array_equal(distances[:, :, None] == distances[:, None, :], exact[:, :, None] == exact[:, None, :])
    differ = labels[:, None] != labels[None, :]
    tied_negatives = [(a, p) for a in range(24) for p in range(24) if a != p and labels[a] == labels[p]
                      and np.any(differ[a] & (distances[a] == distances[a, p]))]
    assert tied_negatives, "the grid should produce negatives tied with a positive"
    value = to_float(TripletSemiHardLoss(distance_metric=metric)(labels, embeddings))
    assert value == pytest.approx(semihard_loss_oracle(distances, labels, 1.0), rel=1e-6)


def test_semihard_on_collapsed_embeddings_is_the_margin():
    labels = np.array([0, 0, 1, 1, 2])
    value, gradient = value_and_gradient(
        lambda x: TripletSemiHardLoss(margin=0.5)(labels, x), np.zeros((5, 4), dtype="float32")
    )
    assert value == pytest.approx(0.5)
    assert np.all(np.isfinite(gradient))


@pytest.mark.parametrize("half_dtype", HALF_DTYPES)
@pytest.mark.parametrize("batch_size,dim,num_classes", [(8, 3, 2), (24, 12, 5), (40, 16, 10)])
def test_semihard_computes_half_precision_inputs_in_float32(batch_size, dim, num_classes, half_dtype):
    labels, embeddings = random_batch(batch_size, dim, num_classes, seed=batch_size)
    half_embeddings = ops.cast(embeddings, half_dtype)
    rounded = ops.convert_to_numpy(ops.cast(half_embeddings, "float32"))
    reference = to_float(TripletSemiHardLoss()(labels, rounded))
    assert to_float(TripletSemiHardLoss()(labels, half_embeddings)) == reference
    assert reference == pytest.approx(semihard_loss_oracle(our_distances(rounded, "euclidean"), labels, 1.0), rel=1e-5)
    # A loss whose dtype is half precision still computes in float32 and only rounds the result.
    half_loss = TripletSemiHardLoss(dtype=half_dtype)(labels, half_embeddings)
    assert keras.backend.standardize_dtype(half_loss.dtype) == half_dtype
    assert to_float(half_loss) == to_float(ops.cast(reference, half_dtype))


@pytest.mark.parametrize("loss", [TripletSemiHardLoss(), TripletHardLoss()], ids=lambda loss: type(loss).__name__)
def test_batch_without_positive_pair_gives_finite_values(loss):
    labels = np.arange(6)
    value, gradient = value_and_gradient(lambda x: loss(labels, x), random_batch(6, 3, 6, seed=0)[1])
    assert np.isfinite(value) and np.all(np.isfinite(gradient))
    if isinstance(loss, TripletSemiHardLoss):
        assert value == 0.0
        np.testing.assert_array_equal(gradient, 0.0)


def test_count_positive_pairs_counts_ordered_pairs():
    assert int(ops.convert_to_numpy(count_positive_pairs(np.arange(6)))) == 0
    assert int(ops.convert_to_numpy(count_positive_pairs(np.array([0, 0, 1, 1, 1, 2])))) == 2 + 6
    assert int(ops.convert_to_numpy(count_positive_pairs(np.array([[3], [3], [3]])))) == 6


@pytest.mark.parametrize("metric", ["euclidean", "squared-euclidean", "cosine"])
@pytest.mark.parametrize("batch_size,dim,num_classes,seed", [(4, 2, 2, 0), (10, 3, 3, 1), (16, 5, 4, 2), (16, 8, 1, 3)])
def test_semihard_value_and_gradient_match_tiled_tfa_formulation(batch_size, dim, num_classes, seed, metric):
    labels, embeddings = random_batch(batch_size, dim, num_classes, seed=seed)
    labels[:2] = labels[0]  # at least one positive pair, or tfa's formulation divides by 0
    ours, our_gradient = value_and_gradient(lambda x: TripletSemiHardLoss(distance_metric=metric)(labels, x), embeddings)
    tiled, tiled_gradient = value_and_gradient(
        lambda x: naive_tiled_semihard_loss(labels, x, distance_metric=metric), embeddings
    )
    assert ours == pytest.approx(tiled, rel=1e-6)
    assert np.any(our_gradient != 0.0)
    np.testing.assert_allclose(our_gradient, tiled_gradient, rtol=1e-5, atol=1e-6)


def test_semihard_gradient_is_finite_when_embeddings_coincide():
    labels, embeddings = random_batch(8, 4, 3, seed=5)
    embeddings[1] = embeddings[0]
    embeddings[2] = embeddings[0]
    value, gradient = value_and_gradient(lambda x: TripletSemiHardLoss()(labels, x), embeddings)
    assert np.isfinite(value) and np.all(np.isfinite(gradient))


def test_semihard_memory_grows_as_batch_squared():
    batch_size, dim = 96, 4
    labels, embeddings = random_batch(batch_size, dim, 10, seed=0)
    labels = labels.astype("float32")
    ours = largest_intermediate_size(lambda x, y: TripletSemiHardLoss()(y, x), embeddings, labels)
    tiled = largest_intermediate_size(lambda x, y: naive_tiled_semihard_loss(y, x), embeddings, labels)
    assert ours <= 2 * batch_size * (batch_size + 1)
    assert tiled >= batch_size**3  # the check can see a B×B×B tensor


def test_semihard_runs_a_large_batch_quickly():
    labels, embeddings = random_batch(2048, 32, 200, seed=0)
    start = time.perf_counter()
    value, gradient = value_and_gradient(lambda x: TripletSemiHardLoss()(labels, x), embeddings)
    assert time.perf_counter() - start < 60.0
    assert np.isfinite(value) and gradient.shape == (2048, 32) and np.all(np.isfinite(gradient))


# The loss searches the negatives of each anchor's positives one pass per positive, up to _MAX_POSITIVE_PASSES of them,
# and sorts the rows beyond. Each case is the number of positives of the largest label group of a batch: few, the most
# the passes take, one more, many more; the other groups are smaller, the rest singletons (anchors without a positive).
LARGEST_GROUP_POSITIVES = [1, 3, _MAX_POSITIVE_PASSES, _MAX_POSITIVE_PASSES + 1, 50]


def grouped_labels(largest_group_positives, batch_size, seed):
    largest = largest_group_positives + 1
    sizes = [largest, max(2, largest // 2), 3, 2, 2]
    sizes += [1] * (batch_size - sum(sizes))
    return np.random.default_rng(seed).permutation(np.repeat(np.arange(len(sizes)), sizes))


@pytest.mark.parametrize("metric", ["euclidean", "squared-euclidean"])
@pytest.mark.parametrize("positives", LARGEST_GROUP_POSITIVES)
def test_semihard_on_uneven_groups_with_exact_ties_matches_loop_oracle(positives, metric):
    """96 embeddings on a small integer grid (many equal distances), anchors with 0 to `positives` positives."""
    labels = grouped_labels(positives, 96, seed=positives)
    embeddings = np.random.default_rng(1).integers(0, 4, size=(96, 3)).astype("float32")
    distances = our_distances(embeddings, metric)
    value = to_float(TripletSemiHardLoss(distance_metric=metric)(labels, embeddings))
    assert value == pytest.approx(semihard_loss_oracle(distances, labels, 1.0), rel=1e-6)


@pytest.mark.parametrize("positives", LARGEST_GROUP_POSITIVES)
def test_semihard_on_uneven_groups_matches_tiled_tfa_value_and_gradient(positives):
    labels = grouped_labels(positives, 96, seed=positives)
    embeddings = np.random.default_rng(1).normal(size=(96, 6)).astype("float32")
    ours, our_gradient = value_and_gradient(lambda x: TripletSemiHardLoss(margin=0.5)(labels, x), embeddings)
    tiled, tiled_gradient = value_and_gradient(lambda x: naive_tiled_semihard_loss(labels, x, margin=0.5), embeddings)
    assert ours == pytest.approx(tiled, rel=1e-6)
    assert ours == pytest.approx(semihard_loss_oracle(our_distances(embeddings, "euclidean"), labels, 0.5), rel=1e-5)
    assert np.any(our_gradient != 0.0)
    np.testing.assert_allclose(our_gradient, tiled_gradient, rtol=1e-5, atol=1e-6)


def shifted_distances(embeddings):
    """Euclidean distances less 3: a metric with negative values, whose float32 bit patterns do not sort as they do."""
    return pairwise_distances(embeddings, "euclidean") - 3.0


@pytest.mark.parametrize("metric", [shifted_distances, manhattan_distances], ids=lambda metric: metric.__name__)
def test_semihard_with_a_callable_metric_matches_tiled_tfa_value_and_gradient(metric):
    labels = grouped_labels(3, 48, seed=3)
    embeddings = np.random.default_rng(4).normal(size=(48, 4)).astype("float32")
    loss = TripletSemiHardLoss(margin=0.5, distance_metric=metric)
    ours, our_gradient = value_and_gradient(lambda x: loss(labels, x), embeddings)
    tiled, tiled_gradient = value_and_gradient(
        lambda x: naive_tiled_semihard_loss(labels, x, margin=0.5, distance_metric=metric), embeddings
    )
    assert ours == pytest.approx(tiled, rel=1e-6)
    assert ours == pytest.approx(semihard_loss_oracle(our_distances(embeddings, metric), labels, 0.5), rel=1e-5)
    np.testing.assert_allclose(our_gradient, tiled_gradient, rtol=1e-5, atol=1e-6)


def test_semihard_on_float64_embeddings_matches_loop_oracle():
    """Distances in float64 too, which the passes (comparing float32 bit patterns) leave to the sorted rows."""
    labels, embeddings = random_batch(24, 5, 4, seed=7, dtype="float64")
    value = ops.convert_to_numpy(TripletSemiHardLoss(dtype="float64")(labels, embeddings))
    expected = semihard_loss_oracle(pairwise_distances_oracle(embeddings, "euclidean"), labels, 1.0)
    assert value == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("metric", METRICS, ids=lambda metric: getattr(metric, "__name__", metric))
@pytest.mark.parametrize("batch_size,dim,num_classes", BATCH_SHAPES[::2])
def test_hard_matches_loop_oracle(batch_size, dim, num_classes, metric, soft):
    labels, embeddings = random_batch(batch_size, dim, num_classes, seed=batch_size + dim)
    loss = TripletHardLoss(margin=0.7, soft=soft, distance_metric=metric)
    value = to_float(loss(labels_in_shape(labels, batch_size % 2), embeddings))
    assert value == pytest.approx(hard_loss_oracle(oracle_distances(embeddings, metric), labels, 0.7, soft), rel=1e-4)


def test_hard_gradient_is_finite_when_embeddings_coincide():
    labels = np.array([0, 0, 1, 1])
    embeddings = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]], dtype="float32")
    value, gradient = value_and_gradient(lambda x: TripletHardLoss()(labels, x), embeddings)
    assert np.isfinite(value) and np.all(np.isfinite(gradient))


@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("half_dtype", HALF_DTYPES)
@pytest.mark.parametrize("batch_size,dim,num_classes", [(2, 2, 1), (5, 2, 3), (8, 3, 2), (24, 12, 5), (40, 16, 10)])
def test_hard_computes_half_precision_inputs_in_float32(batch_size, dim, num_classes, half_dtype, soft):
    labels, embeddings = random_batch(batch_size, dim, num_classes, seed=batch_size * 7 + dim)
    half_embeddings = ops.cast(embeddings, half_dtype)
    rounded = ops.convert_to_numpy(ops.cast(half_embeddings, "float32"))
    loss = TripletHardLoss(margin=0.7, soft=soft)
    value = loss(labels_in_shape(labels, batch_size % 2), half_embeddings)
    assert keras.backend.standardize_dtype(value.dtype) == "float32"  # the loss's dtype (floatx), not the input's
    # Distances and mining are done in float32 on the half-rounded inputs, so the oracle on those inputs agrees to
    # float32 accuracy (as in test_hard_matches_loop_oracle); a half-precision computation would be off by ~1e-3.
    expected = hard_loss_oracle(pairwise_distances_oracle(rounded, "euclidean"), labels, 0.7, soft)
    assert to_float(value) == pytest.approx(expected, rel=1e-4, abs=1e-6)
    reference = to_float(loss(labels, rounded))
    assert to_float(value) == reference
    # A loss whose dtype is half precision still computes in float32 and only rounds the result.
    half_loss = TripletHardLoss(margin=0.7, soft=soft, dtype=half_dtype)(labels, half_embeddings)
    assert keras.backend.standardize_dtype(half_loss.dtype) == half_dtype
    assert to_float(half_loss) == to_float(ops.cast(reference, half_dtype))
    _, gradient = value_and_gradient(lambda x: loss(labels, x), half_embeddings)
    gradient = np.asarray(gradient, dtype=np.float32)
    assert gradient.shape == (batch_size, dim) and np.all(np.isfinite(gradient))
    if reference > 0 and len(set(labels)) > 1:  # with one class, hardest positive and negative move together
        assert np.any(gradient != 0)


@pytest.mark.parametrize("half_dtype", HALF_DTYPES)
def test_hard_gradient_is_finite_when_half_precision_embeddings_coincide(half_dtype):
    labels = np.array([0, 0, 1, 1])
    embeddings = ops.cast(np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]], dtype="float32"), half_dtype)
    loss = TripletHardLoss(dtype=half_dtype)
    # (Cast to float32 outside the loss: keras.ops.convert_to_numpy cannot convert a scalar bfloat16 tensor on TF.)
    value, gradient = value_and_gradient(lambda x: ops.cast(loss(labels, x), "float32"), embeddings)
    # Hardest positive 0, hardest negative √2: max(0, 0 − √2 + 1) = 0, and no NaN from √0 in the gradient.
    assert float(value) == 0.0
    assert np.all(np.isfinite(np.asarray(gradient, dtype=np.float32)))


@pytest.mark.parametrize("margin", [0.5, 1.0])
@pytest.mark.parametrize("pairs,column", [(1, False), (7, True), (50, False)])
def test_contrastive_matches_loop_oracle(pairs, column, margin):
    rng = np.random.default_rng(pairs)
    distances = np.abs(rng.normal(scale=0.8, size=pairs)).astype("float32")
    similar = rng.integers(0, 2, size=pairs)
    value = to_float(ContrastiveLoss(margin=margin)(labels_in_shape(similar, column), labels_in_shape(distances, column)))
    assert value == pytest.approx(contrastive_loss_oracle(distances, similar, margin), rel=1e-5)


def test_contrastive_golden_values():
    loss = ContrastiveLoss(margin=1.0)
    assert to_float(loss(np.array([1.0]), np.array([0.5]))) == pytest.approx(0.25)
    assert to_float(loss(np.array([0.0]), np.array([0.25]))) == pytest.approx(0.5625)
    assert to_float(loss(np.array([0.0]), np.array([1.5]))) == 0.0


@pytest.mark.parametrize("half_dtype", HALF_DTYPES)
@pytest.mark.parametrize("pairs,column", [(1, False), (7, True), (50, False), (257, True)])
def test_contrastive_half_precision_inputs_match_loop_oracle(pairs, column, half_dtype):
    rng = np.random.default_rng(pairs + 11)
    distances = np.abs(rng.normal(scale=0.8, size=pairs)).astype("float32")
    similar = rng.integers(0, 2, size=pairs)
    similar[0] = 1  # every batch has a similar pair: a positive loss, so a nonzero gradient to check
    half_distances = ops.cast(labels_in_shape(distances, column), half_dtype)
    rounded = ops.convert_to_numpy(ops.cast(half_distances, "float32")).astype(np.float64)
    expected = contrastive_loss_oracle(rounded, similar, 0.8)
    assert expected > 0
    loss = ContrastiveLoss(margin=0.8)
    value = loss(labels_in_shape(similar, column), half_distances)
    # Keras converts y_pred to the loss's dtype (float32 by default) before `call`: half inputs are computed in float32
    # and agree with the oracle on the rounded inputs to float32 accuracy (half precision would be off by ~1e-3).
    assert keras.backend.standardize_dtype(value.dtype) == "float32"
    assert to_float(value) == pytest.approx(expected, rel=1e-5)
    # A ContrastiveLoss whose dtype is half precision returns that dtype; it computes the mean in float32 on the
    # half-rounded inputs and only rounds the result, so it is within a few half ulps of the oracle.
    half_value = ContrastiveLoss(margin=0.8, dtype=half_dtype)(labels_in_shape(similar, column), half_distances)
    assert keras.backend.standardize_dtype(half_value.dtype) == half_dtype
    assert to_float(half_value) == pytest.approx(expected, rel=4 * HALF_EPSILON[half_dtype])
    _, gradient = value_and_gradient(lambda x: loss(similar, x), half_distances)
    gradient = np.asarray(gradient, dtype=np.float32)
    assert gradient.shape == tuple(half_distances.shape) and np.all(np.isfinite(gradient)) and np.any(gradient != 0)


@pytest.mark.parametrize(
    "loss",
    [TripletSemiHardLoss(margin=0.3, distance_metric="cosine"), TripletHardLoss(soft=True),
     TripletSemiHardLoss(distance_metric=manhattan_distances), ContrastiveLoss(margin=0.5)],
    ids=lambda loss: type(loss).__name__,
)
def test_losses_round_trip_through_keras_serialization(loss):
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert type(restored) is type(loss)
    assert restored.get_config() == loss.get_config()
    labels, embeddings = random_batch(12, 1 if isinstance(loss, ContrastiveLoss) else 4, 3, seed=1)
    y_true = (labels > 0).astype("float32") if isinstance(loss, ContrastiveLoss) else labels
    y_pred = np.abs(embeddings[:, 0]) if isinstance(loss, ContrastiveLoss) else embeddings
    assert to_float(restored(y_true, y_pred)) == to_float(loss(y_true, y_pred))


def test_get_loss_by_name():
    semihard = get_loss("semihard", margin=0.5, distance_metric="squared-euclidean")
    assert isinstance(semihard, TripletSemiHardLoss)
    assert (semihard.margin, semihard.distance_metric) == (0.5, "squared-euclidean")
    assert get_loss("hard", soft=True).soft
    assert get_loss("contrastive", margin=0.5).margin == 0.5


def test_get_loss_rejects_unknown_names_and_parameters():
    with pytest.raises(ConfigError, match="semihard, hard, contrastive"):
        get_loss("triplet")
    with pytest.raises(ConfigError, match="does not take soft"):
        get_loss("semihard", soft=True)
    with pytest.raises(ConfigError, match="euclidean, squared-euclidean, cosine"):
        get_loss("semihard", distance_metric="angular")


@pytest.mark.parametrize("loss", [TripletSemiHardLoss(), TripletHardLoss()], ids=lambda loss: type(loss).__name__)
def test_triplet_losses_compile_for_any_batch_size(loss):
    for batch_size in (2, 9, 30):
        labels, embeddings = random_batch(batch_size, 4, 3, seed=batch_size)
        labels = labels.astype("float32")
        eager = to_float(loss(labels, embeddings))
        for result in compiled_results(lambda x, y: loss(y, x), embeddings, labels):
            assert float(result) == pytest.approx(eager, rel=1e-6)


def test_semihard_trains_a_model_with_a_partial_last_batch():
    """Model.fit (XLA-compiled) with batches of 8, 8 and 4: the loss must trace with a varying batch size."""
    labels, embeddings = random_batch(20, 6, 4, seed=2)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(3), keras.layers.UnitNormalization()])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=TripletSemiHardLoss(), jit_compile=True)
    history = model.fit(embeddings, labels, batch_size=8, epochs=2, shuffle=False, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
