"""Training spread over replicas: a triplet smoke run mirrored over 2 logical CPUs and the same run as 2 local workers
(`python -m sigverify.launch`) against the single-device run, only the chief writing the run folder, a launch that
leaves no process behind when a worker fails or the launch is interrupted, and a contrastive step over 2 replicas that
is the single-device step.

What "close" means here. The trainer all-gathers the replicas' embeddings and labels, so the loss sees the whole global
batch as on one device (semi-hard negatives mined among all 16 images, not among a replica's 8); the update is then the
single-device one up to the order of floating-point sums. The first epoch's training loss must agree to 1e-4 (measured:
1e-5; per-replica mining was 2 % off). Its validation loss comes after the epoch's three Adam steps, which already
amplify rounding (below): it must agree to 5e-3 (measured: 7e-4; after one step 2e-6, with SGD 6e-5 after three).
Later epochs drift: Adam divides each gradient by its own running magnitude, so rounding-level differences in near-zero
gradient components become steps of full size, and semi-hard mining can then pick another negative: measured 0.01
after 6 steps. Every epoch must agree to 0.05 (5 % of the margin, the loss's scale).
The model is VGG16 cut at block3_conv1, which has no BatchNorm: per-replica batch statistics would add a difference
that the all-gather does not remove. The sharpest check is the third: 2 workers with 1 replica each and 2 mirrored
replicas do the same arithmetic, so their histories must agree throughout; a worker that read the wrong slice of the
data, or gradients that were not all-reduced, would break it.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from sigverify.launch import tf_config, worker_arguments
from sigverify.training.engine import read_history

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "experiments" / "triplet.py"
SMOKE_FLAGS = ["--profile", "smoke", "--backbone", "vgg16", "--cut-layer", "block3_conv1", "--gradcam-images", "0",
               "--seed", "3"]
FIRST_EPOCH_RTOL = {"loss": 1e-4, "val_loss": 5e-3}
SAME_ARITHMETIC_RTOL = 1e-4  # 2 workers × 1 replica against 2 mirrored replicas
LOSS_ATOL = 0.05


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("work")


def start_smoke(workdir: Path, data: Path, name: str, *extra: str, launcher: tuple[str, ...] = ()):
    """Starts one smoke run into runs/<name>. TMPDIR is private so that leftovers can be seen."""
    scratch = workdir / f"tmp-{name}"
    scratch.mkdir()
    env = dict(os.environ, SIGVERIFY_CACHE=str(workdir / "cache"), TMPDIR=str(scratch))
    command = [sys.executable, *launcher, str(SCRIPT), *SMOKE_FLAGS, "--data", str(data),
               "--runs", str(workdir / "runs" / name), *extra]
    with open(workdir / f"{name}.log", "w") as log:  # a file, not a pipe: nobody reads while the others run
        return subprocess.Popen(command, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT)


@pytest.fixture(scope="module")
def runs(workdir, tiny_dataset):
    """The three runs at once (each spends most of its time starting TensorFlow and tracing: they overlap well)."""
    started = {
        "single": start_smoke(workdir, tiny_dataset, "single", "--strategy", "cpu"),
        "mirrored": start_smoke(workdir, tiny_dataset, "mirrored", "--strategy", "mirrored", "--cpu-devices", "2"),
        "workers": start_smoke(workdir, tiny_dataset, "workers", launcher=("-m", "sigverify.launch", "--workers", "2")),
    }
    for name, process in started.items():
        assert process.wait(timeout=900) == 0, f"{name}: {(workdir / f'{name}.log').read_text()[-4000:]}"
    return {name: (workdir / "runs" / name / "triplet" / "latest").resolve() for name in started}


def assert_close_to_single_device(run_dir: Path, single_dir: Path) -> None:
    distributed, single = read_history(run_dir / "history.csv"), read_history(single_dir / "history.csv")
    assert distributed["epoch"] == single["epoch"] == [0, 1]
    for key in ("loss", "val_loss"):
        np.testing.assert_allclose(distributed[key][0], single[key][0], rtol=FIRST_EPOCH_RTOL[key], err_msg=key)
        np.testing.assert_allclose(distributed[key], single[key], atol=LOSS_ATOL, err_msg=key)


def test_mirrored_over_two_cpus_is_close_to_single_device(runs):
    metrics = json.loads((runs["mirrored"] / "metrics.json").read_text())
    assert metrics["strategy"].startswith("MirroredStrategy over 2 replica(s)")
    assert_close_to_single_device(runs["mirrored"], runs["single"])
    embeddings = np.load(runs["mirrored"] / "embeddings.npz")["embeddings"]
    assert embeddings.shape[0] == metrics["n_test_images"], "one embedding per test image, not one per replica"


def test_two_local_workers_match_mirrored_and_only_the_chief_writes(runs, workdir):
    metrics = json.loads((runs["workers"] / "metrics.json").read_text())
    assert "over 2 replica(s)" in metrics["strategy"] and "/job:worker/" in metrics["strategy"]
    assert json.loads((runs["workers"] / "status.json").read_text())["status"] == "complete"
    assert_close_to_single_device(runs["workers"], runs["single"])
    workers, mirrored = read_history(runs["workers"] / "history.csv"), read_history(runs["mirrored"] / "history.csv")
    for key in ("loss", "val_loss"):
        np.testing.assert_allclose(workers[key], mirrored[key], rtol=SAME_ARITHMETIC_RTOL, err_msg=key)

    run_folders = [p for p in (workdir / "runs" / "workers" / "triplet").iterdir() if p.name != "latest"]
    assert run_folders == [runs["workers"]], "the non-chief worker must not create a run folder"
    assert list((workdir / "tmp-workers").iterdir()) == [], "worker scratch folders and checkpoints are removed"


FAKE_WORKER = textwrap.dedent("""
    import json, os, signal, subprocess, sys, time
    from pathlib import Path

    out, failing, stubborn = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    helper = subprocess.Popen(["sleep", "600"])  # something the worker started: it must go too
    if index == stubborn:  # like a worker blocked in a collective op: it does not stop when asked
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    else:
        def stop(signum, frame):
            (out / f"stopped{index}").write_text(signal.Signals(signum).name)
            sys.exit(130)
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
    (out / f"worker{index}.json").write_text(json.dumps(
        {"pids": [os.getpid(), helper.pid], "tf_config": json.loads(os.environ["TF_CONFIG"]), "argv": sys.argv[4:]}))
    if index == failing:
        time.sleep(1)
        sys.exit(3)
    time.sleep(600)
""")


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def start_launch(tmp_path, workers, failing, stubborn):
    script = tmp_path / "fake_worker.py"
    script.write_text(FAKE_WORKER)
    return subprocess.Popen([sys.executable, "-m", "sigverify.launch", "--workers", str(workers), "--grace-seconds", "1",
                             str(script), str(tmp_path), str(failing), str(stubborn), "--epochs", "1"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def worker_records(tmp_path, workers, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        files = [tmp_path / f"worker{i}.json" for i in range(workers)]
        if all(f.exists() for f in files):
            time.sleep(0.2)  # written in one call, but let it land
            return [json.loads(f.read_text()) for f in files]
        time.sleep(0.1)
    raise AssertionError(f"workers did not start within {timeout} s")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_failing_worker_brings_the_others_down(tmp_path):
    launch = start_launch(tmp_path, workers=3, failing=2, stubborn=1)
    records = worker_records(tmp_path, 3)
    _, stderr = launch.communicate(timeout=60)
    assert launch.returncode == 3, stderr[-2000:]
    assert "worker 2 exited with 3" in stderr
    assert (tmp_path / "stopped0").read_text() == "SIGTERM", "the others are asked to stop before being killed"
    left = [pid for record in records for pid in record["pids"] if alive(pid)]
    assert left == [], f"processes left behind: {left}"

    addresses = records[0]["tf_config"]["cluster"]["worker"]
    assert len(set(addresses)) == 3 and all(a.startswith("127.0.0.1:") for a in addresses)
    assert [r["tf_config"]["task"] for r in records] == [{"type": "worker", "index": i} for i in range(3)]
    assert all(r["tf_config"]["cluster"]["worker"] == addresses for r in records)
    assert all(r["argv"] == ["--epochs", "1", "--strategy", "multiworker"] for r in records)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_ctrl_c_reaches_every_worker_and_leaves_nothing(tmp_path):
    launch = start_launch(tmp_path, workers=2, failing=-1, stubborn=1)
    records = worker_records(tmp_path, 2)
    launch.send_signal(signal.SIGINT)
    _, stderr = launch.communicate(timeout=60)
    assert launch.returncode == 130, stderr[-2000:]
    assert (tmp_path / "stopped0").read_text() == "SIGINT"
    left = [pid for record in records for pid in record["pids"] if alive(pid)]
    assert left == [], f"processes left behind: {left}"


def test_worker_flags_and_tf_config():
    assert worker_arguments(["--profile", "smoke"]) == ["--profile", "smoke", "--strategy", "multiworker"]
    assert worker_arguments(["--strategy", "multiworker"]) == ["--strategy", "multiworker"]
    from sigverify.errors import ConfigError

    with pytest.raises(ConfigError, match="--strategy mirrored"):
        worker_arguments(["--strategy", "mirrored"])
    config = json.loads(tf_config(["127.0.0.1:1", "127.0.0.1:2"], 1))
    assert config == {"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}, "task": {"type": "worker", "index": 1}}


def test_feeds_shard_by_data():
    import tensorflow as tf

    from sigverify.training.engine import LabelledBatches, PairBatches, ViewBatches
    from sigverify.training.tf_data import labelled_dataset, pair_dataset, view_dataset

    images, labels = np.zeros((4, 8, 8), np.uint8), np.array([0, 0, 1, 1])
    batches = lambda epoch: np.array([[0, 1, 2, 3]])
    pairs = lambda epoch: ([np.array([0, 2])], [np.array([1, 3])], [np.array([1.0, 0.0], np.float32)])
    feeds = [labelled_dataset(LabelledBatches(images, labels, batches), 0),
             pair_dataset(PairBatches(images, pairs), 0),
             view_dataset(ViewBatches(images, batches, lambda epoch: lambda batch, number: (batch, batch)), 0)]
    for feed in feeds:
        assert feed.options().experimental_distribute.auto_shard_policy == tf.data.experimental.AutoShardPolicy.DATA


# One training step of a Siamese model with ContrastiveLoss through the TensorFlow engine's Trainer, on one CPU and
# mirrored over 2 logical CPUs, from the same weights on the same pairs. Logical CPUs must be split before TensorFlow
# starts its devices: a process of its own.
CONTRASTIVE_REPLICAS = """
import json, sys, tempfile
import keras, numpy as np, tensorflow as tf
from sigverify.losses import ContrastiveLoss
from sigverify.models.siamese import build_siamese
from sigverify.training.tf_engine import Trainer, make_strategy, split_cpu

split_cpu(2)
rng = np.random.default_rng(0)
features = rng.normal(size=(16, 6)).astype(np.float32)
first, second = np.arange(0, 16, 2), np.arange(1, 16, 2)
same = np.array([1, 0, 1, 0, 1, 1, 0, 0], np.float32)
initial = None

def one_step(strategy_name):
    global initial
    strategy = make_strategy(strategy_name)
    with strategy.scope():
        keras.utils.set_random_seed(0)
        inputs = keras.Input((6,), name="features")
        tower = keras.Model(inputs, keras.layers.Dense(3, name="head")(keras.layers.Dense(5, activation="tanh",
                                                                                          name="hidden")(inputs)))
        if initial is None:
            initial = tower.get_weights()
        tower.set_weights(initial)
        siamese = build_siamese(tower)
        optimizer = keras.optimizers.SGD(0.5)
    def batches(epoch):
        return tf.data.Dataset.from_tensors(((features[first], features[second]), same))
    with tempfile.TemporaryDirectory() as run_dir:
        result = Trainer(siamese, ContrastiveLoss(margin=2.0), optimizer, strategy, run_dir).fit(
            batches, epochs=1, steps_per_epoch=1, verbose=0)
    return strategy.num_replicas_in_sync, result.history["loss"][0], [w.tolist() for w in tower.get_weights()]

single, mirrored = one_step("cpu"), one_step("mirrored")
print(json.dumps({"replicas": [single[0], mirrored[0]], "loss": [single[1], mirrored[1]],
                  "weights": [single[2], mirrored[2]], "initial": [w.tolist() for w in initial]}))
"""


def test_contrastive_loss_over_two_replicas_matches_one():
    """ContrastiveLoss returns the mean itself, so the loop's one division by the replicas is the only one: the first
    step's loss and the updated weights over 2 mirrored CPUs are those of one CPU (they were scaled twice)."""
    done = subprocess.run([sys.executable, "-c", CONTRASTIVE_REPLICAS], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3"))
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["replicas"] == [1, 2]
    np.testing.assert_allclose(result["loss"][1], result["loss"][0], rtol=1e-6)
    single, mirrored, initial = result["weights"][0], result["weights"][1], result["initial"]
    for before, one, two in zip(initial, single, mirrored):
        # The head's bias cancels in the distance (no gradient); every kernel must have moved.
        assert np.ndim(before) == 1 or not np.allclose(one, before), "the step moved the kernels"
        np.testing.assert_allclose(two, one, rtol=1e-5, atol=1e-6)
