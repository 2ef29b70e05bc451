"""A trained run in use: a gallery of the synthetic set's writers enrolled from a smoke run, calibrated operating
points, verification and identification against it (decisions match the run's own pair distances), an enrolment that
fails, is interrupted or killed midway leaves the gallery as it was, concurrent enrolments lose nothing, batch scoring
of a CSV, and the run evaluated on a second synthetic set."""

import json
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from sigverify.cli import main
from sigverify.data.preprocess import PreprocessConfig
from sigverify.distances import paired_distances_numpy
from sigverify.errors import ConfigError
from sigverify.verification.calibration import equal_error_point, threshold_at_far
from sigverify.verification.decisions import enrol_files, identify, open_gallery
from sigverify.verification.gallery import Gallery
from sigverify.verification.trained_run import TrainedRun
from tests.conftest import make_synthetic_dataset


@pytest.fixture(scope="module")
def calibrated_run(triplet_smoke_run, tmp_path_factory) -> Path:
    """A copy of the smoke run, calibrated on its training writers."""
    _, run_dir, _ = triplet_smoke_run
    copy = tmp_path_factory.mktemp("calibrated") / run_dir.name
    shutil.copytree(run_dir, copy)
    assert main(["calibrate", "--run", str(copy)]) == 0
    return copy


@pytest.fixture(scope="module")
def run_embeddings(calibrated_run):
    """{image path: embedding} of the run's test images, as the run itself computed them."""
    stored = np.load(calibrated_run / "embeddings.npz")
    return {str(path): embedding for path, embedding in zip(stored["path"], stored["embeddings"])}


class EmbeddingsOnlyRun:
    """What a gallery needs of a run when the test enrols embeddings directly: its identity and embedding size."""

    def __init__(self):
        self.path = Path("/nonexistent/run")
        self.identity = {"model_sha256": "0" * 64, "preprocessing": "{}", "metric": "cosine"}
        self.preprocessing = PreprocessConfig((8, 8))

    @staticmethod
    def embed_images(images):
        return np.zeros((len(images), 32), np.float32)


def _gallery_rows(db: Path) -> list:
    with sqlite3.connect(db) as connection:
        return sorted(connection.execute("SELECT writer, file_name, sha256, embedding FROM reference_signatures"))


def test_calibration_file_and_det_curve(calibrated_run):
    calibration = json.loads((calibrated_run / "calibration.json").read_text())
    assert (calibrated_run / "det.png").stat().st_size > 0
    assert calibration["rule"] in ("mean", "min") and calibration["rule"] in calibration["rule_reason"]
    assert "training writers" in calibration["writers"]
    one = calibration["reference_counts"]["1"]
    for kind in ("skilled", "random"):
        points = one[kind]["far"]
        thresholds = [points[target]["threshold"] for target in ("0.1", "0.01", "0.001")]
        assert thresholds == sorted(thresholds, reverse=True), "a lower FAR needs a stricter threshold"
        for target, point in points.items():
            assert point["far"] <= float(target) + 1e-12 and 0.0 <= point["frr"] <= 1.0
        assert 0.0 <= one[kind]["eer"]["rate"] <= 1.0


def test_threshold_at_far_against_a_loop():
    rng = np.random.default_rng(3)
    for _ in range(20):
        negatives = np.round(rng.normal(1.0, 0.3, rng.integers(5, 300)), 2)  # rounded: ties on purpose
        positives = rng.normal(0.5, 0.3, 50)
        for target in (0.1, 0.01, 0.3):
            point = threshold_at_far(negatives, positives, target)
            candidates = np.unique(np.r_[negatives, negatives - 1e-9])
            allowed = [t for t in candidates if np.mean(negatives <= t) <= target]
            best_far = max(np.mean(negatives <= t) for t in allowed) if allowed else 0.0
            assert point["far"] == pytest.approx(best_far) and point["far"] <= target
            assert point["frr"] == pytest.approx(np.mean(positives > point["threshold"]))
    crossing = equal_error_point(np.array([0.5, 0.6, 0.7, 0.8]), np.array([0.1, 0.2, 0.3, 0.65]))
    assert crossing["far"] == pytest.approx(0.25) and crossing["frr"] == pytest.approx(0.25)


def test_enrol_verify_and_identify_match_the_runs_pair_distances(calibrated_run, run_embeddings, tiny_dataset,
                                                                 tmp_path, capsys):
    db = tmp_path / "gallery.sqlite"
    assert main(["gallery", "create", "--run", str(calibrated_run), "--db", str(db)]) == 0
    assert main(["enroll", "--db", str(db), "--data", str(tiny_dataset)]) == 0
    with Gallery(db) as gallery:
        writers = gallery.writers()
        assert [w for w, _, _ in writers] == sorted(str(w) for w in range(1, 11)) and {c for _, c, _ in writers} == {6}
    capsys.readouterr()

    # One reference per writer (K = 1): the score is the pair distance the run computed, decided at the K = 1 point.
    single = tmp_path / "single.sqlite"
    assert main(["gallery", "create", "--run", str(calibrated_run), "--db", str(single)]) == 0
    paths = sorted(run_embeddings)
    reference = next(p for p in paths if "original_" in p)
    questioned = [p for p in paths if p != reference][:8]
    writer = Path(reference).stem.split("_")[1]
    assert main(["enroll", "--db", str(single), "--writer", writer, reference]) == 0
    capsys.readouterr()
    assert main(["verify", "--db", str(single), "--writer", writer, "--json", *questioned]) == 0
    results = json.loads(capsys.readouterr().out)
    point = json.loads((calibrated_run / "calibration.json").read_text())["reference_counts"]["1"]["skilled"]["far"]
    for path, result in zip(questioned, results):
        expected = paired_distances_numpy(run_embeddings[reference][None], run_embeddings[path][None], "cosine")[0]
        assert result["score"] == pytest.approx(expected, abs=2e-4)
        assert result["threshold"] == point["0.01"]["threshold"] and result["operating_point"]["calibrated_at_k"] == 1
        assert result["decision"].startswith("same writer") == (result["score"] <= result["threshold"])

    # Identification: the nearest writer of a genuine signature is the writer whose references are nearest.
    gallery, run = open_gallery(db)
    with gallery:
        probe = paths[0]
        result = identify(gallery, run, probe, top=3)
        embeddings, owners = gallery.all_references()
    distances = paired_distances_numpy(np.repeat(run_embeddings[probe][None], len(embeddings), 0), embeddings, "cosine")
    nearest_writer = owners[int(np.argmin(distances))]
    assert result["nearest"][0]["writer"] == nearest_writer and len(result["nearest"]) == 3
    assert result["nearest"][0]["distance"] == pytest.approx(float(distances.min()), abs=1e-4)
    assert len({entry["writer"] for entry in result["nearest"]}) == 3
    assert main(["identify", "--db", str(db), probe, "--top", "2"]) == 0
    assert "1." in capsys.readouterr().out


def test_a_large_gallery_is_searched_through_a_faiss_index_kept_per_revision(tmp_path, monkeypatch):
    from sigverify.verification import search

    monkeypatch.setattr(search, "EXACT_SEARCH_MAX_REFERENCES", 100)
    db = tmp_path / "g.sqlite"
    Gallery.create(db, EmbeddingsOnlyRun()).close()
    rng = np.random.default_rng(5)
    with Gallery(db) as gallery:
        centres = rng.normal(size=(60, gallery.dim))
        gallery.enroll({f"w{writer}": [(f"{writer}-{i}.png", f"{writer}-{i}", centres[writer] + 0.1 * rng.normal(
            size=gallery.dim)) for i in range(5)] for writer in range(60)})
        index, writers = gallery.search_index()
        assert index.kind.startswith("faiss IVF-Flat") and index.size == 300
        index_file = tmp_path / f"g.sqlite.r{gallery.revision()}.faiss"
        assert index_file.is_file()
        queries = centres[:20] + 0.1 * rng.normal(size=(20, gallery.dim))
        _, positions = index.search(queries.astype(np.float32), 1)
        assert [writers[p] for p in positions[:, 0]] == [f"w{w}" for w in range(20)]
        modified = index_file.stat().st_mtime_ns
        again, _ = gallery.search_index()
        assert index_file.stat().st_mtime_ns == modified and again.kind == index.kind, "reused, not rebuilt"
        gallery.enroll({"late": [("late.png", "late", centres[0])]})
        newer, writers = gallery.search_index()
        assert newer.size == 301 and not index_file.exists() and writers[-1] == "late"
        newest_file = tmp_path / f"g.sqlite.r{gallery.revision()}.faiss"
        newest_file.write_bytes(b"damaged")
        rebuilt, _ = gallery.search_index()
        assert rebuilt.size == 301 and newest_file.stat().st_size > 1000


def test_the_same_image_is_enrolled_once_and_never_for_two_writers(calibrated_run, tiny_dataset, tmp_path, capsys):
    db = tmp_path / "g.sqlite"
    image = tiny_dataset / "full_org" / "original_2_1.png"
    main(["gallery", "create", "--run", str(calibrated_run), "--db", str(db)])
    assert main(["enroll", "--db", str(db), "--writer", "alice", str(image), str(image)]) == 0
    assert main(["enroll", "--db", str(db), "--writer", "alice", str(image)]) == 0
    out = capsys.readouterr().out
    assert "enrolled once" in out and "already enrolled for writer alice" in out
    before = _gallery_rows(db)
    assert len(before) == 1
    assert main(["enroll", "--db", str(db), "--writer", "bob", str(tiny_dataset / "full_org" / "original_3_1.png"),
                 str(image)]) == 2
    assert "enrolled for writer alice" in capsys.readouterr().err
    assert _gallery_rows(db) == before, "a refused enrolment adds nothing, not even its good images"


def test_an_enrolment_interrupted_inside_its_transaction_adds_nothing(calibrated_run, tiny_dataset, tmp_path):
    db = tmp_path / "g.sqlite"
    run = TrainedRun(calibrated_run)
    Gallery.create(db, run).close()
    with Gallery(db) as gallery:
        enrol_files(gallery, run, {"first": [str(tiny_dataset / "full_org" / "original_1_1.png")]})
    before = _gallery_rows(db)

    class InterruptedEmbedding:
        def __array__(self, dtype=None, copy=None):
            raise KeyboardInterrupt

    good = np.zeros(len(np.frombuffer(before[0][3], np.float32)), np.float32)
    with Gallery(db) as gallery, pytest.raises(KeyboardInterrupt):
        gallery.enroll({"second": [("a.png", "a" * 64, good), ("b.png", "b" * 64, good),
                                   ("c.png", "c" * 64, InterruptedEmbedding())]})
    assert _gallery_rows(db) == before
    with sqlite3.connect(db) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


STOPPED_ENROLMENT = """
import signal, sys, time
import numpy as np
from sigverify.verification.gallery import Gallery

# Ctrl-C's handler even where the launcher ignores SIGINT (a background job without job control does; it is inherited)
signal.signal(signal.SIGINT, signal.default_int_handler)

class SlowEmbedding:  # the second reference: the process is stopped while the transaction holds the first
    def __array__(self, dtype=None, copy=None):
        print("inside the transaction", flush=True)
        time.sleep(120)

gallery = Gallery(sys.argv[1])
gallery.enroll({"intruder": [("a.png", "a" * 64, np.zeros(gallery.dim, np.float32)), ("b.png", "b" * 64, SlowEmbedding())]})
"""


@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGINT])
def test_an_enrolment_killed_inside_its_transaction_leaves_the_gallery_unchanged(stop, calibrated_run, tiny_dataset,
                                                                                tmp_path):
    db = tmp_path / "g.sqlite"
    main(["gallery", "create", "--run", str(calibrated_run), "--db", str(db)])
    main(["enroll", "--db", str(db), "--writer", "kept", str(tiny_dataset / "full_org" / "original_1_1.png")])
    before = _gallery_rows(db)
    process = subprocess.Popen([sys.executable, "-c", STOPPED_ENROLMENT, str(db)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "inside the transaction", process.communicate()[1][-2000:]
    process.send_signal(stop)
    process.communicate(timeout=60)
    assert process.returncode != 0
    assert _gallery_rows(db) == before
    with sqlite3.connect(db) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    with Gallery(db) as gallery:  # and the gallery takes the next enrolment
        gallery.enroll({"next": [("c.png", "c" * 64, np.zeros(gallery.dim, np.float32))]})
        assert [w for w, _, _ in gallery.writers()] == ["kept", "next"]


def test_concurrent_enrolments_lose_nothing(tmp_path):
    db = tmp_path / "g.sqlite"
    Gallery.create(db, EmbeddingsOnlyRun()).close()
    dim = Gallery(db).dim
    rng = np.random.default_rng(0)
    errors = []

    def enrol(prefix: str):
        try:
            for batch in range(20):
                with Gallery(db) as gallery:
                    gallery.enroll({f"{prefix}{batch}": [(f"{prefix}{batch}-{i}.png", f"{prefix}{batch}-{i}",
                                                          rng.normal(size=dim)) for i in range(5)]})
        except Exception as error:  # noqa: BLE001  (reported by the assertion below)
            errors.append(error)

    threads = [threading.Thread(target=enrol, args=(prefix,)) for prefix in ("p", "q", "r")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    with Gallery(db) as gallery:
        assert len(gallery.writers()) == 60 and gallery.size() == 300 and gallery.revision() == 60


def test_a_gallery_refuses_another_model_and_bad_input(calibrated_run, tiny_dataset, tmp_path, capsys):
    db = tmp_path / "g.sqlite"
    main(["gallery", "create", "--run", str(calibrated_run), "--db", str(db)])
    other = tmp_path / "other-run"
    shutil.copytree(calibrated_run, other)
    model = TrainedRun(other).model
    model.layers[-2].set_weights([w + 0.01 for w in model.layers[-2].get_weights()])
    model.save(other / "model.keras")
    with pytest.raises(ConfigError, match="another model"):
        open_gallery(db, other)
    image = str(tiny_dataset / "full_org" / "original_1_1.png")
    not_an_image = tmp_path / "note.png"
    not_an_image.write_text("not a png")
    before = _gallery_rows(db)
    cases = [
        (["gallery", "create", "--run", str(calibrated_run), "--db", str(db)], "exists"),
        (["gallery", "list", "--db", str(tmp_path / "missing.sqlite")], "no such gallery"),
        (["gallery", "list", "--db", str(not_an_image)], "not a sigverify gallery"),
        (["gallery", "remove", "--db", str(db), "--writer", "nobody"], "not enrolled"),
        (["enroll", "--db", str(db), "--writer", "w", str(tmp_path / "absent.png")], "absent.png"),
        (["enroll", "--db", str(db), "--writer", "w", image, str(not_an_image)], "note.png"),
        (["enroll", "--db", str(db)], "expected --writer"),
        (["enroll", "--db", str(db), "--run", str(other), "--writer", "w", image], "another model"),
        (["verify", "--db", str(db), "--writer", "nobody", image], "not enrolled"),
        (["verify", "--db", str(db), image], "--writer"),
        (["verify", "--run", str(calibrated_run), image], "a pair"),
        (["identify", "--db", str(db), image], "no writer enrolled"),
        (["calibrate", "--run", str(tmp_path / "no-run")], "no such folder"),
        (["calibrate", "--run", str(calibrated_run), "--data", str(tmp_path / "no-data")], "no such folder"),
        (["score", "--run", str(calibrated_run), "--pairs", str(tmp_path / "none.csv"), "--out", str(tmp_path / "o.csv")],
         "no such file"),
        (["evaluate", "--run", str(calibrated_run), "--data", str(tmp_path / "no-data")], "no such folder"),
        (["evaluate", "--run", str(calibrated_run), "--data", str(tiny_dataset), "--runs", str(not_an_image)], "--runs"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, (argv, err)
    assert _gallery_rows(db) == before
    main(["enroll", "--db", str(db), "--writer", "w", image])
    capsys.readouterr()
    for far in ("0.5", "one percent"):
        assert main(["verify", "--db", str(db), "--writer", "w", "--far", far, image]) == 2
        assert "expected one of 0.1, 0.01, 0.001 or eer" in capsys.readouterr().err
    uncalibrated = tmp_path / "uncalibrated"
    shutil.copytree(calibrated_run, uncalibrated)
    (uncalibrated / "calibration.json").unlink()
    assert main(["verify", "--db", str(db), "--run", str(uncalibrated), "--writer", "w", image]) == 2
    assert "sigverify calibrate" in capsys.readouterr().err
    (uncalibrated / "calibration.json").write_text("{")
    assert main(["verify", "--db", str(db), "--run", str(uncalibrated), "--writer", "w", image]) == 2
    assert "cannot be read as a calibration" in capsys.readouterr().err
    assert main(["identify", "--db", str(db), "--top", "0", image]) == 2
    assert "--top 0" in capsys.readouterr().err


def test_score_streams_a_csv_and_keeps_going_past_an_unreadable_image(calibrated_run, run_embeddings, tmp_path,
                                                                     capsys):
    paths = sorted(run_embeddings)
    reference = next(p for p in paths if Path(p).name.startswith("original"))
    writer = Path(reference).stem.split("_")[1]
    same_writer = [p for p in paths if Path(p).stem.split("_")[1] == writer and p != reference]
    questioned = (same_writer + [p for p in paths if p not in same_writer and p != reference])[:11]
    rows = [(reference, path, int(Path(path).name.startswith("original") and path in same_writer))
            for path in questioned]
    assert {label for _, _, label in rows} == {0, 1}
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("reference,questioned,label\n" + "".join(f"{a},{b},{label}\n" for a, b, label in rows)
                     + f"{reference},missing.png,1\n")
    out = tmp_path / "scores.csv"
    assert main(["score", "--run", str(calibrated_run), "--pairs", str(pairs), "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "scored 11 of 12 pairs" in printed and "missing.png" in printed and "max accuracy" in printed
    import pandas as pd

    scores = pd.read_csv(out)
    assert len(scores) == 12 and scores["error"].isna().sum() == 11
    for (a, b, _), distance in zip(rows, scores["distance"][:11]):
        expected = paired_distances_numpy(run_embeddings[a][None], run_embeddings[b][None], "cosine")[0]
        assert distance == pytest.approx(expected, abs=2e-4)
    pairs.write_text("reference,questioned,label\n" + f"{reference},{paths[1]},maybe\n")
    assert main(["score", "--run", str(calibrated_run), "--pairs", str(pairs), "--out", str(out), "--quiet"]) == 2
    assert "line 2" in capsys.readouterr().err
    assert len(pd.read_csv(out)) == 12, "a failed scoring leaves the earlier scores file as it was"
    pairs.write_text("ref,questioned\n")
    assert main(["score", "--run", str(calibrated_run), "--pairs", str(pairs), "--out", str(out), "--quiet"]) == 2
    assert "reference" in capsys.readouterr().err


def test_evaluate_on_a_second_synthetic_set(calibrated_run, tmp_path, capsys):
    other = make_synthetic_dataset(tmp_path / "other", n_writers=6, n_samples=5, seed=7)
    shutil.copy(other / "full_org" / "original_2_1.png", other / "full_org" / "original_2_9.png")  # a duplicate file
    runs = tmp_path / "runs"
    assert main(["evaluate", "--run", str(calibrated_run), "--data", str(other), "--runs", str(runs),
                 "--protocol", "writer-dependent", "--references", "3"]) == 0
    folder = (runs / "eval" / "latest").resolve()
    assert str(folder) in capsys.readouterr().out
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["duplicates_dropped"] == 1 and metrics["n_test_images"] == 6 * 10
    assert metrics["test_writers"] == list(range(1, 7))
    assert metrics["n_pairs"]["hard"] == 6 * 10 * 2 and metrics["hard"]["accuracy_at_run_threshold"] is not None
    assert set(metrics["raw_pixels"]) == {"hard", "easy"}
    applied = metrics["calibrated_operating_points"]
    assert {row["forgeries"] for row in applied} == {"skilled", "random"}
    assert all(0 <= row["far_here"] <= 1 for row in applied)
    assert metrics["writer_dependent"]["references"] == 3 and metrics["writer_dependent"]["n_writers"] == 6
    for name in ("report.md", "umap.png", "density_hard.png", "density_easy.png", "roc.png", "pair_scores.npz"):
        assert (folder / name).stat().st_size > 0, name
    report = (folder / "report.md").read_text()
    assert "1 byte-identical duplicate" in report and "Writer-dependent" in report and "FAR here" in report
    assert main(["evaluate", "--run", str(calibrated_run), "--data", str(other), "--runs", str(runs),
                 "--references", "5", "--protocol", "writer-dependent"]) == 2
    assert "genuine" in capsys.readouterr().err
    assert len(list((runs / "eval").glob("2*"))) == 1, "a refused evaluation makes no folder"
