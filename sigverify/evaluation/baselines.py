"""How hard a signature set is before any learning: cosine distance on raw preprocessed pixels (ink as signal) over the
verification pairs, as max accuracy. On CEDAR's 6,072 test pairs at 128×128 this is about 0.60 after Otsu and 0.98
without it (the paper-shade leak); a learned model must beat it."""

from __future__ import annotations

import os

import numpy as np

from sigverify.data.index import read_index
from sigverify.data.pairs import verification_pairs
from sigverify.data.preprocess import PreprocessConfig, load_preprocessed_images
from sigverify.data.splits import rows_of_writers, split_writers
from sigverify.evaluation.metrics import evaluate_embeddings


def raw_pixel_baseline(data_dir: str | os.PathLike, image_size: int = 128, binarize: bool = True,
                       test_writers_only: bool = True, cache_dir: str | os.PathLike | None = None) -> dict:
    """Max accuracy (hard: genuine vs skilled forgeries, easy: genuine vs random) of raw-pixel cosine distance on the
    pairs of the test writers (the post's split on CEDAR ids), or of every writer."""
    index = read_index(data_dir)
    writers = index["writer"].unique()
    if test_writers_only:
        writers = split_writers(writers)[1]
    index = rows_of_writers(index, writers)
    config = PreprocessConfig((image_size, image_size), binarize=binarize)
    images, kept, _ = load_preprocessed_images(index["path"].tolist(), config, cache_dir, progress=False)
    metrics, _ = evaluate_embeddings(raw_pixel_embeddings(images), verification_pairs(index[kept].reset_index(drop=True)))
    return {"image_size": image_size, "binarize": binarize, "writers": sorted(int(w) for w in writers),
            "n_pairs": metrics["n_pairs"],
            **{f"{name}_max_accuracy": (metrics[name] or {}).get("max_accuracy") for name in ("hard", "easy")}}


def raw_pixel_embeddings(images: np.ndarray) -> np.ndarray:
    """Ink as signal, one flat vector per preprocessed uint8 image: the no-learning baseline (cosine on raw pixels)."""
    return (255.0 - images.reshape(len(images), -1).astype(np.float32)) / 255.0
