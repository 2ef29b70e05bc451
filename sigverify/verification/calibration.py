"""Operating points of a trained run: the distance thresholds at which a writer's K enrolled references accept 10 %,
1 % and 0.1 % of forgeries (and at the EER), for skilled and random forgeries, each with its false rejection rate,
chosen on writers the run was never tested on. `calibration.json` in the run folder holds them, `det.png` draws them."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sigverify.errors import ConfigError, DataError
from sigverify.evaluation.metrics import REFERENCE_RULES, all_pair_distances, reference_scores
from sigverify.runs import write_json, writing

FAR_TARGETS = (0.1, 0.01, 0.001)
REFERENCE_COUNTS = (1, 2, 3, 5, 8, 12)
FORGERY_KINDS = ("skilled", "random")
DRAWS = 10  # enrolments drawn per writer and K
MAX_RANDOM_PER_DRAW = 200  # other writers' signatures questioned per enrolment: enough for FAR = 0.1 %
SCHEMA_VERSION = 1


def threshold_at_far(negative_scores: np.ndarray, positive_scores: np.ndarray, far_target: float) -> dict:
    """The largest threshold (accepted when score <= threshold) whose false acceptance rate on `negative_scores` is at
    most `far_target`, placed halfway to the first negative it would accept; with the FAR and FRR it gives.
    `resolved` is False when the calibration has fewer than 1 / far_target negatives: no negative is accepted and the
    target is not measured."""
    negatives = np.sort(np.asarray(negative_scores, dtype=np.float64))
    allowed = int(np.floor(far_target * len(negatives) + 1e-9))  # negatives that may be accepted
    if allowed >= len(negatives):
        threshold = float(negatives[-1])
    else:
        first_refused = negatives[allowed]
        below = negatives[: np.searchsorted(negatives, first_refused, side="left")]
        threshold = float((below[-1] + first_refused) / 2) if len(below) else float(np.nextafter(first_refused, -np.inf))
    return {"threshold": threshold, "far": float(np.mean(negatives <= threshold)),
            "frr": float(np.mean(np.asarray(positive_scores) > threshold)), "resolved": allowed >= 1}


def equal_error_point(negative_scores: np.ndarray, positive_scores: np.ndarray) -> dict:
    """The threshold where FAR and FRR cross (the first candidate where FAR >= FRR), with their mean there."""
    negatives = np.sort(np.asarray(negative_scores, dtype=np.float64))
    positives = np.sort(np.asarray(positive_scores, dtype=np.float64))
    candidates = np.unique(np.concatenate([negatives, positives]))
    far = np.searchsorted(negatives, candidates, side="right") / len(negatives)
    frr = 1.0 - np.searchsorted(positives, candidates, side="right") / len(positives)
    crossing = int(np.argmax(far >= frr))
    return {"threshold": float(candidates[crossing]), "rate": float((far[crossing] + frr[crossing]) / 2),
            "far": float(far[crossing]), "frr": float(frr[crossing])}


def det_curve(negative_scores: np.ndarray, positive_scores: np.ndarray, points: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """(FAR, FRR) at `points` thresholds spanning the scores, for a DET plot."""
    negatives = np.sort(np.asarray(negative_scores, dtype=np.float64))
    positives = np.sort(np.asarray(positive_scores, dtype=np.float64))
    thresholds = np.quantile(np.concatenate([negatives, positives]), np.linspace(0, 1, points))
    far = np.searchsorted(negatives, thresholds, side="right") / len(negatives)
    frr = 1.0 - np.searchsorted(positives, thresholds, side="right") / len(positives)
    return far, frr


def better_rule(metrics: dict) -> tuple[str, str]:
    """The rule ("mean" or "min" distance to the references) with the lower skilled-forgery EER in the run's own
    reference_k figures (averaged over K), and the sentence that says so; "mean" when the run has no such figures."""
    eers = {rule: [] for rule in REFERENCE_RULES}
    for count, entry in (metrics.get("reference_k") or {}).items():
        for rule in REFERENCE_RULES:
            hard = ((entry or {}).get(rule) or {}).get("hard")
            if hard and int(count) > 1:  # at K = 1 both rules are the pair distance
                eers[rule].append(hard["eer_interpolated"])
    if not eers["mean"] or not eers["min"]:
        return "mean", "mean distance to the references (the run has no reference_k figures to choose by)"
    mean_eer, min_eer = np.mean(eers["mean"]), np.mean(eers["min"])
    rule = "mean" if mean_eer <= min_eer else "min"
    return rule, (f"{rule} distance to the references: the run's skilled-forgery EER with K > 1 references is "
                  f"{mean_eer:.3f} by mean, {min_eer:.3f} by min")


def calibrate_embeddings(embeddings, writers, genuine, metric: str, rule: str, reference_counts=REFERENCE_COUNTS,
                         far_targets=FAR_TARGETS, draws: int = DRAWS, seed: int = 0) -> tuple[dict, dict]:
    """Operating points for each K (float N×D embeddings of the calibration writers' images; int writers; bool
    genuine): {str(K): {kind: {"n_genuine", "n_negative", "eer": {...}, "far": {str(target): {...}}}}}, and the DET
    curves {(K, kind): (far, frr)} behind them. Ks that no writer has K + 1 genuine signatures for are left out."""
    distances = all_pair_distances(embeddings, metric)
    points, curves = {}, {}
    for count in reference_counts:
        scores = reference_scores(distances, writers, genuine, count, draws, np.random.default_rng([seed, count]),
                                  max_random_per_writer=MAX_RANDOM_PER_DRAW)
        if scores is None:
            continue
        positives = scores[rule, "genuine"]
        points[str(count)] = {}
        for kind in FORGERY_KINDS:
            negatives = scores[rule, kind]
            if not len(negatives) or not len(positives):
                continue
            points[str(count)][kind] = {
                "n_genuine": len(positives), "n_negative": len(negatives),
                "eer": equal_error_point(negatives, positives),
                "far": {str(target): threshold_at_far(negatives, positives, target) for target in far_targets},
            }
            curves[count, kind] = det_curve(negatives, positives)
    if not points:
        raise DataError(f"no calibration writer has more than {min(reference_counts)} genuine signature(s); expected "
                        "writers with at least two genuine signatures")
    return points, curves


def calibration_images(run, data_dir: str | None, layout: str = "auto", skip_bad_images: bool = False):
    """(uint8 images, index, description) of the calibration writers: the run's training writers (its own split,
    re-made from its settings), or every writer of `data_dir` except the run's test writers when it is the run's
    dataset."""
    from sigverify.data.index import read_index
    from sigverify.data.prepare import prepare_data
    from sigverify.data.preprocess import load_preprocessed_images

    test_writers = set(run.metrics.get("test_writers") or [])
    if data_dir is None:
        data = prepare_data(run.config)
        if set(data.test_writers) != test_writers:
            raise ConfigError(f"--run {run.path}: its dataset {data.dataset} no longer splits into the test writers it "
                              f"recorded ({sorted(test_writers)[:10]}); expected the dataset the run trained on, or "
                              "--data with writers to calibrate on")
        return data.train.images, data.train.index, f"the run's {len(data.train_writers)} training writers ({data.dataset})"
    folder = Path(data_dir)
    if not folder.is_dir():
        raise ConfigError(f"--data {data_dir}: no such folder; expected a dataset folder of calibration writers")
    index = read_index(folder, layout=layout, skip_bad=skip_bad_images)
    description = f"every writer of {folder.resolve()}"
    if str(folder.resolve()) == run.metrics.get("dataset"):
        index = index[~index["writer"].isin(test_writers)].reset_index(drop=True)
        description = f"the writers of {folder.resolve()} other than the run's {len(test_writers)} test writers"
    if index.empty:
        raise DataError(f"--data {data_dir}: no calibration writer left; expected writers the run was not tested on")
    images, kept, _ = load_preprocessed_images(index["path"].tolist(), run.preprocessing, run.config.data.cache_dir,
                                               skip_bad_images=skip_bad_images)
    return images, index[kept].reset_index(drop=True), description


def calibrate_run(run, data_dir: str | None = None, layout: str = "auto", skip_bad_images: bool = False,
                  seed: int = 0) -> dict:
    """Calibrate `run` (a TrainedRun) and write calibration.json and det.png into its folder (each written whole or
    not at all); returns what calibration.json holds."""
    from sigverify.reporting.plots import plot_det
    from sigverify.verification.trained_run import CALIBRATION_FILE

    images, index, description = calibration_images(run, data_dir, layout, skip_bad_images)
    writers, genuine = index["writer"].to_numpy(), index["genuine"].to_numpy()
    embeddings = run.embed_images(images)
    rule, rule_reason = better_rule(run.metrics)
    points, curves = calibrate_embeddings(embeddings, writers, genuine, run.scoring, rule, seed=seed)
    calibration = {
        "schema_version": SCHEMA_VERSION, "created": dt.datetime.now().isoformat(timespec="seconds"),
        "model_sha256": run.identity["model_sha256"], "metric": run.metric, "rule": rule, "rule_reason": rule_reason,
        "writers": description, "n_writers": len(np.unique(writers)), "n_images": len(index),
        "draws": DRAWS, "seed": seed, "reference_counts": points,
    }
    drawn_counts = {min(count for count, _ in curves), max(count for count, _ in curves)}  # more curves hide each other
    with writing(run.path / "det.png") as temporary:
        plot_det({f"K = {count}, {kind} forgeries": curve for (count, kind), curve in curves.items()
                  if count in drawn_counts}, temporary, title=f"DET on {description}")
    write_json(run.path / CALIBRATION_FILE, calibration)
    return calibration


@dataclass(frozen=True)
class OperatingPoint:
    threshold: float  # accepted as the writer's when the score (distance to the references) <= threshold
    far: float  # as calibrated
    frr: float
    reference_count: int  # the K it was calibrated at
    kind: str  # skilled or random forgeries
    target: str  # "0.01", ..., or "eer"
    resolved: bool = True


class Calibration:
    """A run's calibration.json: the operating point for K references, a forgery kind and a FAR target."""

    def __init__(self, content: dict, source: Path):
        self.content, self.source = content, source
        self.rule = content["rule"]

    @classmethod
    def read(cls, path: Path, run) -> Calibration:
        if not path.exists():
            raise ConfigError(f"--run {run.path}: not calibrated (no {path.name}); run `sigverify calibrate --run "
                              f"{run.path}` first")
        try:
            content = json.loads(path.read_text())
            content["reference_counts"], content["rule"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ConfigError(f"{path}: cannot be read as a calibration ({type(error).__name__}); expected the file "
                              "`sigverify calibrate` writes (run it again)") from None
        if content.get("model_sha256") != run.identity["model_sha256"]:
            raise ConfigError(f"{path}: made for another model.keras than {run.path}'s; run `sigverify calibrate` "
                              "again")
        return cls(content, path)

    def far_targets(self) -> list[str]:
        first = next(iter(self.content["reference_counts"].values()))
        return sorted(next(iter(first.values()))["far"], key=float, reverse=True)

    def operating_point(self, reference_count: int, far: str = "0.01", kind: str = "skilled") -> OperatingPoint:
        """The point calibrated at the largest K <= `reference_count` (the score's spread shrinks as K grows, so a
        smaller K's threshold errs on the side of its own rates); `far` is a calibrated target or "eer"."""
        calibrated = sorted(int(k) for k in self.content["reference_counts"])
        usable = [k for k in calibrated if k <= reference_count] or calibrated[:1]
        count = usable[-1]
        entry = self.content["reference_counts"][str(count)].get(kind)
        if entry is None:
            raise ConfigError(f"{self.source}: has no {kind}-forgery operating points at K = {count}; expected a "
                              f"calibration on writers with {kind} forgeries")
        if far == "eer":
            point = entry["eer"]
            return OperatingPoint(point["threshold"], point["far"], point["frr"], count, kind, "eer")
        try:
            key = next((target for target in entry["far"] if float(target) == float(far)), None)
        except ValueError:
            key = None
        if key is None:
            raise ConfigError(f"--far {far}: not calibrated; expected one of {', '.join(self.far_targets())} or eer")
        point = entry["far"][key]
        return OperatingPoint(point["threshold"], point["far"], point["frr"], count, kind, key, point["resolved"])
