"""A trained run's model and preprocessing evaluated on another dataset: every writer a test writer, the post's pairs,
the metrics and figures of a training run, the run's calibrated thresholds applied (the FAR they give on the new data),
the raw-pixel reference on the same pairs and, on request, the writer-dependent protocol. Results go to a new folder
`RUNS/eval/<id>/`."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from sigverify.data.index import read_index
from sigverify.data.pairs import verification_pairs
from sigverify.data.prepare import SplitData, check_enough_data
from sigverify.data.preprocess import load_preprocessed_images
from sigverify.errors import ConfigError
from sigverify.evaluation.baselines import raw_pixel_embeddings
from sigverify.evaluation.metrics import PAIR_SETS, accuracy_at_threshold, evaluate_embeddings
from sigverify.evaluation.model import score_test_split
from sigverify.experiment import check_writable
from sigverify.reporting.report import write_evaluation_report
from sigverify.reporting.run_files import write_figures
from sigverify.reporting.tables import PAIR_SCORES_FILE, write_pair_scores
from sigverify.runs import RunFolder, write_json
from sigverify.verification.calibration import FORGERY_KINDS
from sigverify.verification.trained_run import CALIBRATION_FILE, TrainedRun, file_sha256

PROTOCOLS = ("writer-independent", "writer-dependent")
PAIR_SET_OF_KIND = {"skilled": "hard", "random": "easy"}


def without_duplicate_files(index: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """The index with every byte-identical file inside a writer kept once (the first in index order), and how many
    were dropped."""
    digests = index["path"].map(file_sha256)
    duplicated = pd.Series(list(zip(index["writer"], digests))).duplicated().to_numpy()
    return index[~duplicated].reset_index(drop=True), int(duplicated.sum())


def calibrated_points_applied(run: TrainedRun, scores: dict) -> list[dict] | None:
    """The run's K = 1 operating points (every FAR target and the EER, both forgery kinds) applied to the pair sets'
    `scores` (PairSetScores by set name): their threshold, the FAR and FRR calibration measured and those they give
    here; None without calibration.json."""
    if not (run.path / CALIBRATION_FILE).exists():
        return None
    calibration = run.calibration()
    rows = []
    for kind in FORGERY_KINDS:
        set_scores = scores.get(PAIR_SET_OF_KIND[kind])
        if set_scores is None:
            continue
        for target in [*calibration.far_targets(), "eer"]:
            point = calibration.operating_point(1, target, kind)
            accepted = set_scores.distances <= point.threshold
            rows.append({"forgeries": kind, "target": "EER" if target == "eer" else f"FAR {target}",
                         "threshold": point.threshold, "far_calibrated": point.far, "frr_calibrated": point.frr,
                         "far_here": float(accepted[set_scores.same == 0].mean()),
                         "frr_here": float((~accepted[set_scores.same == 1]).mean())})
    return rows


def evaluate_run(run_dir: str | Path, data_dir: str | Path, runs_root: str | Path = "runs", layout: str = "auto",
                 protocol: str = "writer-independent", references: int = 12, skip_bad_images: bool = False) -> Path:
    """Evaluate the run of `run_dir` on the dataset `data_dir`; returns the new evaluation folder. Every input is
    checked, and the images read and embedded, before the folder is made."""
    if protocol not in PROTOCOLS:
        raise ConfigError(f"--protocol {protocol}: expected one of {', '.join(PROTOCOLS)}")
    check_writable(Path(runs_root), "--runs")
    run = TrainedRun(run_dir)
    if not Path(data_dir).is_dir():
        raise ConfigError(f"--data {data_dir}: no such folder; expected a dataset folder (CEDAR layout or one folder "
                          "per writer)")
    index = read_index(data_dir, layout=layout, skip_bad=skip_bad_images)
    index, duplicates = without_duplicate_files(index)
    check_enough_data(index, Path(data_dir))
    images, kept, skipped = load_preprocessed_images(index["path"].tolist(), run.preprocessing,
                                                     run.config.data.cache_dir, skip_bad_images=skip_bad_images)
    index = index[kept].reset_index(drop=True)
    split = SplitData(index, images, verification_pairs(index))
    embeddings = run.embed_images(images)

    metrics, scores = score_test_split(embeddings, split, run.scoring)
    run_thresholds = {name: (run.metrics.get(name) or {}).get("train_threshold") for name in scores}
    for name, set_scores in scores.items():
        threshold = run_thresholds[name]
        metrics[name]["accuracy_at_run_threshold"] = (None if threshold is None else
                                                      accuracy_at_threshold(set_scores.distances, set_scores.same,
                                                                            threshold))
    raw_metrics, _ = evaluate_embeddings(raw_pixel_embeddings(images), split.pairs, metric="cosine")
    metrics.update({
        "status": "complete", "experiment": "eval", "protocol": protocol,
        "dataset": str(Path(data_dir).resolve()), "layout": index.attrs.get("layout", "unknown"),
        "test_writers": sorted(int(w) for w in index["writer"].unique()), "n_test_images": len(index),
        "duplicates_dropped": duplicates, "skipped_images": [path for path, _ in skipped],
        "run_thresholds": run_thresholds,
        "raw_pixels": {name: raw_metrics[name]["max_accuracy"] for name in ("hard", "easy") if raw_metrics.get(name)},
        "calibrated_operating_points": calibrated_points_applied(run, scores),
        "source_run": {"path": str(run.path), "experiment": run.config.experiment, "dataset": run.metrics.get("dataset"),
                       "model_description": run.metrics.get("model_description"),
                       "weights": run.metrics.get("weights"), "image_size": run.config.image.image_size,
                       "model_sha256": run.identity["model_sha256"]},
    })
    if protocol == "writer-dependent":
        from sigverify.evaluation.writer_dependent import writer_dependent_metrics

        metrics["writer_dependent"] = writer_dependent_metrics(embeddings, index["writer"].to_numpy(),
                                                               index["genuine"].to_numpy(), references=references)

    folder = RunFolder.create(runs_root, "eval")
    with folder.running():
        writers, genuine = index["writer"].to_numpy(), index["genuine"].to_numpy()
        write_pair_scores(folder.file(PAIR_SCORES_FILE), scores, {name: PAIR_SETS[name](split.pairs) for name in scores},
                          run_thresholds)
        write_figures(folder, metrics, scores, embeddings, writers, genuine, umap=len(index) >= 10)
        write_json(folder.file("metrics.json"), metrics)
        write_evaluation_report(folder, metrics, figures=[path.name for path in folder.path.iterdir()])
    return folder.path

