"""Decisions with a trained run: one questioned signature against one reference, questioned signatures against a
gallery writer's enrolled references at a calibrated operating point, and the nearest writers of the gallery."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sigverify.distances import paired_distances_numpy
from sigverify.errors import ConfigError, DataError
from sigverify.evaluation.metrics import REFERENCE_RULES
from sigverify.verification.gallery import Enrolment, Gallery
from sigverify.verification.search import nearest_writers
from sigverify.verification.trained_run import TrainedRun, file_sha256

GENUINE = "same writer (genuine)"
REJECTED = "different writer or forgery"


def pair_threshold(metrics: dict) -> tuple[float, str]:
    """The threshold a pair is decided at without a calibration: the training writers' max-accuracy threshold."""
    hard = metrics["hard"]
    if hard.get("train_threshold") is not None:
        return float(hard["train_threshold"]), "chosen on the training writers' pairs"
    return float(hard["threshold"]), "chosen on the test pairs"


def verify_pair(run_dir: str | Path, first: str | Path, second: str | Path) -> dict:
    """Is `second` by the writer of `first`? Distance by the run's metric, decided at `pair_threshold`."""
    run = TrainedRun(run_dir)
    embeddings = run.embed_files([first, second])
    distance = float(paired_distances_numpy(embeddings[:1], embeddings[1:], metric=run.scoring)[0])
    threshold, source = pair_threshold(run.metrics)
    return {"distance": distance, "threshold": threshold, "threshold_source": source, "metric": run.metric,
            "decision": GENUINE if distance <= threshold else REJECTED}


def open_gallery(db: str | Path, run_dir: str | Path | None = None) -> tuple[Gallery, TrainedRun]:
    """The gallery and its run (`run_dir`, or the run the gallery was made with), checked to share one model."""
    gallery = Gallery(db)
    run_path = run_dir or gallery.meta["run"]
    if run_dir is None and not Path(run_path).is_dir():
        raise ConfigError(f"--db {db}: its run folder {run_path} is gone; pass --run with the run that created it")
    run = TrainedRun(run_path)
    gallery.check_model(run)
    return gallery, run


def enrol_files(gallery: Gallery, run: TrainedRun, files_by_writer: dict[str, list[str]]) -> Enrolment:
    """Read and embed every file first (a bad image stops everything before the gallery is touched), then enrol all
    of them in one transaction."""
    references, given_twice = {}, []
    for writer, files in files_by_writer.items():
        if not files:
            raise ConfigError(f"--writer {writer}: no reference image given; expected one or more signature images")
        embeddings = run.embed_files(files)
        first_of_digest, rows = {}, []
        for path, embedding in zip(files, embeddings):
            sha256 = file_sha256(path)
            if sha256 in first_of_digest:
                given_twice.append((Path(path).name, f"the same image as {first_of_digest[sha256]}: enrolled once"))
                continue
            first_of_digest[sha256] = Path(path).name
            rows.append((Path(path).name, sha256, embedding))
        references[writer] = rows
    enrolment = gallery.enroll(references)
    enrolment.skipped.extend(given_twice)
    return enrolment


def verify_questioned(gallery: Gallery, run: TrainedRun, writer: str, questioned: list[str], far: str = "0.01",
                      kind: str = "skilled") -> list[dict]:
    """Each questioned image against `writer`'s references: score (the calibrated rule, mean or min, of the
    distances), the threshold of the calibrated operating point (FAR `far` on `kind` forgeries at the nearest K), its
    calibrated FAR/FRR, and the decision."""
    calibration = run.calibration()
    references = gallery.references_of(writer)
    point = calibration.operating_point(len(references), far, kind)
    embeddings = run.embed_files(questioned)
    results = []
    for path, embedding in zip(questioned, embeddings):
        distances = paired_distances_numpy(np.repeat(embedding[None], len(references), axis=0), references, run.scoring)
        score = float(REFERENCE_RULES[calibration.rule](distances))
        results.append({"questioned": str(path), "writer": writer, "score": score, "rule": calibration.rule,
                        "references": len(references), "threshold": point.threshold,
                        "operating_point": {"far_target": point.target, "forgeries": point.kind,
                                            "calibrated_at_k": point.reference_count, "far": point.far,
                                            "frr": point.frr, "resolved": point.resolved},
                        "decision": GENUINE if score <= point.threshold else REJECTED})
    return results


def identify(gallery: Gallery, run: TrainedRun, questioned: str, top: int = 5) -> dict:
    """The `top` nearest writers of the gallery to a questioned signature (smallest distance to any of their
    references), with how they were searched."""
    if top < 1:
        raise ConfigError(f"--top {top}: expected a positive number of writers")
    if isinstance(run.scoring, str):
        index, writers = gallery.search_index()
        embedding = run.embed_files([questioned])
        per_writer = max(count for _, count, _ in gallery.writers())
        distances, positions = index.search(embedding, min(index.size, top * per_writer))
        search, size = index.kind, index.size
    else:  # a learned pair score is no metric that an index can search: every reference is scored
        references, writers = gallery.all_references()
        if not len(writers):
            raise ConfigError(f"--db {gallery.path}: no writer enrolled; enrol some first (`sigverify enroll`)")
        embedding = run.embed_files([questioned])
        scores = paired_distances_numpy(np.repeat(embedding, len(references), axis=0), references, run.scoring)
        positions = np.argsort(scores, kind="stable")[None]
        distances, search, size = scores[positions], "exact (every reference scored by the pair classifier)", len(scores)
    ranked = nearest_writers(distances[0], positions[0], writers, top)
    if not ranked:
        raise DataError(f"{questioned}: no reference found in {gallery.path}")
    return {"questioned": str(questioned), "search": search, "references": size, "metric": run.metric,
            "nearest": [{"writer": writer, "distance": float(distance)} for writer, distance in ranked]}
