"""A dataset folder as an experiment uses it: read into an index, split into training and test writers, preprocessed
(uint8 images, through the disk cache) and paired, checked for enough data before any training."""

from __future__ import annotations

import copy
import itertools
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from sigverify.data.index import read_index
from sigverify.data.pairs import verification_pairs
from sigverify.data.preprocess import PreprocessConfig, load_preprocessed_images
from sigverify.data.splits import rows_of_writers, split_writers, writer_folds
from sigverify.data.synthetic import generate_synthetic_dataset
from sigverify.errors import ConfigError
from sigverify.settings import ExperimentConfig, ImageSettings

log = logging.getLogger(__name__)

DEFAULT_SYNTHETIC_DIR = Path("data") / "synthetic"


@dataclass
class SplitData:
    index: pd.DataFrame  # rows of this split's writers, positions 0..n-1
    images: np.ndarray  # uint8 n×H×W, preprocessed
    pairs: pd.DataFrame  # verification pairs, positions into `index`

    @property
    def labels(self) -> np.ndarray:
        return self.index["label"].to_numpy()


@dataclass
class ExperimentData:
    dataset: str
    layout: str
    train: SplitData
    test: SplitData
    train_writers: list[int]
    test_writers: list[int]
    skipped: list = field(default_factory=list)
    dataset_writers: list[int] = field(default_factory=list)  # every writer of the dataset folder
    validation_fold: str | None = None  # with --validation-folds: what the test side is instead of the test writers


def resolve_data_dir(data: str | None) -> Path:
    """The user's folder, or the embedded synthetic set (generated on first use)."""
    if data:
        path = Path(data)
        if not path.is_dir():
            raise ConfigError(f"--data {data}: no such folder; expected a dataset folder (CEDAR layout or one folder per writer)")
        return path
    if not (DEFAULT_SYNTHETIC_DIR / "full_org").is_dir():
        log.info("generating the embedded synthetic signature set in %s (first use)", DEFAULT_SYNTHETIC_DIR)
        generate_synthetic_dataset(DEFAULT_SYNTHETIC_DIR)
    return DEFAULT_SYNTHETIC_DIR


def check_enough_data(index: pd.DataFrame, data_dir: Path) -> None:
    writers = index["writer"].unique()
    if len(writers) < 2:
        raise ConfigError(f"{data_dir}: {len(writers)} writer(s) found; expected at least two writers")
    genuine_counts = index[index["genuine"]].groupby("writer").size().reindex(writers, fill_value=0)
    too_few = genuine_counts[genuine_counts < 2]
    if len(too_few):
        raise ConfigError(f"{data_dir}: writer(s) {too_few.index.tolist()[:10]} have fewer than two genuine images; "
                          "expected at least two per writer (a genuine pair)")


def _first_samples(index: pd.DataFrame, max_samples: int | None) -> pd.DataFrame:
    if not max_samples:
        return index
    rank = index.groupby(["writer", "genuine"])["sample"].rank(method="first")
    return index[rank <= max_samples]


def held_out_writers(writers, config: ExperimentConfig) -> tuple[list[int], list[int]]:
    """(train writers, test writers): the default split, or with `--folds k` the fold `--fold` (0 if unset) of k
    writer-disjoint folds (on CEDAR with k = 5, fold 0 is the post's split). With `--validation-folds k` the training
    writers of that split are cut into k writer-disjoint folds and the pair is (the other folds, validation fold
    `--validation-fold`, 0 if unset): the split's own test writers are in neither, so tuning never sees them."""
    if config.data.folds > 1:
        test_writers = writer_folds(writers, config.data.folds)[config.data.fold or 0]
        train_writers = [int(w) for w in sorted(set(writers)) if w not in test_writers]
    else:
        train_writers, test_writers = split_writers(writers, seed=config.train.seed)
    folds = config.data.validation_folds
    if folds < 2:
        return train_writers, test_writers
    if folds > len(train_writers):
        raise ConfigError(f"--validation-folds {folds}: the split has {len(train_writers)} training writers; expected "
                          "at most that many validation folds")
    validation_writers = writer_folds(train_writers, folds)[config.data.validation_fold or 0]
    return [w for w in train_writers if w not in validation_writers], validation_writers


def describe_validation_fold(config: ExperimentConfig) -> str | None:
    """What the test side of `--validation-folds` settings is (None without them), as metrics.json and the report say."""
    data = config.data
    if data.validation_folds < 2:
        return None
    split = f"fold {data.fold or 0} of --folds {data.folds}" if data.folds > 1 else "the default split"
    return (f"validation fold {data.validation_fold or 0} of {data.validation_folds} of the training writers of "
            f"{split}; its test writers are not loaded")


MIN_WRITERS_PER_SPLIT = 2  # a genuine–random pair takes another writer's signature


def check_split_sizes(writers, config: ExperimentConfig) -> None:
    """Refuse, before any training, a split that leaves fewer than two writers on a side (every fold's, with
    `--folds`, and every validation fold's, with `--validation-folds`): its random-forgery pairs, and so half the
    report, could not exist."""
    data = config.data
    folds = range(data.folds) if data.folds > 1 else [None]
    validation_folds = range(data.validation_folds) if data.validation_folds > 1 else [None]
    for fold, validation_fold in itertools.product(folds, validation_folds):
        trial = copy.deepcopy(config)
        trial.data.fold, trial.data.validation_fold = fold, validation_fold
        train_writers, test_writers = held_out_writers(writers, trial)
        if data.max_writers:
            train_writers, test_writers = train_writers[: data.max_writers], test_writers[: data.max_writers]
        held_out = "test" if validation_fold is None else "validation"
        for side, chosen in (("training", train_writers), (held_out, test_writers)):
            if len(chosen) < MIN_WRITERS_PER_SPLIT:
                where = " and ".join(part for part in (
                    f"fold {fold} of --folds {data.folds}" if fold is not None else "",
                    f"validation fold {validation_fold} of --validation-folds {data.validation_folds}"
                    if validation_fold is not None else "")
                    if part) or "the split"
                fewer = "fewer --folds" + (" or --validation-folds" if validation_fold is not None else "")
                raise ConfigError(f"--data {data.data or 'synthetic'}: {where} has {len(chosen)} {side} "
                                  f"writer(s) of {len(set(writers))}; expected at least {MIN_WRITERS_PER_SPLIT} (random-"
                                  f"forgery pairs take another writer's signature): use more writers, {fewer}, or "
                                  "a larger --max-writers")


def test_writers_of_every_run(data: ExperimentData, config: ExperimentConfig) -> set[int]:
    """The writers that any run of these settings tests on: every fold's (`--folds`), every validation fold's
    (`--validation-folds`: training writers of the split), under every seed (`--seeds`; the seed moves a non-CEDAR
    default split)."""
    tested = set()
    split = config.data
    folds = [split.fold] if split.fold is not None else (range(split.folds) if split.folds > 1 else [None])
    validation_folds = [split.validation_fold] if split.validation_fold is not None else (
        range(split.validation_folds) if split.validation_folds > 1 else [None])
    for fold, validation_fold in itertools.product(folds, validation_folds):
        for seed in range(config.train.seed, config.train.seed + config.train.seeds):
            trial = copy.deepcopy(config)
            trial.data.fold, trial.data.validation_fold, trial.train.seed = fold, validation_fold, seed
            test_writers = held_out_writers(data.dataset_writers, trial)[1]
            tested.update(test_writers[: config.data.max_writers] if config.data.max_writers else test_writers)
    return tested


def preprocessing_of(image: ImageSettings) -> PreprocessConfig:
    """How the image settings turn a file into a model input."""
    return PreprocessConfig((image.image_size, image.image_size), image.binarize, image.keep_aspect)


def prepare_data(config: ExperimentConfig) -> ExperimentData:
    """The dataset of `--data` (or the embedded synthetic set) read, split into training and test writers (`--folds`,
    `--fold`; or training and validation writers, `--validation-folds`), trimmed (`--max-writers`, `--max-samples`),
    preprocessed (through the disk cache) and paired."""
    preprocess = preprocessing_of(config.image)
    data_dir = resolve_data_dir(config.data.data)
    index = read_index(data_dir, layout=config.data.layout, skip_bad=config.data.skip_bad_images)
    check_enough_data(index, data_dir)
    all_writers = index["writer"].unique()
    check_split_sizes(all_writers, config)
    train_writers, test_writers = held_out_writers(all_writers, config)
    if config.data.max_writers:
        train_writers = train_writers[: config.data.max_writers]
        test_writers = test_writers[: config.data.max_writers]
    index = _first_samples(index[index["writer"].isin(train_writers + test_writers)], config.data.max_samples)
    images, kept, skipped = load_preprocessed_images(index["path"].tolist(), preprocess, config.data.cache_dir,
                                                     skip_bad_images=config.data.skip_bad_images)
    index = index[kept].reset_index(drop=True)
    splits = {}
    for name, writers in (("train", train_writers), ("test", test_writers)):
        positions = np.flatnonzero(index["writer"].isin(writers).to_numpy())
        split_index = rows_of_writers(index, writers)
        splits[name] = SplitData(split_index, images[positions], verification_pairs(split_index))
    dataset = "synthetic (embedded default)" if config.data.data is None else str(Path(config.data.data).resolve())
    return ExperimentData(dataset=dataset, layout=index.attrs.get("layout", "unknown"), train=splits["train"],
                          test=splits["test"], train_writers=train_writers, test_writers=test_writers, skipped=skipped,
                          dataset_writers=sorted(int(w) for w in all_writers),
                          validation_fold=describe_validation_fold(config))
