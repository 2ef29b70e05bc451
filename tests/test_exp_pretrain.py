"""Pretraining without ImageNet end to end on a tiny synthetic set: `experiments/pretrain.py` (MoCo) and
`experiments/pretrain_compare.py` (SimCLR and synthetic-writer pretraining, then fine-tuning from each start) write
their folders; a pretraining run's backbone loads into the triplet model (`--weights <run>`); MoCo's queue and momentum
encoder update as the paper says; SimCLR's cross-replica gather gives the global batch's loss and gradient; bad
settings are refused before any run folder exists."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
import yaml

from sigverify.data.prepare import held_out_writers
from sigverify.errors import ConfigError
from sigverify.models.embedding import build_embedding_model
from sigverify.models.weights import build_cut_backbone, resolve_weights
from sigverify.pretrain.compare import check_no_test_writer_is_pretrained_on, selected_starts
from sigverify.pretrain.models import MomentumContrast
from sigverify.pretrain.run import check_pretrain_settings
from sigverify.settings import build_config
from tests.conftest import load_recipe, run_experiment_script

PRETRAIN_PROFILES = load_recipe("pretrain").PROFILES
PRETRAIN_COMPARE_PROFILES = load_recipe("pretrain_compare").PROFILES

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("work")


@pytest.fixture(scope="module")
def moco_run(tiny_dataset, workdir) -> Path:
    result = run_experiment_script("pretrain.py", "--profile", "smoke", "--data", tiny_dataset, "--runs",
                                   workdir / "runs", "--method", "moco", cwd=workdir)
    assert result.returncode == 0, result.stderr[-4000:]
    return (workdir / "runs" / "pretrain" / "latest").resolve()


@pytest.fixture(scope="module")
def compare_run(tiny_dataset, workdir):
    result = run_experiment_script("pretrain_compare.py", "--profile", "smoke", "--data", tiny_dataset, "--runs",
                                   workdir / "runs", "--starts", "simclr,synthetic,imagenet", "--pretrain-epochs", "1",
                                   "--epochs", "1", "--augment", cwd=workdir)
    assert result.returncode == 0, result.stderr[-4000:]
    return (workdir / "runs" / "pretrain-compare" / "latest").resolve(), result


def test_exp_pretrain_writes_backbone_loss_curve_and_frozen_evaluation(moco_run):
    for name in ("backbone.weights.h5", "backbone.json", "history.csv", "history.png", "metrics.json", "metrics.csv",
                 "report.md", "config.yaml", "density_hard.png", "roc.png"):
        assert (moco_run / name).is_file() and (moco_run / name).stat().st_size > 0, name
    assert json.loads((moco_run / "status.json").read_text())["status"] == "complete"
    info = json.loads((moco_run / "backbone.json").read_text())
    assert (info["method"], info["backbone"], info["cut_layer"]) == ("moco", "resnet50", "conv3_block4_add")
    assert info["n_images"] == 4 * 12  # the smoke profile's 4 training writers × (6 genuine + 6 forged): no test writer
    history = pd.read_csv(moco_run / "history.csv")
    assert len(history) == PRETRAIN_PROFILES["smoke"]["pretrain"]["pretrain_epochs"]
    assert np.isfinite(history["loss"]).all() and (history["loss"] > 0).all()
    metrics = json.loads((moco_run / "metrics.json").read_text())
    assert metrics["weights"].startswith("pretrained by MoCo v2 in this run")
    assert set(metrics["reference_points"]) == {"raw_pixels", "untrained_model"}
    assert 0.5 <= metrics["hard"]["max_accuracy"] <= 1 and metrics["distance"] == "cosine"
    assert metrics["pretraining"]["method"] == "moco"
    report = (moco_run / "report.md").read_text()
    assert "frozen pretrained features, no fine-tuning" in report and "MoCoLoss(temperature=0.2)" in report
    assert "pretrained ResNet50, no fine-tuning" in report  # the post's figure for frozen features
    assert "raw pixels" in report and "untrained model" in report


def test_pretrained_backbone_loads_into_the_triplet_model(moco_run):
    assert resolve_weights(str(moco_run), "resnet50")[1].startswith(f"pretrained by MoCo v2 in {moco_run}")
    images = np.random.default_rng(0).integers(0, 256, size=(2, 32, 32), dtype=np.uint8)
    frozen_features = keras.saving.load_model(moco_run / "model.keras").predict_on_batch(images)
    reloaded = build_cut_backbone("resnet50", "conv3_block4_add", 32, weights=str(moco_run))
    np.testing.assert_allclose(reloaded.predict_on_batch(images).mean(axis=(1, 2)), frozen_features, atol=1e-4)
    # Into the post's deeper cut at another image size: the pretrained layers agree, the later ones start random.
    model = build_embedding_model("resnet50", "conv4_block6_add", 64,
                                  weights=str(moco_run / "backbone.weights.h5"))
    larger = np.random.default_rng(1).integers(0, 256, size=(2, 64, 64), dtype=np.uint8)
    pretrained_part = keras.Model(model.input, model.get_layer("conv3_block4_add").output).predict_on_batch(larger)
    at_64 = build_cut_backbone("resnet50", "conv3_block4_add", 64, weights=str(moco_run))
    np.testing.assert_allclose(pretrained_part, at_64.predict_on_batch(larger), atol=1e-4)
    random_start = build_cut_backbone("resnet50", "conv3_block4_add", 64, weights=None)
    assert np.abs(random_start.predict_on_batch(larger) - pretrained_part).max() > 1e-2
    with pytest.raises(ConfigError, match="pretrained a resnet50 backbone"):
        resolve_weights(str(moco_run), "vgg16")


def test_exp_pretrain_compare_writes_table_figure_and_sub_runs(compare_run, workdir):
    run_dir, result = compare_run
    for name in ("table.csv", "table.md", "runs.csv", "accuracy_by_start.png", "config.yaml"):
        assert (run_dir / name).is_file() and (run_dir / name).stat().st_size > 0, name
    table = pd.read_csv(run_dir / "table.csv")
    assert table["start"].tolist() == ["simclr", "synthetic"] and (table["runs"] == 1).all()
    assert table["hard_max_accuracy_mean"].between(0.5, 1).all()
    markdown = (run_dir / "table.md").read_text()
    assert "ImageNet: not compared" in markdown  # no network here; compared where the weights load
    assert markdown.count("gap to the post's 0.818") == 2
    assert "max accuracy, skilled" in result.stdout

    for method, loss in (("simclr", "ntxent"), ("synthetic", "semihard")):
        pretraining = run_dir / f"pretrain-{method}"
        assert json.loads((pretraining / "status.json").read_text())["status"] == "complete"
        assert (pretraining / "backbone.weights.h5").is_file() and (pretraining / "history.csv").is_file()
        config = yaml.safe_load((pretraining / "config.yaml").read_text())
        assert (config["loss"]["loss"], config["train"]["epochs"], config["model"]["weights"]) == (loss, 1, "none")
        fine_tuned = json.loads((run_dir / f"{method}-seed0" / "metrics.json").read_text())
        assert fine_tuned["weights"].startswith(f"pretrained by {'SimCLR' if method == 'simclr' else 'triplet'}")
        assert str(pretraining) in fine_tuned["weights"]
        fine_tuned_config = yaml.safe_load((run_dir / f"{method}-seed0" / "config.yaml").read_text())
        assert fine_tuned_config["train"]["augment"] is True and fine_tuned_config["loss"]["loss"] == "semihard"
    synthetic = json.loads((run_dir / "pretrain-synthetic" / "backbone.json").read_text())
    assert synthetic["n_images"] == 6 * 4 * 2  # the smoke profile's 6 synthetic writers × (4 genuine + 4 forged)
    assert "6 writers" in synthetic["images"] and "seed 1000" in synthetic["images"]  # the pool's own seed


def test_momentum_contrast_queue_and_momentum_update():
    def encoder(name):
        features = keras.Input(shape=(3,))
        return keras.Model(features, keras.layers.Dense(4, name=f"{name}_dense")(features), name=name)

    query_encoder, key_encoder = encoder("query"), encoder("key")
    model = MomentumContrast(query_encoder, key_encoder, queue_size=7, momentum=0.75)
    assert not key_encoder.trainable_variables and len(model.trainable_variables) == 2
    for query_weight, key_weight in zip(query_encoder.get_weights(), key_encoder.get_weights()):
        np.testing.assert_array_equal(query_weight, key_weight)  # the key encoder starts as a copy
    rng = np.random.default_rng(0)
    query_encoder.set_weights([w + rng.normal(size=w.shape).astype("float32") for w in query_encoder.get_weights()])
    key_before, query_now = key_encoder.get_weights(), query_encoder.get_weights()
    first, second = rng.normal(size=(2, 3, 3)).astype("float32")
    queue_before = keras.ops.convert_to_numpy(model.queue).copy()
    queries, keys, queue = (keras.ops.convert_to_numpy(x) for x in model((first, second), training=True))
    np.testing.assert_allclose(queue, queue_before)  # the loss sees the queue before this batch
    np.testing.assert_allclose(np.linalg.norm(queries, axis=1), 1, rtol=1e-5)
    for key_weight, old, query_weight in zip(key_encoder.get_weights(), key_before, query_now):
        np.testing.assert_allclose(key_weight, 0.75 * old + 0.25 * query_weight, rtol=1e-5, atol=1e-6)
    # Encoded in two interleaved halves (rows 0, 2 and row 1), the keys come back in the batch's order.
    expected_keys = key_encoder.predict_on_batch(second)
    np.testing.assert_allclose(keys, expected_keys / np.linalg.norm(expected_keys, axis=1, keepdims=True), rtol=1e-5)
    queue_after = keras.ops.convert_to_numpy(model.queue)
    np.testing.assert_allclose(queue_after[:3], keys)
    np.testing.assert_allclose(queue_after[3:], queue_before[3:])
    model((first, second), training=True)
    model((first, second), training=True)  # positions 6, then 0 and 1 again: the oldest keys go first
    assert int(keras.ops.convert_to_numpy(model.queue_start)) == 2
    frozen_state = [keras.ops.convert_to_numpy(v).copy() for v in model.weights]
    model((first, second), training=False)
    for before, after in zip(frozen_state, model.weights):
        np.testing.assert_array_equal(before, keras.ops.convert_to_numpy(after))


CROSS_REPLICA_SCRIPT = textwrap.dedent("""
    import json
    import tempfile

    import keras
    import numpy as np
    import tensorflow as tf
    from sigverify.training.tf_engine import split_cpu
    split_cpu(2)
    from sigverify.losses import NTXentLoss
    from sigverify.training.tf_engine import CrossReplicaViews, Trainer

    rng = np.random.default_rng(0)
    first, second = rng.normal(size=(2, 8, 5)).astype("float32")
    projection = rng.normal(size=(5, 3)).astype("float32")
    loss = NTXentLoss(0.5)

    def views_model():  # build_simclr_model's layout: both views through one encoder as one batch
        views = [keras.Input((5,)), keras.Input((5,))]
        dense = keras.layers.Dense(3, use_bias=False)
        model = keras.Model(views, dense(keras.layers.Concatenate(axis=0)(views)))
        dense.set_weights([projection])
        return model

    def batches(epoch=0):
        return tf.data.Dataset.from_tensors(((first, second), np.zeros(8, np.float32)))

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        model, optimizer = views_model(), keras.optimizers.SGD(1.0)
    with tempfile.TemporaryDirectory() as folder:
        trainer = Trainer(model, CrossReplicaViews(loss), optimizer, strategy, folder, write_files=False)
        replica_loss = trainer.evaluate_loss(batches())
        trainer.fit(batches, epochs=1, steps_per_epoch=1, verbose=0)
    with tf.GradientTape() as tape:
        weights = tf.constant(projection)
        tape.watch(weights)
        expected = loss(tf.zeros(8), tf.concat([first, second], 0) @ weights)
    print(json.dumps({"loss": replica_loss, "global_loss": float(expected),
                      "trained": model.get_weights()[0].tolist(),
                      "expected": (projection - tape.gradient(expected, weights).numpy()).tolist(),
                      "start": projection.tolist()}))
""")


def test_simclr_negatives_come_from_every_replica():
    """The training loop over two replicas of 4 images each: the loss is NT-Xent of the global batch of 8 (every
    image's two views paired, 14 negatives each), and one SGD step (rate 1) moves the weights by the global loss's
    gradient, as on one device."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, "-c", CROSS_REPLICA_SCRIPT], capture_output=True, text=True, timeout=300,
                            env=env, cwd=REPO)
    assert result.returncode == 0, result.stderr[-4000:]
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    assert measured["loss"] == pytest.approx(measured["global_loss"], rel=1e-5)
    np.testing.assert_allclose(measured["trained"], measured["expected"], rtol=1e-4, atol=1e-5)
    assert np.abs(np.subtract(measured["trained"], measured["start"])).max() > 1e-3


def test_bad_settings_are_refused(tiny_dataset, tmp_path):
    def config(profiles=PRETRAIN_PROFILES, **pretrain):
        return build_config("pretrain", "smoke", profiles, {"pretrain": pretrain, "data": {"data": str(tiny_dataset)}})

    with pytest.raises(ConfigError, match="--method"):
        config(method="byol")
    with pytest.raises(ConfigError, match="--queue-size 8: expected at least the batch"):
        check_pretrain_settings(config(method="moco", queue_size=8, pretrain_batch_size=16))
    with pytest.raises(ConfigError, match="multiple of 8"):
        check_pretrain_settings(config(method="synthetic", pretrain_batch_size=12))
    with pytest.raises(ConfigError, match="--unlabelled .*no such folder"):
        check_pretrain_settings(config(unlabelled=str(tmp_path / "missing")))
    with pytest.raises(ConfigError, match="--starts"):
        selected_starts("random,byol")
    with pytest.raises(ConfigError, match="not a finished pretraining run"):
        resolve_weights(str(tmp_path), "resnet50")
    # SimCLR on the training writers of fold 0 must not be compared on fold 1, whose test writers it has seen.
    folds = config(PRETRAIN_COMPARE_PROFILES)
    folds.data.folds = 2
    fold0_training_writers = held_out_writers(range(1, 11), folds)[0][: folds.data.max_writers]
    with pytest.raises(ConfigError, match="fine-tuning run fold1-seed0 tests on writers"):
        check_no_test_writer_is_pretrained_on(folds, ["random", "simclr"], fold0_training_writers)
    check_no_test_writer_is_pretrained_on(folds, ["random", "synthetic"], fold0_training_writers)
    folds.data.fold = 1  # one fold at a time: pretraining sees that fold's training writers only
    check_no_test_writer_is_pretrained_on(folds, ["simclr"], held_out_writers(range(1, 11), folds)[0][:4])


def test_unlabelled_sources(tmp_path, monkeypatch):
    """`--unlabelled DIR`: every image file under the folder, preprocessed like the evaluation data; `synthetic`: the
    synthetic pretraining writers, generated once into the pool under the cache folder, with their labels dropped."""
    from sigverify.errors import DataError
    from sigverify.pretrain.sources import pretraining_images

    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "scans"
    (folder / "nested").mkdir(parents=True)
    signature = (REPO / "tests" / "data" / "signature.png").read_bytes()
    for path in (folder / "a.png", folder / "nested" / "b.png", folder / "nested" / "c.PNG"):
        path.write_bytes(signature)
    (folder / "notes.txt").write_text("not an image")

    def config(**pretrain):
        return build_config("pretrain", "smoke", PRETRAIN_PROFILES,
                            {"pretrain": pretrain, "data": {"cache_dir": str(tmp_path / "cache")}})

    train_images = np.zeros((5, 32, 32), np.uint8)
    from_folder = pretraining_images(config(unlabelled=str(folder)), train_images, "a dataset", [1, 2])
    assert from_folder.images.shape == (3, 32, 32) and from_folder.labels is None
    assert str(folder) in from_folder.description
    from_train = pretraining_images(config(), train_images, "a dataset", [1, 2])
    assert from_train.images is train_images and "2 training writers of a dataset" in from_train.description
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no image files"):
        pretraining_images(config(unlabelled=str(tmp_path / "empty")), train_images, "a dataset", [1, 2])

    synthetic = pretraining_images(config(unlabelled="synthetic", synthetic_writers=2, synthetic_samples=4),
                                   train_images, "a dataset", [1, 2])
    assert synthetic.images.shape == (16, 32, 32) and synthetic.labels is None
    labelled = pretraining_images(config(method="synthetic", synthetic_writers=2, synthetic_samples=4), train_images,
                                  "a dataset", [1, 2])
    assert sorted(np.unique(labelled.labels).tolist()) == [0, 1, 2, 3]  # genuine w, skilled forgeries w + 2
    assert labelled.n_writers == 2 and np.array_equal(labelled.images, synthetic.images)
    assert list((tmp_path / "cache" / "synthetic-pool").glob("*-seed1000-4s-*/writers-000000.npy"))
