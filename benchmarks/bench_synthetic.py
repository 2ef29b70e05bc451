"""bench-synthetic: does synthetic-writer pretraining wait for its data? Images per second of the synthetic pool's
generator (one writer's 12 genuine signatures and 12 forgeries rendered and preprocessed, in one process, times the
processes a pool uses: one per core) against the images per second the pretraining step consumes (the shipped
backbone's model, ResNet50 cut at conv4_block6_add + head, batch 64, float32) at the pretraining image size, measured
side by side in one run. The pool is generated once and cached, so a ratio below 1 costs only its first run; above 1,
generating on the fly would keep up too.

    python benchmarks/bench_synthetic.py [--image-size 64] [--writers 6]   (or: make bench-synthetic)
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from common import write_results
from training import train_step_images_per_second, triplet_model

BATCH_SIZE = 64
SAMPLES = 12


def generator_images_per_second(image_size: int, writers: int) -> float:
    from sigverify.data.preprocess import PreprocessConfig
    from sigverify.data.synthetic_pool import writer_signatures

    preprocessing = PreprocessConfig((image_size, image_size))
    writer_signatures(10_000, 1, preprocessing)  # the first call builds the cached paper-noise tile
    started = time.perf_counter()
    for writer in range(1, writers + 1):
        writer_signatures(writer, SAMPLES, preprocessing)
    return writers * 2 * SAMPLES / (time.perf_counter() - started)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-size", type=int, default=64, help="the pretraining image size (pretrain-backbone: 64)")
    parser.add_argument("--writers", type=int, default=6, help="writers generated for the generator's rate")
    parser.add_argument("--steps", type=int, default=3, help="timed training steps")
    args = parser.parse_args(argv)

    one_process = generator_images_per_second(args.image_size, args.writers)
    processes = os.cpu_count() or 1
    training, training_per_cpu_second = train_step_images_per_second(
        triplet_model("conv4_block6_add", args.image_size), BATCH_SIZE, args.steps)
    summary = {"generator_images_per_second_one_process": one_process, "processes": processes,
               "generator_images_per_second_all_processes": one_process * processes,
               "training_images_per_second": training, "training_images_per_cpu_second": training_per_cpu_second,
               "generator_over_training": one_process * processes / training,
               "pool_5000_writers_minutes": 5000 * 2 * SAMPLES / (one_process * processes) / 60}
    settings = {"image_size": args.image_size, "writers": args.writers, "samples": SAMPLES, "batch_size": BATCH_SIZE,
                "model": "ResNet50 cut at conv4_block6_add + head, float32"}
    write_results("synthetic", settings, [], summary,
                  (f"generator {one_process:.0f} images/s a process × {processes} = {one_process * processes:.0f}; "
                   f"training {training:.1f} images/s: generator / training "
                   f"{summary['generator_over_training']:.1f}x; a pool of 5,000 writers takes "
                   f"{summary['pool_5000_writers_minutes']:.1f} min"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
