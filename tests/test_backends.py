"""Every Keras 3 backend: the backend-neutral modules import without TensorFlow under JAX, the loss oracle and model
tests pass under JAX (and PyTorch when it is installed), a JAX triplet run writes the same run folder as a TensorFlow
run and resumes, the JAX engine trains what the TensorFlow engine trains (augmented batches, pair feeds for the
contrastive baseline, SimCLR pretraining; MoCo refused in one line) with feeds that deliver the tf.data pipelines'
batches, and the GPU benchmark runs on a CPU at a small size."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent

# A representative subset of tests/test_losses.py and tests/test_models.py (their full files take minutes under JAX):
# the semi-hard loss against its loop oracle (every distance, with ties, half precision, no positive pair, value and
# gradient against the tiled TFA formulation), the batch-hard (also in half precision) and contrastive oracles, and the
# exact parameter counts.
BACKEND_SUBSET = [
    "test_golden_value",
    "(test_semihard_matches_loop_oracle and 8-3-2)",
    "(test_semihard_with_exact_ties_matches_loop_oracle and 0-)",
    "(test_semihard_computes_half_precision_inputs_in_float32 and 8-3-2)",
    "test_batch_without_positive_pair_gives_finite_values",
    "(test_semihard_value_and_gradient_match_tiled_tfa_formulation and 4-2-2-0)",
    "(test_hard_matches_loop_oracle and 8-16-8)",
    "(test_hard_computes_half_precision_inputs_in_float32 and 8-3-2)",
    "test_contrastive",
    "test_parameter_count_matches_the_post",
    "(test_base_model_parameter_count_within_five_percent and cnn)",
    "test_embedding_stays_float32_under_mixed_precision",
]

NEUTRAL_MODULES = ["sigverify.distances", "sigverify.losses", "sigverify.models.backbones", "sigverify.models.weights",
                   "sigverify.models.embedding", "sigverify.models.zoo", "sigverify.models.siamese",
                   "sigverify.models.inference", "sigverify.evaluation.metrics", "sigverify.evaluation.model",
                   "sigverify.evaluation.baselines", "sigverify.reporting.plots", "sigverify.reporting.explain",
                   "sigverify.reporting.report", "sigverify.reporting.run_files", "sigverify.data.samplers",
                   "sigverify.data.augment", "sigverify.data.prepare", "sigverify.steps", "sigverify.experiment",
                   "sigverify.training", "sigverify.training.engine", "sigverify.training.jax_engine",
                   "sigverify.pretrain.run", "sigverify.bench_gpu", "sigverify.evaluation.writer_dependent",
                   "sigverify.verification.trained_run", "sigverify.verification.calibration",
                   "sigverify.verification.gallery", "sigverify.verification.search", "sigverify.verification.decisions",
                   "sigverify.verification.scoring", "sigverify.verification.evaluate", "sigverify.cli",
                   "sigverify.models.signature_weights", "sigverify.data.synthetic_pool", "sigverify.pretrain.shipping",
                   "sigverify.interrupts"]
# The experiment scripts the JAX engine trains: imported (not run) with TensorFlow unimportable.
NEUTRAL_SCRIPTS = ["experiments/triplet.py", "experiments/contrastive.py", "experiments/pretrain.py"]

# Files of a finished triplet run, whichever backend trained it.
RUN_FILES = ["config.yaml", "metrics.json", "metrics.csv", "report.md", "model.keras", "embeddings.npz", "history.csv",
             "density_hard.png", "density_easy.png", "roc.png", "history.png", "gradcam.png", "status.json"]

# Runs a script with TensorFlow unimportable, as on the GPU machines (which have JAX and no TensorFlow).
WITHOUT_TENSORFLOW = "import runpy, sys; sys.modules['tensorflow'] = None; sys.argv = sys.argv[1:]; " \
                     "runpy.run_path(sys.argv[0], run_name='__main__')"


def backend_env(backend: str, **extra) -> dict:
    return dict(os.environ, KERAS_BACKEND=backend, **extra)


def test_neutral_modules_import_without_tensorflow_under_jax():
    code = ("import sys, runpy\n"
            f"for name in {NEUTRAL_MODULES!r}:\n"
            "    __import__(name)\n"
            f"for script in {NEUTRAL_SCRIPTS!r}:\n"
            "    runpy.run_path(script)\n"
            "loaded = sorted(m for m in sys.modules if m == 'tensorflow' or m.startswith('tensorflow.'))\n"
            "print('keras backend', __import__('keras').backend.backend(), 'tensorflow modules', loaded)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env=backend_env("jax"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "keras backend jax tensorflow modules []" in done.stdout, done.stdout


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_loss_oracles_and_model_counts_pass_on_the_backend(backend):
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed: the loss and model tests run under KERAS_BACKEND={backend} where it is "
                    f"(pip install {backend})")
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_losses.py",
                           "tests/test_models.py", "-k", " or ".join(BACKEND_SUBSET)],
                          cwd=REPO, capture_output=True, text=True, timeout=600, env=backend_env(backend))
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    passed = int(done.stdout.rsplit(" passed", 1)[0].split()[-1])
    assert passed >= 30 and " skipped" not in done.stdout, done.stdout[-2000:]


@pytest.fixture(scope="module")
def jax_run(tiny_dataset, tmp_path_factory):
    """A JAX smoke triplet run on two CPU devices (data parallel), TensorFlow unimportable."""
    workdir = tmp_path_factory.mktemp("jax-run")
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_TENSORFLOW, str(REPO / "experiments" / "triplet.py"), "--profile", "smoke",
         "--data", str(tiny_dataset), "--runs", str(workdir / "runs"), "--cpu-devices", "2", "--weights", "none"],
        cwd=workdir, capture_output=True, text=True, timeout=600,
        env=backend_env("jax", SIGVERIFY_CACHE=str(workdir / "cache")))
    assert done.returncode == 0, done.stderr[-4000:]
    return (workdir / "runs" / "triplet" / "latest").resolve(), done


def test_jax_smoke_run_writes_the_whole_run_folder(jax_run):
    run_dir, done = jax_run
    for name in RUN_FILES:
        assert (run_dir / name).is_file() and (run_dir / name).stat().st_size > 0, name
    assert json.loads((run_dir / "status.json").read_text())["status"] == "complete"
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["backend"] == "jax" and config["train"]["epochs"] == 2
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["environment"]["backend"] == "jax"
    assert metrics["strategy"].startswith("DataParallel over 2 device(s)")
    for pair_set in ("hard", "easy"):
        assert 0.0 <= metrics[pair_set]["max_accuracy"] <= 1.0 and np.isfinite(metrics[pair_set]["eer"])
    history = (run_dir / "history.csv").read_text().splitlines()
    assert history[0] == "epoch,learning_rate,loss,val_loss" and [row.split(",")[0] for row in history[1:]] == ["0", "1"]
    assert (run_dir / "checkpoints" / "last" / "latest.weights.h5").is_file()
    embeddings = np.load(run_dir / "embeddings.npz")["embeddings"]
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, rtol=1e-4)
    assert "hard pairs: max accuracy" in done.stdout


def test_jax_run_model_verifies_under_tensorflow(jax_run, tiny_dataset):
    run_dir, _ = jax_run
    done = subprocess.run([sys.executable, "-m", "sigverify.cli", "verify", "--run", str(run_dir),
                           str(tiny_dataset / "full_org" / "original_1_1.png"),
                           str(tiny_dataset / "full_forg" / "forgeries_1_1.png")],
                          capture_output=True, text=True, timeout=300, env=backend_env("tensorflow"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "distance" in done.stdout and "threshold" in done.stdout


def test_jax_run_refuses_to_resume_under_another_backend(jax_run, tmp_path):
    run_dir, _ = jax_run
    interrupted = tmp_path / "triplet" / run_dir.name
    interrupted.mkdir(parents=True)
    (interrupted / "config.yaml").write_text((run_dir / "config.yaml").read_text())
    (interrupted / "status.json").write_text(json.dumps({"status": "interrupted"}))
    done = subprocess.run([sys.executable, str(REPO / "experiments" / "triplet.py"), "--resume", str(interrupted)],
                          capture_output=True, text=True, timeout=300, env=backend_env("tensorflow"))
    assert done.returncode == 2
    assert "trained on the jax backend" in done.stderr and "KERAS_BACKEND=jax" in done.stderr


FIT_AND_RESUME = """
import json, os, signal, sys
from pathlib import Path
import keras, numpy as np
from sigverify.interrupts import Interrupted, handling_interrupts
from sigverify.losses import TripletSemiHardLoss, count_positive_pairs
from sigverify.models.backbones import InputScaling
from sigverify.training.engine import LabelledBatches, NonFiniteLoss
from sigverify.training.jax_engine import FeedBatches, OneDevice, fit_keras

run_dir = Path(sys.argv[1])
rng = np.random.default_rng(0)
images = rng.integers(0, 256, (24, 8, 8), dtype=np.uint8)
labels = np.repeat(np.arange(6), 4)
seen = []

def batches_of_epoch(epoch):
    seen.append(epoch)
    order = np.random.default_rng(epoch).permutation(24)
    return order.reshape(3, 8)

def sigterm_in_epoch_1(epoch):
    if epoch == 1:
        os.kill(os.getpid(), signal.SIGTERM)
    return batches_of_epoch(epoch)

def train(epochs, loss=TripletSemiHardLoss(), folder=run_dir, batches=batches_of_epoch):
    with OneDevice("cpu:0").scope():
        inputs = keras.Input((8, 8), dtype="uint8", name="images")
        scaled = InputScaling("caffe", name="input_scaling")(inputs)
        outputs = keras.layers.Dense(4, name="embedding")(keras.layers.Flatten(name="flatten")(scaled))
        model = keras.Model(inputs, outputs, name="tiny")
        data = FeedBatches(LabelledBatches(images, labels, batches), workers=1)
        validation = FeedBatches(LabelledBatches(images, labels, lambda epoch: np.arange(24).reshape(3, 8)), workers=1)
        return model, fit_keras(model, loss, keras.optimizers.Adam(1e-3), OneDevice("cpu:0"), folder, data, epochs,
                                validation, batch_has_signal=lambda l: count_positive_pairs(l) > 0, verbose=0)

_, first = train(1)
model, resumed = train(3)
try:
    train(1, loss=lambda labels, embeddings: keras.ops.mean(embeddings) * float("nan"), folder=run_dir / "nan")
    stopped = ""
except NonFiniteLoss as error:
    stopped = str(error)
interrupted = ""
with handling_interrupts():
    try:
        train(50, folder=run_dir / "sigterm", batches=sigterm_in_epoch_1)
    except Interrupted as error:
        interrupted = str(error)
print(json.dumps({"first": first.initial_epoch, "resumed": resumed.initial_epoch, "seen": seen, "stopped": stopped,
                  "interrupted": interrupted, "interrupted_after": (run_dir / "sigterm" / "history.csv").read_text(),
                  "epochs": [int(e) for e in resumed.history["epoch"]], "val": len(resumed.history["val_loss"]),
                  "lr": resumed.history["learning_rate"][0], "uncompiled": not model.compiled}))
"""


def test_fit_keras_resumes_from_the_last_checkpoint(tmp_path):
    """An epoch, then a second call in the same folder goes on from epoch 1: each epoch draws its own batches and
    history.csv holds every epoch once; the embedding model itself stays uncompiled (model.keras has no optimizer).
    A NaN loss stops training with NonFiniteLoss; SIGTERM in epoch 1 of 50 stops it at a step boundary, with epoch 0 in
    the history."""
    done = subprocess.run([sys.executable, "-c", FIT_AND_RESUME, str(tmp_path)], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env=backend_env("jax"))
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["first"] == 0 and result["resumed"] == 1
    assert result["epochs"] == [0, 1, 2] and result["val"] == 3
    assert result["seen"][:5] == [0, 0, 0, 1, 2]  # each call draws epoch 0 when it starts; then the epochs it trains
    assert result["stopped"].startswith("epoch 1, batch 1: the training loss is nan; stopped")
    assert result["lr"] == pytest.approx(1e-3) and result["uncompiled"]
    assert result["interrupted"] == "SIGTERM" and len(result["interrupted_after"].splitlines()) == 2  # header, epoch 0


FEEDS_MATCH_TF_DATA = """
import json
import numpy as np
from sigverify.data.augment import batch_augmenter, view_pair_augmenter
from sigverify.training.engine import LabelledBatches, PairBatches, ViewBatches
from sigverify.training.jax_engine import FeedBatches
from sigverify.training.tf_data import dataset_of

rng = np.random.default_rng(0)
images = np.full((12, 16, 16), 255, np.uint8)  # white signatures with a block of ink, as augmentation expects
images[:, 5:11, 3:13] = rng.integers(0, 120, (12, 6, 10))
labels = np.repeat(np.arange(3), 4)
batches = lambda epoch: np.random.default_rng(epoch).permutation(12).reshape(3, 4)
first, second, same = rng.integers(0, 12, 10), rng.integers(0, 12, 10), rng.integers(0, 2, 10).astype(np.float32)
pairs = lambda epoch: tuple(np.split(column, [4, 8]) for column in (first, second, same))
feeds = {"labelled": LabelledBatches(images, labels, batches, lambda epoch: batch_augmenter(7, epoch, 1.0)),
         "pairs": PairBatches(images, pairs),
         "views": ViewBatches(images, batches, lambda epoch: view_pair_augmenter(7, epoch, 1.0))}

def flat(element):
    inputs, targets = element
    inputs = list(inputs) if isinstance(inputs, (tuple, list)) else [inputs]
    return [np.asarray(x) for x in inputs] + [np.asarray(targets)]

result = {}
for name, feed in feeds.items():
    jax_batches = FeedBatches(feed, workers=1)
    jax_batches.start_epoch(1)
    ours = [flat(jax_batches[step]) for step in range(len(jax_batches))]
    theirs = [flat(element) for element in dataset_of(feed, 1).as_numpy_iterator()]
    result[name] = {"steps": [len(ours), len(theirs)],
                    "equal": len(ours) == len(theirs) and all(
                        len(a) == len(b) and all(x.shape == y.shape and np.array_equal(x, y) for x, y in zip(a, b))
                        for a, b in zip(ours, theirs)),
                    "augmented": bool(name == "pairs" or not np.array_equal(ours[0][0], images[batches(1)[0]]))}
print(json.dumps(result))
"""


def test_jax_feeds_deliver_the_tf_data_batches():
    """FeedBatches (the JAX engine's input) gives, batch for batch, what the TensorFlow engine's tf.data pipelines give
    for the same feed: augmented labelled batches, pairs, and the two views of pretraining."""
    done = subprocess.run([sys.executable, "-c", FEEDS_MATCH_TF_DATA], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env=backend_env("jax", TF_CPP_MIN_LOG_LEVEL="3"))
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {name: {"steps": [3, 3], "equal": True, "augmented": True}
                      for name in ("labelled", "pairs", "views")}, result


def run_on_jax(script: str, workdir: Path, data: Path, *flags: str, without_tensorflow: bool = True):
    """experiments/<script> on the JAX backend (TensorFlow unimportable unless asked), into workdir/runs."""
    launcher = [sys.executable, "-c", WITHOUT_TENSORFLOW] if without_tensorflow else [sys.executable]
    return subprocess.run([*launcher, str(REPO / "experiments" / script), *flags, "--data", str(data),
                           "--runs", str(workdir / "runs")], cwd=workdir, capture_output=True, text=True, timeout=600,
                          env=backend_env("jax", SIGVERIFY_CACHE=str(workdir / "cache"), TF_CPP_MIN_LOG_LEVEL="3"))


def finished_run(workdir: Path, experiment: str) -> tuple[Path, dict]:
    run_dir = (workdir / "runs" / experiment / "latest").resolve()
    assert json.loads((run_dir / "status.json").read_text())["status"] == "complete"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["environment"]["backend"] == "jax"
    return run_dir, metrics


def test_jax_trains_the_contrastive_baseline_on_pair_feeds(tiny_dataset, tmp_path):
    done = run_on_jax("contrastive.py", tmp_path, tiny_dataset, "--profile", "smoke", "--weights", "none",
                      "--epochs", "1")
    assert done.returncode == 0, done.stderr[-4000:]
    run_dir, metrics = finished_run(tmp_path, "contrastive")
    for pair_set in ("hard", "easy"):
        assert 0.0 <= metrics[pair_set]["max_accuracy"] <= 1.0 and np.isfinite(metrics[pair_set]["eer"])
    history = (run_dir / "history.csv").read_text().splitlines()
    assert history[0] == "epoch,learning_rate,loss,val_loss" and len(history) == 2
    assert all(np.isfinite(float(value)) for value in history[1].split(",")[2:])


def test_jax_pretrains_with_simclr(tiny_dataset, tmp_path):
    done = run_on_jax("pretrain.py", tmp_path, tiny_dataset, "--profile", "smoke", "--method", "simclr",
                      "--pretrain-epochs", "1")
    assert done.returncode == 0, done.stderr[-4000:]
    run_dir, _ = finished_run(tmp_path, "pretrain")
    assert (run_dir / "backbone.weights.h5").is_file()
    history = (run_dir / "history.csv").read_text().splitlines()
    assert len(history) == 2 and np.isfinite(float(history[1].split(",")[history[0].split(",").index("loss")]))


def test_jax_refuses_moco_in_one_line(tiny_dataset, tmp_path):
    done = run_on_jax("pretrain.py", tmp_path, tiny_dataset, "--profile", "smoke", "--method", "moco")
    assert done.returncode == 2, done.stderr[-3000:]
    message = [line for line in done.stderr.splitlines() if "--method moco" in line]
    assert len(message) == 1 and "tensorflow" in message[0].lower(), done.stderr[-3000:]
    assert not (tmp_path / "runs" / "pretrain").exists() or not any((tmp_path / "runs" / "pretrain").iterdir())


def test_jax_trains_triplets_on_augmented_batches_and_writes_tensorboard(tiny_dataset, tmp_path):
    """--augment on JAX (refused before the JAX engine took augmented feeds); TensorFlow is installed here, so Keras
    writes tensorboard/ as the TensorFlow engine does."""
    done = run_on_jax("triplet.py", tmp_path, tiny_dataset, "--profile", "smoke", "--weights", "none", "--augment",
                      "--epochs", "1", "--gradcam-images", "0", without_tensorflow=False)
    assert done.returncode == 0, done.stderr[-4000:]
    run_dir, metrics = finished_run(tmp_path, "triplet")
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["augment"] is True
    assert np.isfinite(metrics["hard"]["eer"])
    assert any(path.is_file() for path in (run_dir / "tensorboard").rglob("*")), "tensorboard/ has event files"


def test_bench_gpu_runs_on_the_cpu_at_a_small_size(tmp_path):
    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, "-m", "sigverify.bench_gpu", "--image-size", "32", "--batch-size", "8",
                           "--cut-layer", "conv2_block3_out", "--steps", "2", "--warmup", "1", "--loss-sweep",
                           "--sweep-sizes", "16,64", "--json", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=600, env=backend_env("jax"))
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.read_text())
    assert [r["precision"] for r in results["training"]] == ["float32", "mixed_bfloat16"]
    for r in results["training"]:
        assert r["images_per_second"] > 0 and r["achieved_tflops"] > 0 and r["device"].startswith("cpu")
    assert [r["batch_size"] for r in results["loss_sweep"]] == [16, 64]
    assert all(r["ms"] > 0 and np.isfinite(r["value"]) for r in results["loss_sweep"])
    assert "images/s" in done.stdout and "TFLOP/s" in done.stdout


def test_bench_gpu_counts_the_flops_of_convolutions_and_dense_layers():
    import keras

    from sigverify.bench_gpu import forward_flops

    inputs = keras.Input((10, 12, 3))
    x = keras.layers.Conv2D(5, 3, padding="same")(inputs)  # 10×12 outputs of 3·3·3 multiply-adds, 5 filters
    x = keras.layers.Conv2D(4, 3, strides=2)(x)  # 4×5 outputs of 3·3·5, 4 filters
    inner = keras.Model(inputs, x)
    outer_inputs = keras.Input((10, 12, 3))
    outputs = keras.layers.Dense(7)(keras.layers.Flatten()(inner(outer_inputs)))  # 80 inputs, 7 units
    assert forward_flops(keras.Model(outer_inputs, outputs)) == 2 * (10 * 12 * 27 * 5 + 4 * 5 * 45 * 4 + 80 * 7)
