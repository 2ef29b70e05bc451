"""Synthetic writers at scale, for pretraining: thousands of writers generated straight into preprocessed arrays (no
image files), in blocks of writers cached on disk as .npy files and read back memory-mapped.

Writer w's images depend only on (seed, w) (`sigverify.data.synthetic`), so a pool of 5,000 writers reuses the blocks
of a pool of 2,000, and an interrupted generation resumes at its first missing block. The pool's seed is not the
embedded evaluation set's (seed 0), and CEDAR is scanned paper: disjoint from every evaluation set by construction.

Labels follow the post's classes: writer w's genuine signatures are class w, its skilled forgeries class w + n_writers
(writers counted from 0).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sigverify.data import synthetic
from sigverify.data.preprocess import PreprocessConfig, preprocess_grey
from sigverify.errors import ConfigError, DataError

log = logging.getLogger(__name__)

POOL_SEED = 1000  # the embedded evaluation set (data/synthetic) uses seed 0
WRITERS_PER_BLOCK = 50


@dataclass
class SyntheticPool:
    images: np.ndarray  # uint8 N×H×W, preprocessed
    labels: np.ndarray  # int32 N: genuine w, skilled forgeries w + n_writers
    writers: np.ndarray  # int32 N: the writer (0 .. n_writers - 1) each image belongs to
    n_writers: int
    n_samples: int
    seed: int
    folder: Path

    def describe(self) -> str:
        return (f"{len(self.images)} synthetic signatures of {self.n_writers} writers ({self.n_samples} genuine and "
                f"{self.n_samples} skilled forgeries each, generator {synthetic.GENERATOR_VERSION}, seed {self.seed})")


def pool_folder(cache_dir: str | os.PathLike, n_samples: int, preprocessing: PreprocessConfig,
                seed: int = POOL_SEED) -> Path:
    version = synthetic.GENERATOR_VERSION.replace("/", "-")
    return Path(cache_dir) / "synthetic-pool" / f"{version}-seed{seed}-{n_samples}s-{preprocessing.cache_key()}"


def synthetic_writer_pool(n_writers: int, n_samples: int, preprocessing: PreprocessConfig,
                          cache_dir: str | os.PathLike, seed: int = POOL_SEED, processes: int | None = None
                          ) -> SyntheticPool:
    """`n_writers` synthetic writers × (`n_samples` genuine + `n_samples` skilled forgeries), preprocessed; the missing
    blocks are generated first, on `processes` worker processes (default: one per CPU)."""
    if n_writers < 2 or n_samples < 1:
        raise ConfigError(f"synthetic pool: {n_writers} writers × {n_samples} samples; expected at least 2 writers and "
                          "1 sample each")
    folder = pool_folder(cache_dir, n_samples, preprocessing, seed)
    folder.mkdir(parents=True, exist_ok=True)
    n_blocks = -(-n_writers // WRITERS_PER_BLOCK)
    missing = [block for block in range(n_blocks) if not _block_file(folder, block).is_file()]
    if missing:
        _generate_blocks(folder, missing, n_samples, preprocessing, seed, processes or os.cpu_count() or 1)

    height, width = preprocessing.image_size_hw
    per_writer = 2 * n_samples
    images = np.empty((n_writers * per_writer, height, width), dtype=np.uint8)
    for block in range(n_blocks):
        stored = np.load(_block_file(folder, block), mmap_mode="r")
        first = block * WRITERS_PER_BLOCK * per_writer
        count = min(len(stored), len(images) - first)
        if stored.shape[1:] != (height, width) or len(stored) != WRITERS_PER_BLOCK * per_writer:
            raise ConfigError(f"{_block_file(folder, block)}: holds {stored.shape}, expected "
                              f"{(WRITERS_PER_BLOCK * per_writer, height, width)}; remove the file to regenerate it")
        images[first:first + count] = stored[:count]
    writers = np.repeat(np.arange(n_writers, dtype=np.int32), per_writer)
    forged = np.tile(np.repeat(np.array([0, 1], dtype=np.int32), n_samples), n_writers)
    return SyntheticPool(images, writers + forged * n_writers, writers, n_writers, n_samples, seed, folder)


def _block_file(folder: Path, block: int) -> Path:
    return folder / f"writers-{block * WRITERS_PER_BLOCK:06d}.npy"


def _generate_blocks(folder: Path, blocks: list[int], n_samples: int, preprocessing: PreprocessConfig, seed: int,
                     processes: int) -> None:
    """The blocks, shared round-robin among `processes` fresh interpreters (`python -m` this module): a child of a
    process that holds TensorFlow's threads is not forked, and no caller needs a `__main__` guard."""
    log.info("generating %d blocks of %d synthetic writers into %s on %d processes", len(blocks), WRITERS_PER_BLOCK,
             folder, processes)
    settings = json.dumps({"folder": str(folder), "n_samples": n_samples, "seed": seed,
                           "preprocessing": dataclasses.asdict(preprocessing)})
    workers = [subprocess.Popen([sys.executable, "-m", __name__, settings, *map(str, blocks[share::processes])])
               for share in range(min(processes, len(blocks)))]
    try:
        failed = [worker.args for worker in workers if worker.wait() != 0]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
    if failed:
        raise DataError(f"{folder}: {len(failed)} synthetic pool worker(s) failed (their error is printed above); the "
                        "blocks written are kept, and the next run generates the rest")


def _write_block(folder: Path, block: int, n_samples: int, preprocessing: PreprocessConfig, seed: int) -> Path:
    """One block's writers, genuine signatures then forgeries per writer, written atomically."""
    first_writer = block * WRITERS_PER_BLOCK + 1  # the generator counts writers from 1
    images = np.concatenate([writer_signatures(writer, n_samples, preprocessing, seed)
                             for writer in range(first_writer, first_writer + WRITERS_PER_BLOCK)])
    target = _block_file(folder, block)
    temporary = target.with_name(f".{target.stem}.{os.getpid()}.tmp.npy")
    np.save(temporary, images)
    os.replace(temporary, target)
    return target


def writer_signatures(writer: int, n_samples: int, preprocessing: PreprocessConfig, seed: int = POOL_SEED
                      ) -> np.ndarray:
    """Writer `writer`'s `n_samples` genuine signatures then as many skilled forgeries, preprocessed: the same images
    `sigverify.data.synthetic.generate_synthetic_dataset` writes for that (seed, writer), without the PNG files."""
    signatures = synthetic.writer_signature_pages(writer, n_samples, seed)
    return np.stack([preprocess_grey(page, preprocessing) for page in signatures])


if __name__ == "__main__":  # one worker of _generate_blocks: its settings (JSON), then the blocks it writes
    worker_settings = json.loads(sys.argv[1])
    worker_preprocessing = PreprocessConfig(**{**worker_settings["preprocessing"], "image_size_hw": tuple(
        worker_settings["preprocessing"]["image_size_hw"])})
    for worker_block in map(int, sys.argv[2:]):
        _write_block(Path(worker_settings["folder"]), worker_block, worker_settings["n_samples"], worker_preprocessing,
                     worker_settings["seed"])
