"""bench-loss: our TripletSemiHardLoss against the original's tiled formulation (`naive_tiled_semihard_loss` in
tests/metric_oracles.py, the tests' reference) and against our previous version, which sorted every row of the distance
matrix ("sorted", `sorted_semihard_loss` below), forward and backward on float32 L2-normalized 256-d embeddings, P×K
labels (4 images per class), at several batch sizes.

Each (loss, batch size) runs in its own subprocess: the time is the median of repeated calls of one compiled
tf.function (value and gradient), the memory is the growth of the peak resident set over the process's state before
the first call. The subprocess may use at most --memory-budget-gib of extra address space (default 6): the naive
version needs about 16 bytes × B³ (B = 1024: over 16 GiB), so beyond the budget it is recorded as "out of memory
budget" instead of taking a shared machine down.

    python benchmarks/bench_loss.py [--batch-sizes 64 256 512 1024 2048] [--memory-budget-gib 6]   (or: make bench-loss)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from common import (
    GIB,
    MIB,
    limit_address_space,
    median_seconds,
    peak_rss_bytes,
    reset_peak_rss,
    rss_bytes,
    write_results,
)

IMPLEMENTATIONS = ("ours", "sorted", "naive")
EMBEDDING_DIM = 256
IMAGES_PER_CLASS = 4
OUT_OF_MEMORY = "out of memory budget"
MEMORY_ERRORS = ("ResourceExhausted", "bad_alloc", "MemoryError", "Cannot allocate", "OOM", "out of memory")


def sorted_semihard_loss(labels, embeddings, margin=1.0, distance_metric="euclidean"):
    """TripletSemiHardLoss as sigverify.losses computed it before it searched each positive's negative: every row of
    the distance matrix sorted (`sorted_semihard_negatives`), B² log B."""
    from keras import ops

    from sigverify.distances import pairwise_distances
    from sigverify.losses import sorted_semihard_negatives

    distances = pairwise_distances(embeddings, distance_metric)
    labels = ops.reshape(labels, (-1,))
    same_label = ops.equal(ops.expand_dims(labels, 1), ops.expand_dims(labels, 0))
    positive_mask = ops.logical_and(same_label, ops.logical_not(ops.eye(ops.shape(labels)[0], dtype="bool")))
    order, sorted_distances, negative_distances = sorted_semihard_negatives(distances, ops.logical_not(same_label))
    pair_losses = ops.maximum(margin + sorted_distances - negative_distances, 0.0)
    is_positive_pair = ops.take_along_axis(positive_mask, order, axis=1)
    positive_pairs = ops.sum(ops.cast(positive_mask, distances.dtype))
    return ops.sum(ops.where(is_positive_pair, pair_losses, 0.0)) / ops.maximum(positive_pairs, 1.0)


def measure(implementation: str, batch_size: int, budget_bytes: int) -> dict:
    """In the subprocess: time and peak memory growth of value + gradient of one loss at one batch size."""
    import numpy as np
    import tensorflow as tf

    from sigverify.losses import TripletSemiHardLoss
    from tests.metric_oracles import naive_tiled_semihard_loss

    loss = {"ours": TripletSemiHardLoss(), "sorted": sorted_semihard_loss,
            "naive": naive_tiled_semihard_loss}[implementation]
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(batch_size, EMBEDDING_DIM)).astype(np.float32)
    embeddings = tf.constant(embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True))
    labels = tf.constant(np.repeat(np.arange(batch_size // IMAGES_PER_CLASS), IMAGES_PER_CLASS).astype(np.int32))

    @tf.function
    def value_and_gradient(x, y):
        with tf.GradientTape() as tape:
            tape.watch(x)
            value = loss(y, x)
        return value, tape.gradient(value, x)

    value_and_gradient.get_concrete_function(embeddings, labels)  # traced before measuring: only the run counts
    limit_address_space(budget_bytes)
    reset_peak_rss()
    before = rss_bytes()
    value, _ = value_and_gradient(embeddings, labels)  # traces, then runs once
    seconds = median_seconds(lambda: value_and_gradient(embeddings, labels)[0].numpy())
    return {"implementation": implementation, "batch_size": batch_size, "seconds": seconds,
            "peak_memory_mib": (peak_rss_bytes() - before) / MIB, "loss": float(value)}


def run_case(implementation: str, batch_size: int, budget_gib: float) -> dict:
    command = [sys.executable, __file__, "--case", implementation, str(batch_size), "--memory-budget-gib", str(budget_gib)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    if result.returncode == 0:
        return json.loads(result.stdout.strip().splitlines()[-1])
    tail = result.stderr.strip().splitlines()[-3:]
    out_of_memory = result.returncode < 0 or any(marker in result.stderr for marker in MEMORY_ERRORS)
    return {"implementation": implementation, "batch_size": batch_size, "seconds": None, "peak_memory_mib": None,
            "failed": OUT_OF_MEMORY if out_of_memory else "error", "detail": " | ".join(tail)[-500:]}


def summarize(rows: list[dict], budget_gib: float) -> tuple[dict, str]:
    by_case = {(row["implementation"], row["batch_size"]): row for row in rows}
    sizes = sorted({row["batch_size"] for row in rows})
    both = [b for b in sizes if by_case[("ours", b)]["seconds"] and by_case[("naive", b)]["seconds"]]
    speedups = {b: by_case[("naive", b)]["seconds"] / by_case[("ours", b)]["seconds"] for b in both}
    with_sorted = [b for b in sizes if by_case[("ours", b)]["seconds"] and by_case[("sorted", b)]["seconds"]]
    over_sorted = {b: by_case[("sorted", b)]["seconds"] / by_case[("ours", b)]["seconds"] for b in with_sorted}
    memory_ratios = {b: by_case[("naive", b)]["peak_memory_mib"] / max(by_case[("ours", b)]["peak_memory_mib"], 1e-3)
                     for b in both}
    largest_ours = max(b for b in sizes if by_case[("ours", b)]["seconds"])
    loss_differences = [abs(by_case[("naive", b)]["loss"] - by_case[("ours", b)]["loss"]) for b in both]
    sorted_differences = [abs(by_case[("sorted", b)]["loss"] - by_case[("ours", b)]["loss"]) for b in with_sorted]
    summary = {"speedup_by_batch_size": speedups, "memory_ratio_by_batch_size": memory_ratios,
               "largest_loss_difference": max(loss_differences, default=None),
               "speedup_over_sorted_by_batch_size": over_sorted,
               "largest_loss_difference_from_sorted": max(sorted_differences, default=None),
               "naive_out_of_memory_budget_at": [b for b in sizes if by_case[("naive", b)].get("failed") == OUT_OF_MEMORY],
               "ours_peak_memory_mib_at_largest": by_case[("ours", largest_ours)]["peak_memory_mib"],
               "largest_batch_size": largest_ours}
    parts = []
    if both:
        b = max(both)
        parts.append(f"naive/ours time at B={b}: {speedups[b]:.1f}x (memory {memory_ratios[b]:.0f}x)")
    for b in with_sorted:
        parts.append(f"B={b}: ours {by_case[('ours', b)]['seconds'] * 1000:.0f} ms, sorted "
                     f"{by_case[('sorted', b)]['seconds'] * 1000:.0f} ms (sorted/ours {over_sorted[b]:.1f}x)")
    for b in summary["naive_out_of_memory_budget_at"]:
        parts.append(f"B={b}: naive {OUT_OF_MEMORY} ({budget_gib:g} GiB), ours {by_case[('ours', b)]['seconds']:.3f} s")
    parts.append(f"ours at B={largest_ours}: {summary['ours_peak_memory_mib_at_largest']:.0f} MiB peak")
    return summary, "ratio: " + "; ".join(parts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 256, 512, 1024, 2048])
    parser.add_argument("--memory-budget-gib", type=float, default=6.0)
    parser.add_argument("--case", nargs=2, metavar=("IMPLEMENTATION", "BATCH_SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(measure(args.case[0], int(args.case[1]), int(args.memory_budget_gib * GIB))))
        return 0
    rows = []
    for batch_size in args.batch_sizes:
        for implementation in IMPLEMENTATIONS:
            row = run_case(implementation, batch_size, args.memory_budget_gib)
            rows.append(row)
            shown = (f"{row['seconds'] * 1000:9.1f} ms  {row['peak_memory_mib']:8.1f} MiB" if row["seconds"] is not None
                     else row["failed"])
            print(f"B={batch_size:5d} {implementation:6s} {shown}", flush=True)
    summary, ratio_line = summarize(rows, args.memory_budget_gib)
    write_results("loss", {"batch_sizes": args.batch_sizes, "memory_budget_gib": args.memory_budget_gib,
                           "embedding_dim": EMBEDDING_DIM, "images_per_class": IMAGES_PER_CLASS,
                           "measured": "median time of value+gradient (tf.function, float32); peak RSS growth"},
                  rows, summary, ratio_line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
