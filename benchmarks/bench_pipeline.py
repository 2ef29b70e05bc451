"""bench-pipeline: images per second that the tf.data feed alone delivers from the preprocessed cache (gather the uint8
signatures, prefetch: `sigverify.training.tf_data.labelled_dataset` over an epoch's sampler batches; the models scale
their input themselves) against the images per second that a training step consumes, for the quick (96×96, Smaller
ResNet50, P×K 16×4) and blog (224×224, Small ResNet50, batch 64) profiles of experiments/triplet.py on the embedded
synthetic signatures. Target: the feed at least 5× faster.

Also the end-of-epoch stall: the time from the last training step of an epoch to the loop's exit (the end-of-sequence
`next` and the iterator's tear-down) through `strategy.experimental_distribute_dataset`, as the trainer iterates, with
tf.data autotuning on and off (the feed turns it off). Epochs are cut to a few batches, settings alternate.

    python benchmarks/bench_pipeline.py [--full]   (or: make bench-pipeline)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import tensorflow as tf
from common import BENCHMARKS_DIR, recipe, write_results
from training import make_train_step, train_step_images_per_second, triplet_model

from sigverify.data.prepare import prepare_data
from sigverify.data.samplers import training_batches
from sigverify.settings import build_config
from sigverify.training.engine import LabelledBatches
from sigverify.training.tf_data import labelled_dataset

PROFILES = ("quick", "blog")
STALL_BATCHES = 4


def load(profile: str):
    config = build_config("triplet", profile, recipe("triplet").PROFILES)
    data = prepare_data(config)
    return config, data.train.images, data.train.labels


def feed(config, images, labels, epoch: int, max_batches: int | None = None) -> tf.data.Dataset:
    batches = training_batches(labels, config.batches, config.train.seed)(epoch)[:max_batches]
    return labelled_dataset(LabelledBatches(images, labels, lambda _: batches), epoch)


def feed_images_per_second(config, images, labels, epochs: int) -> float:
    delivered, started = 0, time.perf_counter()
    for epoch in range(epochs):
        for batch_images, _ in feed(config, images, labels, epoch):
            delivered += int(batch_images.shape[0])
    return delivered / (time.perf_counter() - started)


def end_of_epoch_stalls(config, images, labels, rounds: int, batches_per_epoch: int) -> dict[str, dict[str, list]]:
    """Per setting of tf.data autotuning and per epoch: seconds from the last training step to the end of the sequence
    (the final `next`), and the iterator's tear-down after it."""
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    train_step = make_train_step(triplet_model(config.model.cut_layer, config.image.image_size))
    stalls = {setting: {"end_of_sequence": [], "tear_down": []} for setting in ("autotune on", "autotune off")}
    epoch = 0
    for _ in range(rounds):
        for setting, enabled in (("autotune on", True), ("autotune off", False)):
            options = tf.data.Options()
            options.autotune.enabled = enabled
            dataset = feed(config, images, labels, epoch, batches_per_epoch).with_options(options)
            iterator = iter(strategy.experimental_distribute_dataset(dataset))
            last_step_done = time.perf_counter()
            for batch_images, batch_labels in iterator:
                float(train_step(batch_images, batch_labels))
                last_step_done = time.perf_counter()
            ended = time.perf_counter()
            del iterator
            stalls[setting]["end_of_sequence"].append(ended - last_step_done)
            stalls[setting]["tear_down"].append(time.perf_counter() - ended)
            epoch += 1
    return stalls


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="more epochs of feed, steps and stall rounds")
    args = parser.parse_args()
    os.chdir(BENCHMARKS_DIR.parent)  # the embedded synthetic set lives in data/synthetic of the repository
    feed_epochs, steps, rounds = (5, 5, 10) if args.full else (2, 3, 5)

    rows = []
    for profile in PROFILES:
        config, images, labels = load(profile)
        delivered = feed_images_per_second(config, images, labels, feed_epochs)
        model = triplet_model(config.model.cut_layer, config.image.image_size)
        consumed, _ = train_step_images_per_second(model, config.batches.batch_size, steps,
                                                   images_per_class=config.batches.images_per_class)
        row = {"profile": profile, "image_size": config.image.image_size, "cut_layer": config.model.cut_layer,
               "batch_size": config.batches.batch_size, "sampler": config.batches.sampler, "train_images": len(labels),
               "feed_images_per_second": delivered, "training_images_per_second": consumed,
               "feed_over_training": delivered / consumed}
        rows.append(row)
        print(f"{profile:5s} {config.image.image_size}²: feed {delivered:8.0f} img/s, training {consumed:6.1f} img/s, "
              f"{row['feed_over_training']:.0f}x", flush=True)

    config, images, labels = load("quick")
    stalls = end_of_epoch_stalls(config, images, labels, rounds, STALL_BATCHES)
    totals = {setting: [a + b for a, b in zip(parts["end_of_sequence"], parts["tear_down"])]
              for setting, parts in stalls.items()}
    for setting, values in totals.items():
        print(f"end-of-epoch stall, {setting}: median {statistics.median(values):.3f} s, max {max(values):.3f} s "
              f"(tear-down alone at most {max(stalls[setting]['tear_down']):.3f} s)", flush=True)

    summary = {"feed_over_training": {f"{r['profile']} {r['image_size']}": r["feed_over_training"] for r in rows},
               "end_of_epoch_stall_seconds": stalls,
               "end_of_epoch_stall_median_seconds": {k: statistics.median(v) for k, v in totals.items()},
               "end_of_epoch_stall_max_seconds": {k: max(v) for k, v in totals.items()}}
    ratios = ", ".join(f"{r['profile']} {r['image_size']}² {r['feed_over_training']:.0f}x" for r in rows)
    medians, maxima = summary["end_of_epoch_stall_median_seconds"], summary["end_of_epoch_stall_max_seconds"]
    ratio_line = (f"ratio: feed / training images/s: {ratios}; end-of-epoch stall (median / max of {rounds} epochs) "
                  f"autotune on {medians['autotune on']:.3f} / {maxima['autotune on']:.3f} s, off "
                  f"{medians['autotune off']:.3f} / {maxima['autotune off']:.3f} s")
    write_results("pipeline", {"profiles": PROFILES, "feed_epochs": feed_epochs, "timed_steps": steps,
                               "stall_rounds": rounds, "stall_batches_per_epoch": STALL_BATCHES, "data": "embedded synthetic set"},
                  rows, summary, ratio_line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
