"""The images pretraining learns from, preprocessed like the evaluation data: the training writers' images of the
chosen dataset (never the test writers'), synthetic writers (`sigverify.data.synthetic_pool`: their own seed, so
disjoint from the evaluation data by construction), or any folder of images.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sigverify.data.images import has_image_extension
from sigverify.data.prepare import preprocessing_of
from sigverify.data.preprocess import default_cache_dir, load_preprocessed_images
from sigverify.data.synthetic_pool import synthetic_writer_pool
from sigverify.errors import ConfigError, DataError
from sigverify.settings import ExperimentConfig

log = logging.getLogger(__name__)

@dataclass
class PretrainingImages:
    images: np.ndarray  # uint8 N×H×W, preprocessed like the evaluation data
    labels: np.ndarray | None  # per image: synthetic writers' classes (genuine w, forgeries w + N); None: unlabelled
    description: str  # for reports: what the images are
    dataset_writers: list[int] = field(default_factory=list)  # writers of the experiment's dataset among the images
    n_writers: int = 0  # synthetic writers (labelled images): class w's forgeries are class w + n_writers


def synthetic_writer_images(config: ExperimentConfig, labelled: bool) -> PretrainingImages:
    """The synthetic pretraining writers (`--synthetic-writers` × `--synthetic-samples` genuine and as many skilled
    forgeries each), generated on first use into the pool cache under the data cache folder."""
    pretrain = config.pretrain
    pool = synthetic_writer_pool(pretrain.synthetic_writers, pretrain.synthetic_samples, preprocessing_of(config.image),
                                 config.data.cache_dir or default_cache_dir())
    return PretrainingImages(pool.images, pool.labels if labelled else None, pool.describe(),
                             n_writers=pool.n_writers)


def folder_images(config: ExperimentConfig, folder: Path) -> PretrainingImages:
    """Every image file under `folder` (any depth), unlabelled."""
    if not folder.is_dir():
        raise ConfigError(f"--unlabelled {folder}: no such folder; expected train, synthetic, or a folder of images")
    paths = sorted(str(path) for path in folder.rglob("*") if path.is_file() and has_image_extension(path))
    if not paths:
        raise DataError(f"--unlabelled {folder}: no image files found (PNG, JPEG, TIFF, BMP, ...)")
    images, _, skipped = load_preprocessed_images(paths, preprocessing_of(config.image), config.data.cache_dir,
                                                  skip_bad_images=config.data.skip_bad_images)
    skipped_note = f", {len(skipped)} unreadable skipped" if skipped else ""
    return PretrainingImages(images, None, f"{len(images)} unlabelled images from {folder}{skipped_note}")


def pretraining_images(config: ExperimentConfig, train_images: np.ndarray, dataset: str,
                       train_writers: list[int]) -> PretrainingImages:
    """The method's images: labelled synthetic writers for `synthetic`; for SimCLR and MoCo the source `--unlabelled`
    names (`train`: `train_images`, the chosen dataset's training writers)."""
    pretrain = config.pretrain
    if pretrain.method == "synthetic":
        return synthetic_writer_images(config, labelled=True)
    if pretrain.unlabelled == "train":
        return PretrainingImages(train_images, None, f"the {len(train_images)} images of the {len(train_writers)} "
                                                     f"training writers of {dataset} (labels unused)",
                                 [int(writer) for writer in train_writers])
    if pretrain.unlabelled == "synthetic":
        return synthetic_writer_images(config, labelled=False)
    return folder_images(config, Path(pretrain.unlabelled))
