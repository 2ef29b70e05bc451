"""bench-contrastive: epoch time of the contrastive baseline's two training paths on the same pairs, with the
experiment's own building blocks (the quick profile of experiments/contrastive.py: 96×96, ResNet50 + global average
pooling, frozen, batch 64):

- cached features: the frozen backbone's features of each image computed once (`models.inference.cached_features`),
  then the dense head trained as a Siamese pair model on pairs of features;
- naive Siamese: both uint8 images of every pair through the frozen backbone at every step (`models.siamese.
  build_siamese` over the whole embedding model), as the original notebook trained it.

Both train through `training.tf_engine.Trainer` on `training.tf_data.pair_dataset` of the same pairs
(`training.engine.pair_steps`) (a shuffled sample of the
profile's training pairs; `--full` all of them); an epoch is timed after a short warm-up epoch that traces the step.
The one-time feature extraction covers every training image, as the experiment does; an epoch over all pairs is
estimated from the sample. Target: cached epochs at least 10× faster.

    python benchmarks/bench_contrastive.py [--full]   (or: make bench-contrastive; --full: all training pairs)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from common import BENCHMARKS_DIR, recipe, write_results

from sigverify.data.prepare import prepare_data
from sigverify.losses import ContrastiveLoss
from sigverify.models.embedding import build_contrastive_embedding_model
from sigverify.models.inference import cached_features
from sigverify.models.siamese import build_siamese
from sigverify.settings import build_config
from sigverify.training.engine import PairBatches, make_optimizer, pair_steps
from sigverify.training.tf_data import pair_dataset
from sigverify.training.tf_engine import Trainer, make_strategy

DEFAULT_PAIRS = 512


def timed_epoch(tower, inputs, pairs, config, run_dir: Path, strategy) -> float:
    """Seconds of one training epoch of build_siamese(tower) over `pairs` of `inputs` (uint8 images or features),
    after a warm-up epoch of two batches."""
    batch_size, seed = config.batches.batch_size, config.train.seed
    steps = -(-len(pairs) // batch_size)
    with strategy.scope():
        siamese = build_siamese(tower)
        optimizer = make_optimizer(config.optimizer, config.train.epochs, steps)
    trainer = Trainer(siamese, ContrastiveLoss(margin=config.loss.margin), optimizer, strategy, run_dir)

    def batches(epoch):
        chosen = pairs if epoch else pairs[: 2 * batch_size]
        return pair_dataset(PairBatches(inputs, lambda e: pair_steps(chosen, batch_size, seed, e)), epoch)

    trainer.fit(batches, epochs=1, steps_per_epoch=2, verbose=0)
    return trainer.fit(batches, epochs=2, steps_per_epoch=steps, verbose=0).train_seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="every training pair of the quick profile (slow: the naive "
                                                            "path runs the backbone twice per pair)")
    parser.add_argument("--pairs", type=int, default=DEFAULT_PAIRS, help=f"pairs per epoch (default {DEFAULT_PAIRS})")
    args = parser.parse_args()
    os.chdir(BENCHMARKS_DIR.parent)  # the embedded synthetic set lives in data/synthetic of the repository

    config = build_config("contrastive", "quick", recipe("contrastive").PROFILES)
    image, backbone = config.image, config.model.backbone
    data = prepare_data(config)
    all_pairs = data.train.pairs.sample(frac=1.0, random_state=0)  # a mix of genuine, skilled and random pairs
    pairs = all_pairs if args.full else all_pairs.iloc[: args.pairs]
    images = data.train.images
    strategy = make_strategy("cpu")
    with tempfile.TemporaryDirectory(prefix="sigverify-bench-contrastive-") as scratch:
        scratch = Path(scratch)
        with strategy.scope():
            cached_model = build_contrastive_embedding_model(backbone, image.image_size, None, config.model.embedding_dim)
            naive_model = build_contrastive_embedding_model(backbone, image.image_size, None, config.model.embedding_dim)
        started = time.perf_counter()
        features = cached_features(cached_model.get_layer(f"pretrained_{backbone}"), images,
                                   cache_dir=scratch / "cache")
        feature_seconds = time.perf_counter() - started
        print(f"features of all {len(images)} training images (once): {feature_seconds:.1f} s", flush=True)
        cached = timed_epoch(cached_model.get_layer("contrastive_head"), features, pairs, config, scratch / "cached",
                             strategy)
        print(f"cached-feature epoch over {len(pairs)} pairs: {cached:.2f} s", flush=True)
        naive = timed_epoch(naive_model, images, pairs, config, scratch / "naive", strategy)
        print(f"naive Siamese epoch over {len(pairs)} pairs: {naive:.2f} s", flush=True)

    rows = [{"path": "cached features", "epoch_seconds": cached, "one_time_feature_seconds": feature_seconds},
            {"path": "naive Siamese (images)", "epoch_seconds": naive, "one_time_feature_seconds": 0.0}]
    scale = len(all_pairs) / len(pairs)
    full = {"cached features": cached * scale, "naive Siamese (images)": naive * scale}
    summary = {"pairs": len(pairs), "images": len(images), "epoch_speedup": naive / cached,
               "training_pairs_of_the_profile": len(all_pairs), "estimated_full_epoch_seconds": full,
               "first_full_epoch_speedup_with_features": full["naive Siamese (images)"]
               / (full["cached features"] + feature_seconds)}
    ratio_line = (f"ratio: naive / cached-feature epoch time over {len(pairs)} pairs: {naive / cached:.0f}x "
                  f"({naive:.1f} s vs {cached:.2f} s); a first epoch over all {len(all_pairs)} pairs, with the one-time "
                  f"features of {len(images)} images ({feature_seconds:.0f} s): "
                  f"{summary['first_full_epoch_speedup_with_features']:.0f}x (estimated)")
    write_results("contrastive", {"profile": "quick", "image_size": image.image_size, "backbone": backbone,
                                  "batch_size": config.batches.batch_size, "pairs": len(pairs),
                                  "data": "embedded synthetic set"}, rows, summary, ratio_line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
