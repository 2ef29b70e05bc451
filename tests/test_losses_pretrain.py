"""The self-supervised pretraining losses, NT-Xent (SimCLR) and InfoNCE with a queue (MoCo), against NumPy loops
written from their papers' formulas, in float32 and float16, with golden values worked by hand."""

import math

import numpy as np
import pytest
from keras import ops

from sigverify.errors import ConfigError
from sigverify.losses import MoCoLoss, NTXentLoss, get_loss, labelled_losses, loss_from_settings
from sigverify.settings import build_config
from tests.conftest import load_recipe
from tests.metric_oracles import value_and_gradient

# (images N, embedding dim D): N = 1 leaves each row its partner as the only other row.
VIEW_SHAPES = [(1, 2), (2, 3), (3, 4), (5, 2), (8, 16), (13, 7)]
# (queries N, queue size K, embedding dim D)
QUEUE_SHAPES = [(1, 1, 2), (2, 4, 3), (4, 16, 8), (7, 3, 5), (16, 64, 12)]
IGNORED = np.zeros(1, np.float32)  # the targets, which self-supervised losses ignore


def to_float(value):
    return float(ops.convert_to_numpy(ops.cast(value, "float32")))


def unit(rows):
    rows = np.asarray(rows, dtype=np.float64)
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-6)


def ntxent_oracle(first_views, second_views, temperature):
    """SimCLR's ℓ(i, j) = −log(exp(sim(z_i, z_j)/τ) / Σ_{k≠i} exp(sim(z_i, z_k)/τ)) over all 2N rows, averaged, with
    sim the cosine similarity and z = [first views; second views]."""
    z = unit(np.concatenate([first_views, second_views]))
    n = len(first_views)
    losses = []
    for i in range(2 * n):
        j = i + n if i < n else i - n
        denominator = sum(math.exp(z[i] @ z[k] / temperature) for k in range(2 * n) if k != i)
        losses.append(-math.log(math.exp(z[i] @ z[j] / temperature) / denominator))
    return float(np.mean(losses))


def moco_oracle(query, key, queue, temperature):
    """MoCo's L_q = −log(exp(q·k₊/τ) / (exp(q·k₊/τ) + Σ_{k₋ in queue} exp(q·k₋/τ))), averaged over the queries."""
    query, key, queue = unit(query), unit(key), unit(queue)
    losses = []
    for q, positive in zip(query, key):
        numerator = math.exp(q @ positive / temperature)
        losses.append(-math.log(numerator / (numerator + sum(math.exp(q @ negative / temperature) for negative in queue))))
    return float(np.mean(losses))


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("temperature", [0.1, 0.5])
@pytest.mark.parametrize("n,dim", VIEW_SHAPES)
def test_ntxent_matches_loop_oracle(n, dim, temperature, dtype):
    rng = np.random.default_rng(n * 100 + dim)
    first, second = rng.normal(size=(2, n, dim)).astype(dtype)
    expected = ntxent_oracle(first.astype(np.float64), second.astype(np.float64), temperature)
    loss = NTXentLoss(temperature=temperature)
    targets = np.zeros(2 * n, np.float32)
    tolerance = {"rel": 1e-4, "abs": 1e-4} if dtype == "float32" else {"rel": 2e-3, "abs": 2e-3}
    assert to_float(loss(targets, np.concatenate([first, second]))) == pytest.approx(expected, **tolerance)
    assert to_float(loss(targets, (first, second))) == pytest.approx(expected, **tolerance)


def test_ntxent_golden_value_and_symmetry():
    # Images 0 and 1 are orthogonal unit vectors, each view equal to its image: row i sees its partner at cosine 1 and
    # two rows at cosine 0, so ℓ = −log(e^{1/τ} / (e^{1/τ} + 2)) = log(1 + 2e^{−1/τ}) for every row.
    views = np.array([[1.0, 0.0], [0.0, 3.0]], np.float32)  # lengths do not matter: rows are normalized
    for temperature in (0.2, 1.0):
        expected = math.log(1 + 2 * math.exp(-1 / temperature))
        assert to_float(NTXentLoss(temperature)(IGNORED, (views, views))) == pytest.approx(expected, rel=1e-4, abs=1e-6)
    rng = np.random.default_rng(0)
    first, second = rng.normal(size=(2, 6, 4)).astype(np.float32)
    loss = NTXentLoss(0.3)
    # Swapping which view comes first, or reordering the images, changes nothing.
    order = rng.permutation(6)
    value = to_float(loss(IGNORED, (first, second)))
    assert to_float(loss(IGNORED, (second, first))) == pytest.approx(value, rel=1e-6)
    assert to_float(loss(IGNORED, (first[order], second[order]))) == pytest.approx(value, rel=1e-6)
    # Breaking the pairing makes it worse when the views agree.
    close = first + 0.05 * rng.normal(size=first.shape).astype(np.float32)
    assert to_float(loss(IGNORED, (first, close))) < to_float(loss(IGNORED, (first, close[order])))


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("n,queue_size,dim", QUEUE_SHAPES)
def test_moco_matches_loop_oracle(n, queue_size, dim, dtype):
    rng = np.random.default_rng(n * 1000 + queue_size + dim)
    query, key = rng.normal(size=(2, n, dim)).astype(dtype)
    queue = rng.normal(size=(queue_size, dim)).astype(dtype)
    expected = moco_oracle(query.astype(np.float64), key.astype(np.float64), queue.astype(np.float64), 0.2)
    tolerance = {"rel": 1e-4, "abs": 1e-4} if dtype == "float32" else {"rel": 2e-3, "abs": 2e-3}
    assert to_float(MoCoLoss(0.2)(np.zeros(n, np.float32), (query, key, queue))) == pytest.approx(expected, **tolerance)


def test_moco_golden_value():
    # The query equals its key (cosine 1) and is orthogonal to both queue entries: −log(e^{1/τ} / (e^{1/τ} + 2)).
    query = np.array([[2.0, 0.0, 0.0]], np.float32)
    queue = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, -4.0]], np.float32)
    expected = math.log(1 + 2 * math.exp(-1 / 0.5))
    assert to_float(MoCoLoss(0.5)(IGNORED, (query, query, queue))) == pytest.approx(expected, rel=1e-5)


def test_gradients_are_finite_and_reach_only_the_query():
    rng = np.random.default_rng(1)
    views = rng.normal(size=(8, 5)).astype(np.float32)
    value, gradient = value_and_gradient(lambda x: NTXentLoss(0.1)(IGNORED, x), views)
    assert np.isfinite(value) and np.all(np.isfinite(gradient)) and np.abs(gradient).sum() > 0
    key, queue = rng.normal(size=(4, 5)).astype(np.float32), rng.normal(size=(10, 5)).astype(np.float32)
    value, gradient = value_and_gradient(lambda q: MoCoLoss(0.2)(IGNORED, (q, key, queue)), views[:4])
    assert np.isfinite(value) and np.all(np.isfinite(gradient)) and np.abs(gradient).sum() > 0


def test_registry_settings_and_refusals():
    assert get_loss("ntxent", temperature=0.5).temperature == 0.5
    assert get_loss("moco", temperature=0.07).temperature == 0.07
    restored = NTXentLoss.from_config(NTXentLoss(0.3).get_config())
    assert restored.temperature == 0.3
    for bad in (0.0, -1.0):
        with pytest.raises(ConfigError, match="temperature"):
            NTXentLoss(bad)
        with pytest.raises(ConfigError, match="temperature"):
            MoCoLoss(bad)
    with pytest.raises(ConfigError, match="margin"):
        get_loss("ntxent", margin=1.0)
    with pytest.raises(ConfigError, match=r"\(query, key, queue\)"):
        MoCoLoss()(IGNORED, np.zeros((2, 3), np.float32))
    # Labelled training refuses them: they take views, not labels.
    assert "ntxent" not in labelled_losses() and "moco" not in labelled_losses()
    with pytest.raises(ConfigError, match="self-supervised"):
        loss_from_settings(build_config("triplet", "smoke", load_recipe("triplet").PROFILES,
                                        {"loss": {"loss": "ntxent"}}).loss)
