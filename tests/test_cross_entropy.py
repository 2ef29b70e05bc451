"""The cross-entropy pipelines beside metric learning: the writer classifier (`SoftmaxLoss`, "softmax" and
"softmax-genuine") and the pair classifier ("pair-ce": `PairFeatures` + head + `PairCrossEntropyLoss`), each against a
plain NumPy loop; then a pair classifier trained in exp-losses and used as a verifier (pair, gallery, identification)."""

import json

import keras
import numpy as np
import pandas as pd
import pytest

from sigverify.cli import main
from sigverify.data.pairs import PAIR_KINDS, with_kind_classes
from sigverify.errors import ConfigError
from sigverify.losses import PairCrossEntropyLoss, SoftmaxLoss, get_loss, loss_from_settings
from sigverify.models.siamese import PAIR_CLASSIFIER, PairClassifierScore, build_pair_head
from sigverify.settings import LossSettings
from sigverify.verification.decisions import GENUINE, REJECTED
from sigverify.verification.trained_run import PAIR_HEAD_FILE, TrainedRun
from tests.conftest import run_experiment_script
from tests.metric_oracles import value_and_gradient


def to_float(value) -> float:
    return float(keras.ops.convert_to_numpy(value))


def log_softmax_loop(row):
    top = max(row)
    return [value - top - np.log(sum(np.exp(v - top) for v in row)) for value in row]


def softmax_oracle(embeddings, weights, biases, labels, class_labels) -> float:
    """Mean over rows whose label is a class of −log softmax(f·W + b)[class], one row and one class at a time."""
    losses = []
    for embedding, label in zip(embeddings.astype(np.float64), labels):
        if label not in class_labels:
            continue
        logits = [sum(embedding[d] * weights[d, j] for d in range(len(embedding))) + biases[j]
                  for j in range(len(class_labels))]
        losses.append(-log_softmax_loop(logits)[class_labels.index(label)])
    return float(np.mean(losses)) if losses else 0.0


def pair_head_oracle(first, second, kernels, classes) -> tuple[float, np.ndarray]:
    """(mean cross-entropy, P(genuine) per pair) of the pair head, pair by pair: features |a − b| and a ⊙ b, a ReLU
    layer, a linear layer, softmax."""
    (hidden_w, hidden_b), (out_w, out_b) = kernels
    losses, genuine = [], []
    for a, b, target in zip(first.astype(np.float64), second.astype(np.float64), classes):
        features = [abs(x - y) for x, y in zip(a, b)] + [x * y for x, y in zip(a, b)]
        hidden = [max(0.0, sum(f * hidden_w[i, j] for i, f in enumerate(features)) + hidden_b[j])
                  for j in range(hidden_w.shape[1])]
        logits = [sum(h * out_w[i, k] for i, h in enumerate(hidden)) + out_b[k] for k in range(out_w.shape[1])]
        log_probabilities = log_softmax_loop(logits)
        losses.append(-log_probabilities[int(target)])
        genuine.append(np.exp(log_probabilities[0]))
    return float(np.mean(losses)), np.array(genuine)


@pytest.mark.parametrize("batch_size,dim,num_classes", [(2, 2, 2), (9, 4, 3), (24, 8, 6)])
def test_softmax_loss_matches_loop_oracle(batch_size, dim, num_classes):
    rng = np.random.default_rng(batch_size)
    class_labels = sorted(rng.choice(100, size=num_classes, replace=False).tolist())
    labels = np.concatenate([rng.choice(class_labels, size=batch_size - 1), [1000]])  # one row of no class
    embeddings = rng.normal(size=(batch_size, dim)).astype("float32")
    loss = SoftmaxLoss(dim, class_labels=class_labels)
    loss.class_weights.assign(rng.normal(size=(dim, num_classes)).astype("float32"))
    loss.class_biases.assign(rng.normal(size=num_classes).astype("float32"))
    weights, biases = (keras.ops.convert_to_numpy(v) for v in loss.trainable_variables)
    value = to_float(loss(labels, embeddings))
    assert value == pytest.approx(softmax_oracle(embeddings, weights, biases, labels.tolist(), class_labels),
                                  rel=1e-5, abs=1e-6)
    assert to_float(loss(np.array([1000, 1001]), embeddings[:2])) == 0.0  # no row of a known class


def test_pair_cross_entropy_value_and_gradient_match_numpy():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(7, 3)).astype("float32") * 3
    classes = rng.integers(0, 3, size=7)
    value, gradient = value_and_gradient(lambda x: PairCrossEntropyLoss()(classes.reshape(-1, 1), x), logits)
    expected = np.mean([-log_softmax_loop(row)[target] for row, target in zip(logits.astype(np.float64), classes)])
    probabilities = np.exp(logits - logits.max(1, keepdims=True))
    probabilities /= probabilities.sum(1, keepdims=True)
    assert float(value) == pytest.approx(expected, rel=1e-5)
    np.testing.assert_allclose(gradient, (probabilities - np.eye(3)[classes]) / len(classes), atol=1e-6)


def test_pair_head_and_loss_match_loop_oracle_and_score_by_genuine_probability():
    rng = np.random.default_rng(5)
    dim, n = 4, 10
    head = build_pair_head(dim, hidden_units=6)
    for weight in head.weights:  # non-zero biases too
        weight.assign(rng.normal(size=weight.shape).astype("float32"))
    kernels = [(keras.ops.convert_to_numpy(head.get_layer(name).kernel), keras.ops.convert_to_numpy(head.get_layer(name).bias))
               for name in ("pair_hidden", "pair_logits")]
    first, second = (rng.normal(size=(n, dim)).astype("float32") for _ in range(2))
    classes = rng.integers(0, len(PAIR_KINDS), size=n)
    value = to_float(PairCrossEntropyLoss()(classes, head([first, second])))
    expected_loss, expected_genuine = pair_head_oracle(first, second, kernels, classes)
    assert value == pytest.approx(expected_loss, rel=1e-5)

    score = PairClassifierScore(head, batch_size=3)  # several batches
    np.testing.assert_allclose(score(first, second), 1.0 - expected_genuine, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(score(second, first), score(first, second), atol=1e-6)  # symmetric by construction
    matrix = score.all_pairs(first)
    assert matrix.shape == (n, n) and np.all(np.diag(matrix) == 0)
    i, j = np.triu_indices(n, 1)
    np.testing.assert_allclose(matrix[i, j], score(first[i], first[j]), atol=1e-6)


def test_softmax_classes_and_pair_losses_from_settings():
    labels, genuine = [3, 3, 58, 7, 62], [3, 7]
    assert loss_from_settings(LossSettings(loss="softmax"), labels, 8).class_labels == [3, 7, 58, 62]
    loss = loss_from_settings(LossSettings(loss="softmax-genuine"), labels, 8, genuine_labels=genuine)
    assert isinstance(loss, SoftmaxLoss) and loss.class_labels == [3, 7]
    round_trip = SoftmaxLoss.from_config(loss.get_config())
    assert round_trip.class_labels == [3, 7] and "scale" not in loss.get_config()
    for name in ("pair-ce", "contrastive"):
        with pytest.raises(ConfigError, match=f"--loss {name}: a pair loss"):
            loss_from_settings(LossSettings(loss=name))
    assert type(get_loss("pair-ce")) is PairCrossEntropyLoss


def test_pair_kinds_become_class_indices():
    pairs = pd.DataFrame({"a": [0, 1, 2], "b": [1, 2, 0], "same": [1, 0, 0], "kind": ["genuine", "random", "skilled"],
                          "writer": [1, 1, 1]})
    assert with_kind_classes(pairs)["kind_class"].tolist() == [0, 2, 1]


@pytest.fixture(scope="module")
def cross_entropy_run(tiny_dataset, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("work")
    result = run_experiment_script("losses.py", "--profile", "smoke", "--data", tiny_dataset, "--runs",
                                   workdir / "runs", "--epochs", "1", "--losses", "softmax-genuine,pair-ce", cwd=workdir)
    assert result.returncode == 0, result.stderr[-4000:]
    return (workdir / "runs" / "losses" / "latest").resolve()


def test_exp_losses_trains_both_cross_entropy_pipelines(cross_entropy_run):
    table = pd.read_csv(cross_entropy_run / "table.csv")
    assert table["loss"].tolist() == ["softmax-genuine", "pair-ce"]
    softmax = json.loads((cross_entropy_run / "softmax-genuine-seed0" / "metrics.json").read_text())
    assert softmax["distance"] == "cosine" and "SoftmaxLoss(4 classes)" in softmax["loss_description"]
    assert "no L2 normalization" in softmax["model_description"]
    pair = json.loads((cross_entropy_run / "pair-ce-seed0" / "metrics.json").read_text())
    assert pair["distance"] == PAIR_CLASSIFIER and "PairCrossEntropyLoss" in pair["loss_description"]
    assert 0.0 <= pair["hard"]["threshold"] <= 1.0


def test_a_pair_classifier_run_verifies_pairs_and_serves_a_gallery(cross_entropy_run, tiny_dataset, tmp_path, capsys):
    run_dir = cross_entropy_run / "pair-ce-seed0"
    assert (run_dir / PAIR_HEAD_FILE).is_file()
    run = TrainedRun(run_dir)
    assert isinstance(run.scoring, PairClassifierScore)
    first, second = (str(tiny_dataset / "full_org" / f"original_1_{k}.png") for k in (1, 2))
    assert main(["verify", "--run", str(run_dir), "--json", first, second]) == 0
    decision = json.loads(capsys.readouterr().out)
    embeddings = run.embed_files([first, second])
    assert decision["metric"] == PAIR_CLASSIFIER
    assert decision["distance"] == pytest.approx(float(run.scoring(embeddings[:1], embeddings[1:])[0]), abs=1e-6)

    assert main(["calibrate", "--run", str(run_dir)]) == 0
    db = tmp_path / "gallery.db"
    assert main(["gallery", "create", "--run", str(run_dir), "--db", str(db)]) == 0
    assert main(["enroll", "--db", str(db), "--data", str(tiny_dataset)]) == 0
    capsys.readouterr()
    questioned = str(tiny_dataset / "full_org" / "original_1_6.png")
    assert main(["verify", "--db", str(db), "--writer", "1", "--json", questioned]) == 0
    assert json.loads(capsys.readouterr().out)[0]["decision"] in (GENUINE, REJECTED)
    assert main(["identify", "--db", str(db), "--top", "2", "--json", questioned]) == 0
    identified = json.loads(capsys.readouterr().out)
    assert identified["search"].startswith("exact") and len(identified["nearest"]) == 2
