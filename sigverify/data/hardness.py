"""How hard a CEDAR-layout dataset is before any learning: max accuracy of cosine distance on raw pixels.

The verification pairs follow the post's protocol (genuine-genuine vs genuine-skilled forgery per writer,
NumPy seed 42 set once); a figure far from CEDAR's after Otsu (about 0.60) flags a dataset that is too easy or too hard.
"""

import itertools
import pathlib
import re

import cv2
import numpy as np
from sklearn.metrics import roc_curve

from sigverify.errors import DataError

_GENUINE_NAME = re.compile(r"original_(\d+)_(\d+)\.png$")
_FORGERY_NAME = re.compile(r"forgeries_(\d+)_(\d+)\.png$")


def _index_images(folder: pathlib.Path, name_pattern: re.Pattern) -> dict[int, list[pathlib.Path]]:
    """Writer -> image paths ordered by sample number, for files in folder whose name matches the pattern."""
    if not folder.is_dir():
        raise DataError(f"{folder}: folder not found; expected a CEDAR layout with full_org/ and full_forg/")
    samples_by_writer: dict[int, list[tuple[int, pathlib.Path]]] = {}
    for path in folder.iterdir():
        match = name_pattern.fullmatch(path.name)
        if match:
            writer, sample = int(match.group(1)), int(match.group(2))
            samples_by_writer.setdefault(writer, []).append((sample, path))
    return {writer: [path for _, path in sorted(samples)] for writer, samples in sorted(samples_by_writer.items())}


def raw_pixel_features(path: pathlib.Path, image_size: int = 128, binarize: bool = True) -> np.ndarray:
    """Ink intensity of one image as a flat float vector: grey, optional Otsu, stretched to image_size squared."""
    grey = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if grey is None:
        raise DataError(f"{path}: not a readable image")
    if binarize:
        _, grey = cv2.threshold(grey, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    resized = cv2.resize(grey, (image_size, image_size), interpolation=cv2.INTER_AREA)
    return (255.0 - resized.astype(np.float64)).ravel()


def _cosine_distance(first: np.ndarray, second: np.ndarray) -> float:
    norms = np.linalg.norm(first) * np.linalg.norm(second)
    return 1.0 - float(first @ second) / max(norms, 1e-12)


def raw_pixel_baseline(data_dir, image_size: int = 128, binarize: bool = True) -> float:
    """Max accuracy, over all ROC thresholds, of raw-pixel cosine distance on genuine vs skilled-forgery pairs.

    Per writer: every genuine-genuine pair (label 1) and as many genuine-forgery pairs (label 0), drawn
    without replacement from the genuine x forgery product after one `np.random.seed(42)`.
    """
    data_dir = pathlib.Path(data_dir)
    genuine_paths = _index_images(data_dir / "full_org", _GENUINE_NAME)
    forgery_paths = _index_images(data_dir / "full_forg", _FORGERY_NAME)
    writers = [writer for writer in genuine_paths if writer in forgery_paths]
    if not writers:
        raise DataError(f"{data_dir}: no writer has both original_*.png and forgeries_*.png images")

    np.random.seed(42)
    distances, same_writer_labels = [], []
    for writer in writers:
        genuine = [raw_pixel_features(path, image_size, binarize) for path in genuine_paths[writer]]
        forgeries = [raw_pixel_features(path, image_size, binarize) for path in forgery_paths[writer]]
        genuine_pairs = list(itertools.combinations(range(len(genuine)), 2))
        product = list(itertools.product(range(len(genuine)), range(len(forgeries))))
        n_forgery_pairs = min(len(genuine_pairs), len(product))
        chosen = np.random.choice(len(product), n_forgery_pairs, replace=False)
        for i, j in genuine_pairs:
            distances.append(_cosine_distance(genuine[i], genuine[j]))
            same_writer_labels.append(1)
        for index in chosen:
            i, j = product[index]
            distances.append(_cosine_distance(genuine[i], forgeries[j]))
            same_writer_labels.append(0)

    # A smaller distance means "same writer", so the score for label 1 is the negated distance.
    false_positive_rate, true_positive_rate, _ = roc_curve(same_writer_labels, -np.asarray(distances))
    return float(np.max(0.5 * (true_positive_rate + 1.0 - false_positive_rate)))
