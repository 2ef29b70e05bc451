"""Batch scoring: a CSV of (reference, questioned[, label]) image pairs scored with a trained run, streamed in chunks
(each image embedded once), an unreadable image marking its rows with an error while the rest go on. The output CSV is
written under a temporary name and renamed into place when every row is done."""

from __future__ import annotations

import csv
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sigverify.distances import paired_distances_numpy
from sigverify.errors import ConfigError, SigverifyError
from sigverify.evaluation.metrics import accuracy_at_threshold, verification_metrics
from sigverify.runs import writing
from sigverify.verification.trained_run import TrainedRun

REQUIRED_COLUMNS = ("reference", "questioned")
LABEL_WORDS = {"1": 1, "genuine": 1, "same": 1, "0": 0, "forgery": 0, "skilled": 0, "random": 0, "different": 0}
CHUNK_ROWS = 256
CACHED_EMBEDDINGS = 4096


@dataclass
class ScoringSummary:
    rows: int = 0
    scored: int = 0
    errors: list[tuple[int, str]] = field(default_factory=list)  # (CSV line, message)
    metrics: dict | None = None  # with labels: verification metrics, and accuracy at the threshold used


def _label_of(value: str, line: int, pairs_csv: Path) -> int:
    label = LABEL_WORDS.get(value.strip().lower())
    if label is None:
        raise ConfigError(f"{pairs_csv}, line {line}: label {value!r}; expected 1/genuine/same or 0/forgery/skilled/"
                          "random/different")
    return label


class EmbeddingCache:
    """Embeddings of recently seen image paths (least recently used dropped), and the error of unreadable ones."""

    def __init__(self, run: TrainedRun, capacity: int = CACHED_EMBEDDINGS):
        self.run, self.capacity = run, capacity
        self.entries: OrderedDict[str, np.ndarray | str] = OrderedDict()

    def fill(self, paths: list[str]) -> None:
        missing = list(dict.fromkeys(path for path in paths if path not in self.entries))
        readable, images = [], []
        for path in missing:
            try:
                images.append(self.run.read_images([path])[0])
                readable.append(path)
            except SigverifyError as error:
                self.entries[path] = str(error)
        if readable:
            for path, embedding in zip(readable, self.run.embed_images(np.stack(images))):
                self.entries[path] = embedding
        for path in paths:
            self.entries.move_to_end(path)
        while len(self.entries) > self.capacity:
            self.entries.popitem(last=False)

    def __getitem__(self, path: str):
        return self.entries[path]


def _resolved(path_text: str, base: Path) -> str:
    path = Path(path_text.strip())
    return str(path if path.is_absolute() else base / path)


def score_pairs(run: TrainedRun, pairs_csv: str | Path, out_csv: str | Path, threshold: float,
                progress: bool = True) -> ScoringSummary:
    """Score every row of `pairs_csv` (paths relative to its folder) into `out_csv`: the input columns, then distance,
    decision (accepted when distance <= `threshold`) and error (empty when scored)."""
    from tqdm import tqdm

    pairs_csv, out_csv = Path(pairs_csv), Path(out_csv)
    if not pairs_csv.is_file():
        raise ConfigError(f"--pairs {pairs_csv}: no such file; expected a CSV with columns reference, questioned[, label]")
    if not out_csv.parent.is_dir():
        raise ConfigError(f"--out {out_csv}: the folder {out_csv.parent} does not exist")
    with open(pairs_csv, newline="") as stream:
        header = next(csv.reader(stream), None)
        total_rows = sum(1 for _ in stream)
    missing = [column for column in REQUIRED_COLUMNS if column not in (header or [])]
    if missing:
        raise ConfigError(f"--pairs {pairs_csv}: no column {', '.join(missing)} in its header {header}; expected "
                          "reference, questioned[, label]")
    has_labels = "label" in header
    cache, summary, base = EmbeddingCache(run), ScoringSummary(), pairs_csv.parent
    distances, labels = [], []
    with open(pairs_csv, newline="") as source, writing(out_csv) as temporary, open(temporary, "w", newline="") as sink:
        reader = csv.DictReader(source)
        writer = csv.DictWriter(sink, fieldnames=[*header, "distance", "decision", "error"])
        writer.writeheader()
        bar = tqdm(total=total_rows, desc="scoring pairs", unit="pair", disable=not progress)
        chunk: list[tuple[int, dict]] = []

        def flush():
            cache.fill([_resolved(row[column], base) for _, row in chunk for column in REQUIRED_COLUMNS])
            for line, row in chunk:
                label = _label_of(row["label"], line, pairs_csv) if has_labels else None
                reference, questioned = (cache[_resolved(row[column], base)] for column in REQUIRED_COLUMNS)
                failed = next((entry for entry in (reference, questioned) if isinstance(entry, str)), None)
                if failed is not None:
                    summary.errors.append((line, failed))
                    writer.writerow({**row, "distance": "", "decision": "", "error": failed})
                    continue
                distance = float(paired_distances_numpy(reference[None], questioned[None], run.scoring)[0])
                summary.scored += 1
                distances.append(distance)
                labels.append(label)
                writer.writerow({**row, "distance": f"{distance:.6f}", "error": "",
                                 "decision": "genuine" if distance <= threshold else "rejected"})
            bar.update(len(chunk))
            chunk.clear()

        for line, row in enumerate(reader, start=2):
            summary.rows += 1
            if any(not (row.get(column) or "").strip() for column in REQUIRED_COLUMNS):
                raise ConfigError(f"{pairs_csv}, line {line}: an empty reference or questioned cell; expected two "
                                  "image paths")
            chunk.append((line, row))
            if len(chunk) == CHUNK_ROWS:
                flush()
        if chunk:
            flush()
        bar.close()
    if has_labels and summary.scored and len(set(labels)) == 2:
        metrics = verification_metrics(distances, labels)
        metrics.pop("roc")
        metrics["accuracy_at_threshold"] = accuracy_at_threshold(distances, labels, threshold)
        metrics["threshold_used"] = threshold
        summary.metrics = metrics
    return summary
