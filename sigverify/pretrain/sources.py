"""The images pretraining learns from, preprocessed like the evaluation data: the training writers' images of the
chosen dataset (never the test writers'), a set of synthetic writers cached in data/, or any folder of images.

The synthetic pretraining set is generated once per (writers, samples) with its own seed, so its writers are not the
embedded evaluation set's (seed 0): disjoint from the evaluation data by construction.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sigverify.data.images import has_image_extension
from sigverify.data.index import read_index
from sigverify.data.prepare import preprocessing_of
from sigverify.data.preprocess import load_preprocessed_images
from sigverify.data.synthetic import GENERATOR_VERSION, generate_synthetic_dataset
from sigverify.errors import ConfigError, DataError
from sigverify.settings import ExperimentConfig

log = logging.getLogger(__name__)

SYNTHETIC_PRETRAINING_ROOT = Path("data") / "synthetic-pretraining"
SYNTHETIC_PRETRAINING_SEED = 1000  # the embedded evaluation set (data/synthetic) uses seed 0


@dataclass
class PretrainingImages:
    images: np.ndarray  # uint8 N×H×W, preprocessed like the evaluation data
    labels: np.ndarray | None  # per image: synthetic writers' classes (genuine w, forgeries w + N); None: unlabelled
    description: str  # for reports: what the images are
    dataset_writers: list[int] = field(default_factory=list)  # writers of the experiment's dataset among the images


def synthetic_pretraining_dir(n_writers: int, n_samples: int) -> Path:
    return SYNTHETIC_PRETRAINING_ROOT / f"{n_writers}w-{n_samples}s-seed{SYNTHETIC_PRETRAINING_SEED}"


def synthetic_writer_images(config: ExperimentConfig, labelled: bool) -> PretrainingImages:
    """The synthetic pretraining set (`--synthetic-writers` × `--synthetic-samples` genuine and as many skilled
    forgeries each), generated on first use into data/synthetic-pretraining/ and preprocessed through the disk cache."""
    n_writers, n_samples = config.pretrain.synthetic_writers, config.pretrain.synthetic_samples
    folder = synthetic_pretraining_dir(n_writers, n_samples)
    expected = {"generator_version": GENERATOR_VERSION, "n_writers": n_writers, "n_samples": n_samples,
                "seed": SYNTHETIC_PRETRAINING_SEED}
    record = folder / "SYNTHETIC.json"
    if record.is_file():
        recorded = json.loads(record.read_text())
        if any(recorded.get(key) != value for key, value in expected.items()):
            raise DataError(f"{folder}: holds another synthetic set ({record}: {recorded}); expected {expected}. "
                            "Remove the folder to regenerate it")
    else:
        log.info("generating %d synthetic writers × %d samples for pretraining in %s (first use)", n_writers,
                 n_samples, folder)
        generate_synthetic_dataset(folder, n_writers=n_writers, n_samples=n_samples, seed=SYNTHETIC_PRETRAINING_SEED)
    index = read_index(folder, layout="cedar")
    images, kept, _ = load_preprocessed_images(index["path"].tolist(), preprocessing_of(config.image),
                                               config.data.cache_dir)
    description = (f"{len(images)} synthetic signatures of {n_writers} writers ({n_samples} genuine and {n_samples} "
                   f"skilled forgeries each, seed {SYNTHETIC_PRETRAINING_SEED}, {folder})")
    return PretrainingImages(images, index["label"].to_numpy()[kept] if labelled else None, description)


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
