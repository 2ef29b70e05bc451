"""The contrastive baseline: training the head on cached backbone features is the same model as the naive Siamese
network on images (same loss, same gradients), and the experiment writes a complete run folder."""

import json
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from sigverify.losses import ContrastiveLoss
from sigverify.models.embedding import build_contrastive_embedding_model
from sigverify.models.inference import cached_features
from sigverify.models.siamese import build_siamese
from tests.conftest import make_synthetic_dataset, run_experiment_script

REPO = Path(__file__).resolve().parent.parent


def test_cached_feature_path_equals_the_naive_siamese_path(tmp_path):
    keras.utils.set_random_seed(0)
    embedding = build_contrastive_embedding_model("resnet50", 32, weights=None, embedding_dim=8, dropout=0.0)
    head, frozen = embedding.get_layer("contrastive_head"), embedding.get_layer("pretrained_resnet50")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(6, 32, 32), dtype=np.uint8)
    first, second = np.array([0, 1, 2, 3]), np.array([1, 2, 4, 5])
    same = np.array([1.0, 0.0, 1.0, 0.0], dtype="float32")
    loss_fn = ContrastiveLoss(margin=0.5)

    def loss_and_gradients(model, inputs):
        with tf.GradientTape() as tape:
            loss = loss_fn(same, model(inputs, training=True))
        return float(loss), [g.numpy() for g in tape.gradient(loss, head.trainable_weights)]

    naive_loss, naive_gradients = loss_and_gradients(build_siamese(embedding), [images[first], images[second]])
    features = frozen.predict_on_batch(images)
    cached_loss, cached_gradients = loss_and_gradients(build_siamese(head), [features[first], features[second]])
    assert naive_loss > 0
    np.testing.assert_allclose(cached_loss, naive_loss, rtol=1e-5)
    assert len(naive_gradients) == len(cached_gradients) == len(head.trainable_weights)
    for naive, cached in zip(naive_gradients, cached_gradients):
        # float32: the backbone's convolutions round a batch of 6 images (the cache) and of 4 (each Siamese input)
        # differently, by under 1e-6 of the features' scale; the gradients agree to 1e-4 of theirs
        np.testing.assert_allclose(cached, naive, rtol=1e-4, atol=1e-4 * np.abs(naive).max())
    trainable = {id(w) for w in embedding.trainable_weights}
    assert trainable == {id(w) for w in head.trainable_weights}, "only the head trains: the backbone is frozen"


def test_features_are_cached_on_disk(tmp_path, monkeypatch):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(3)(inputs), name="tiny")
    data = np.random.default_rng(0).normal(size=(5, 4)).astype("float32")
    first = cached_features(model, data, tmp_path)
    assert len(list((tmp_path / "features").glob("tiny-*.npy"))) == 1
    monkeypatch.setattr(model, "predict_on_batch", lambda *a: (_ for _ in ()).throw(AssertionError("recomputed")))
    np.testing.assert_array_equal(cached_features(model, data, tmp_path), first)


def test_smoke_run_writes_the_run_folder(tmp_path):
    data = make_synthetic_dataset(tmp_path, n_writers=10, n_samples=6, seed=2)  # its own seed, not tiny_dataset's
    out = run_experiment_script("contrastive.py", "--profile", "smoke", "--data", data, "--runs", tmp_path / "runs",
                                cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-4000:]
    run_dir = (tmp_path / "runs" / "contrastive" / "latest").resolve()
    for name in ("metrics.json", "report.md", "model.keras", "embedding_3d.png", "density_hard.png", "roc.png",
                 "history.png", "embeddings.npz", "config.yaml"):
        assert (run_dir / name).stat().st_size > 0, name
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["training_path"] == "cached backbone features"
    assert metrics["n_train_pairs"] == 4 * 15 * 3 and metrics["hard"]["max_accuracy"] >= 0.0
    model = keras.saving.load_model(run_dir / "model.keras", safe_mode=True)
    assert model.input_shape == (None, 32, 32) and model.output_shape == (None, 128)
