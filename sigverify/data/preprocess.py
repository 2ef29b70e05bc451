"""Preprocessing: a decoded grey signature becomes a fixed-size binarized array (uint8 H×W, ink 0, paper 255), what every
model takes (each scales its input itself: `sigverify.models.backbones.InputScaling`).

The functions are pure; `load_preprocessed_images` adds a disk cache keyed by each file's identity and every setting,
so that a second run decodes no image.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from sigverify.data.images import read_grey
from sigverify.errors import ConfigError, DataError

log = logging.getLogger(__name__)

PAPER = 255
INK = 0


CACHE_FORMAT_VERSION = 1


@dataclass(frozen=True)
class PreprocessConfig:
    """How an image file becomes a model input (every field is part of the cache key)."""

    image_size_hw: tuple[int, int] = (224, 224)
    binarize: bool = True
    keep_aspect: bool = False  # False stretches to the size like the original; True pads with paper.

    def __post_init__(self):
        height, width = self.image_size_hw
        if height < 8 or width < 8:
            raise ConfigError(f"image size {height}x{width} is too small: expected at least 8x8 pixels")

    def cache_key(self) -> str:
        settings = dict(asdict(self), version=CACHE_FORMAT_VERSION)
        return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def binarize_otsu(grey: np.ndarray) -> np.ndarray:
    """Ink 0, paper 255. Removes the paper shade that alone tells CEDAR's genuine scans from forgeries."""
    _, binary = cv2.threshold(grey, 0, PAPER, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return binary


def resize_signature(grey: np.ndarray, image_size_hw: tuple[int, int], keep_aspect: bool = False) -> np.ndarray:
    height, width = image_size_hw
    if not keep_aspect:
        return cv2.resize(grey, (width, height), interpolation=cv2.INTER_AREA)
    scale = min(height / grey.shape[0], width / grey.shape[1])
    new_h = max(1, round(grey.shape[0] * scale))
    new_w = max(1, round(grey.shape[1] * scale))
    scaled = cv2.resize(grey, (new_w, new_h), interpolation=cv2.INTER_AREA)
    canvas = np.full((height, width), PAPER, dtype=np.uint8)
    top, left = (height - new_h) // 2, (width - new_w) // 2
    canvas[top : top + new_h, left : left + new_w] = scaled
    return canvas


def preprocess_grey(grey: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """Grey uint8 H×W of any size → uint8 array of the configured size (binarized first when configured)."""
    if config.binarize:
        grey = binarize_otsu(grey)
    return resize_signature(grey, config.image_size_hw, config.keep_aspect)


def preprocess_file(path: str | os.PathLike, config: PreprocessConfig) -> np.ndarray:
    return preprocess_grey(read_grey(path), config)


def _file_identity(path: str) -> str:
    stat = os.stat(path)
    return f"{os.path.abspath(path)}|{stat.st_size}|{stat.st_mtime_ns}"


def default_cache_dir() -> Path:
    return Path(os.environ.get("SIGVERIFY_CACHE", Path.home() / ".cache" / "sigverify"))


def _read_cache_entry(entry: Path, image_size_hw: tuple[int, int]) -> np.ndarray | None:
    """A cached image, or None (after saying so) when the entry is damaged: truncated, not an array, or of another
    shape or dtype. The caller then preprocesses the image again and the entry is rewritten."""
    try:
        array = np.load(entry, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        log.warning("cache entry %s is damaged (%s): rebuilding it", entry, str(error).splitlines()[0][:120])
        return None
    if array.dtype != np.uint8 or array.shape != tuple(image_size_hw):
        log.warning("cache entry %s holds a %s %s array, expected uint8 %s: rebuilding it", entry, array.dtype,
                    array.shape, tuple(image_size_hw))
        return None
    return array


CACHE_ENTRY_OVERHEAD_BYTES = 128  # the .npy header


def _check_cache_room(settings_dir: Path, n_images: int, image_size_hw: tuple[int, int]) -> None:
    """Refuse, before writing any of it, a cache that the disk cannot hold (with a margin of a tenth)."""
    needed = n_images * (image_size_hw[0] * image_size_hw[1] + CACHE_ENTRY_OVERHEAD_BYTES)
    free = shutil.disk_usage(settings_dir).free
    if needed * 1.1 > free:
        raise DataError(f"{settings_dir}: the preprocessed images need about {needed / 2**30:.2f} GiB and the disk has "
                        f"{free / 2**30:.2f} GiB free; expected a smaller --image-size or another SIGVERIFY_CACHE")


def load_preprocessed_images(
    paths: list[str],
    config: PreprocessConfig,
    cache_dir: str | os.PathLike | None = None,
    skip_bad_images: bool = False,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray, list[tuple[str, str]]]:
    """Preprocess every path, reading from and filling the disk cache.

    Returns the uint8 N×H×W images of the paths that could be read, a boolean mask over `paths` of those kept, and the
    (path, reason) of those skipped (only with `skip_bad_images`; otherwise a bad image raises DataError naming it).
    """
    from tqdm import tqdm

    cache_root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    settings_dir = cache_root / f"preprocessed-{config.cache_key()}"
    settings_dir.mkdir(parents=True, exist_ok=True)
    images, skipped = [], []
    kept = np.ones(len(paths), dtype=bool)
    pending = []
    for position, path in enumerate(paths):
        try:
            key = hashlib.sha1(_file_identity(path).encode()).hexdigest()
        except OSError as error:
            reason = f"cannot read file: {error.strerror}"
            if not skip_bad_images:
                raise DataError(f"{path}: {reason}; expected a readable image file") from None
            skipped.append((path, reason))
            kept[position] = False
            continue
        entry = settings_dir / f"{key}.npy"
        cached = _read_cache_entry(entry, config.image_size_hw) if entry.exists() else None
        images.append(cached)
        if cached is None:
            pending.append((len(images) - 1, position, path, entry))
    _check_cache_room(settings_dir, len(pending), config.image_size_hw)
    bar = tqdm(pending, desc="preprocessing images", unit="img", disable=not progress or not pending, leave=False)
    drop = []
    for slot, position, path, entry in bar:
        try:
            array = preprocess_file(path, config)
        except DataError as error:
            if not skip_bad_images:
                raise
            skipped.append((path, str(error)))
            kept[position] = False
            drop.append(slot)
            continue
        temporary = entry.with_name(entry.name + f".{os.getpid()}.tmp.npy")
        np.save(temporary, array)
        os.replace(temporary, entry)
        images[slot] = array
    for slot in sorted(drop, reverse=True):
        del images[slot]
    if pending:
        log.info("preprocessed %d images into %s", len(pending) - len(drop), settings_dir)
    height, width = config.image_size_hw
    stacked = np.stack(images) if images else np.zeros((0, height, width), np.uint8)
    return stacked, kept, skipped
