"""bench-train: images per second of a triplet training step (batch 32) and of the embedding at inference (batch 64,
as evaluation and verification run it) for the Small (conv4_block6_add) and Smaller (conv3_block4_add) ResNet50 models
at 128×128 and 224×224, in float32 and mixed_bfloat16, with the achieved GFLOP/s against TensorFlow's matrix-multiply
peak of the same precision (4096² tf.matmul, float32 and bfloat16), measured again just before each model so that both
see the same load of a shared machine. Then the levers of the bfloat16 step, each alone and each in a process of its
own (grappler options and thread pools are set once per process), on Small ResNet50 at 128², with its ratio to the
float32 step.

Two measures: wall clock (the fastest of a few steps or products) and work per CPU-second of this process (which a
busy neighbour does not change: on an idle machine the wall-clock rate would be about that × the cores). FLOPs are
counted from the layer shapes: multiply-adds of every convolution and dense layer × 2, × 3 for a training step
(forward and backward; batch-norm, activations and the loss are left out, so the achieved figure is a slight
underestimate).

    python benchmarks/bench_train.py [--full]   (or: make bench-train; --full: 10 steps instead of 3)
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

import keras
from common import write_results
from training import (
    TRAINING_PASSES,
    forward_flops_per_image,
    inference_images_per_second,
    matmul_gflops,
    train_step_images_per_second,
    triplet_model,
    with_precision,
)

MODELS = {"Small ResNet50": "conv4_block6_add", "Smaller ResNet50": "conv3_block4_add"}
IMAGE_SIZES = (128, 224)
PRECISIONS = ("float32", "mixed_bfloat16")
BATCH_SIZE = 32
INFERENCE_BATCH_SIZE = 64
PEAK_DTYPE = {"float32": "float32", "mixed_bfloat16": "bfloat16"}

# The levers of the bfloat16 step, each a change to one step of Small ResNet50 at 128² (batch 32, semi-hard loss,
# Adam): precision policy, batch norm (Keras 3's separate float32 ops, or TensorFlow's fused kernel as the engine runs
# it), grappler options, batch size, thread pools, and the loss replaced by a plain sum (what the loss costs).
FUSED = {"policy": "mixed_bfloat16", "fused_batch_norm": True}
LEVERS = {
    "float32, Keras batch norm (before)": {"policy": "float32", "fused_batch_norm": False},
    "float32, fused batch norm": {"policy": "float32", "fused_batch_norm": True},
    "mixed_bfloat16, Keras batch norm (before)": {"policy": "mixed_bfloat16", "fused_batch_norm": False},
    "mixed_bfloat16, fused batch norm (the engine's step)": FUSED,
    "grappler auto_mixed_precision_onednn_bfloat16 on the float32 model, Keras batch norm": {
        "policy": "float32", "fused_batch_norm": False, "grappler": {"auto_mixed_precision_onednn_bfloat16": True}},
    "grappler auto_mixed_precision_onednn_bfloat16 on the float32 model, fused batch norm": {
        "policy": "float32", "fused_batch_norm": True, "grappler": {"auto_mixed_precision_onednn_bfloat16": True}},
    "the engine's step, grappler remapper off": {**FUSED, "grappler": {"remapping": False}},
    "the engine's step, batch 64": {**FUSED, "batch_size": 64},
    "the engine's step, 2 intra-op and 1 inter-op threads": {**FUSED, "threads": [2, 1]},
    "the engine's step, loss replaced by a sum of the embeddings": {**FUSED, "sum_loss": True},
}
LEVER_MODEL, LEVER_IMAGE_SIZE = "Small ResNet50", 128


def measure_case(cut_layer: str, image_size: int, steps: int):
    model = triplet_model(cut_layer, image_size)
    training = train_step_images_per_second(model, BATCH_SIZE, steps)
    return model, training, inference_images_per_second(model, INFERENCE_BATCH_SIZE, max(steps, 3))


def measure_lever(lever: dict, steps: int) -> dict:
    """One lever's step in this (fresh) process: images/s and per CPU-second."""
    import tensorflow as tf

    if lever.get("grappler"):
        tf.config.optimizer.set_experimental_options(lever["grappler"])
    if lever.get("threads"):
        tf.config.threading.set_intra_op_parallelism_threads(lever["threads"][0])
        tf.config.threading.set_inter_op_parallelism_threads(lever["threads"][1])
    loss_fn = (lambda labels, embeddings: keras.ops.mean(keras.ops.sum(embeddings, axis=-1))) if lever.get(
        "sum_loss") else None

    def step_rate():
        model = triplet_model(MODELS[LEVER_MODEL], LEVER_IMAGE_SIZE, fused_batch_norm=lever["fused_batch_norm"])
        return train_step_images_per_second(model, lever.get("batch_size", BATCH_SIZE), steps, loss_fn=loss_fn)

    images_per_second, images_per_cpu_second = with_precision(lever["policy"], step_rate)
    return {"images_per_second": images_per_second, "images_per_cpu_second": images_per_cpu_second}


def lever_rows(steps: int) -> list[dict]:
    rows = []
    for name, lever in LEVERS.items():
        child = subprocess.run([sys.executable, __file__, "--lever", name, "--steps", str(steps)],
                               capture_output=True, text=True)
        if child.returncode != 0:
            raise SystemExit(f"error: lever {name!r} failed (exit {child.returncode}):\n{child.stderr[-2000:]}")
        rows.append({"lever": name, **lever, **json.loads(child.stdout.strip().splitlines()[-1])})
        print(f"{name:88s} {rows[-1]['images_per_second']:6.1f} img/s", flush=True)
    for reference in ("float32, Keras batch norm (before)", "float32, fused batch norm"):
        base = next(r for r in rows if r["lever"] == reference)
        for row in rows:
            row[f"ratio_to {reference}"] = row["images_per_second"] / base["images_per_second"]
            row[f"cpu_ratio_to {reference}"] = row["images_per_cpu_second"] / base["images_per_cpu_second"]
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="10 timed steps a case instead of 3")
    parser.add_argument("--steps", type=int, default=None, help="timed steps a case (overrides --full)")
    parser.add_argument("--lever", choices=LEVERS, help=argparse.SUPPRESS)  # one lever, in the child process
    args = parser.parse_args()
    steps = args.steps or (10 if args.full else 3)
    if args.lever:
        print(json.dumps(measure_lever(LEVERS[args.lever], steps)))
        return 0

    rows = []
    for name, cut_layer in MODELS.items():
        for image_size in IMAGE_SIZES:
            # The peak is measured again before every model: on a shared machine the load changes within a run.
            peak = {dtype: matmul_gflops(dtype=dtype) for dtype in ("float32", "bfloat16")}
            print(f"tf.matmul 4096²: float32 {peak['float32'][0]:.0f} GFLOP/s, bfloat16 {peak['bfloat16'][0]:.0f} "
                  f"GFLOP/s", flush=True)
            for precision in PRECISIONS:
                model, (images_per_second, images_per_cpu_second), (inference, inference_per_cpu_second) = (
                    with_precision(precision, measure_case, cut_layer, image_size, steps))
                forward_gflop = forward_flops_per_image(model) / 1e9
                training_gflop = TRAINING_PASSES * forward_gflop
                own_peak, own_peak_per_cpu_second = peak[PEAK_DTYPE[precision]]
                row = {"model": name, "cut_layer": cut_layer, "image_size": image_size, "precision": precision,
                       "batch_size": BATCH_SIZE, "training_gflop_per_image": training_gflop,
                       "images_per_second": images_per_second, "achieved_gflops": training_gflop * images_per_second,
                       "float32_matmul_peak_gflops": peak["float32"][0], "bfloat16_matmul_peak_gflops": peak["bfloat16"][0],
                       "matmul_peak_of_its_precision_gflops": own_peak,
                       "images_per_cpu_second": images_per_cpu_second,
                       "achieved_gflop_per_cpu_second": training_gflop * images_per_cpu_second,
                       "inference_batch_size": INFERENCE_BATCH_SIZE, "inference_images_per_second": inference,
                       "inference_images_per_cpu_second": inference_per_cpu_second,
                       "inference_gflops": forward_gflop * inference}
                row["fraction_of_its_matmul_peak"] = row["achieved_gflops"] / own_peak
                row["cpu_time_fraction_of_its_matmul"] = row["achieved_gflop_per_cpu_second"] / own_peak_per_cpu_second
                row["inference_fraction_of_its_matmul_peak"] = row["inference_gflops"] / own_peak
                row["fraction_of_bfloat16_matmul_peak"] = row["achieved_gflops"] / peak["bfloat16"][0]
                rows.append(row)
                print(f"{name:16s} {image_size}² {precision:14s} train {images_per_second:6.1f} img/s "
                      f"{row['achieved_gflops']:5.0f} GFLOP/s ({row['fraction_of_its_matmul_peak']:.0%} of the "
                      f"{PEAK_DTYPE[precision]} matmul); inference {inference:6.1f} img/s "
                      f"({row['inference_fraction_of_its_matmul_peak']:.0%})", flush=True)
    levers = lever_rows(steps + 2)

    def bfloat16_speedups(measure: str) -> dict[str, float]:
        def of(precision, model, image_size):
            return next(r[measure] for r in rows if (r["precision"], r["model"], r["image_size"]) == (
                precision, model, image_size))

        return {f"{model} {size}": of("mixed_bfloat16", model, size) / of("float32", model, size)
                for model in MODELS for size in IMAGE_SIZES}

    speedups, cpu_speedups = bfloat16_speedups("images_per_second"), bfloat16_speedups("images_per_cpu_second")
    inference_speedups = bfloat16_speedups("inference_images_per_second")
    mean_speedup, mean_cpu_speedup, mean_inference_speedup = (
        statistics.geometric_mean(x.values()) for x in (speedups, cpu_speedups, inference_speedups))
    bfloat16 = [r for r in rows if r["precision"] == "mixed_bfloat16"]
    best = max(bfloat16, key=lambda r: r["fraction_of_its_matmul_peak"])
    engine_step = next(r for r in levers if r["lever"] == "mixed_bfloat16, fused batch norm (the engine's step)")
    before = {p: next(r for r in levers if r["lever"] == f"{p}, Keras batch norm (before)") for p in PRECISIONS}
    summary = {"matmul_peak_gflops": {"float32": max(r["float32_matmul_peak_gflops"] for r in rows),
                                      "bfloat16": max(r["bfloat16_matmul_peak_gflops"] for r in rows)},
               "best_bfloat16": {k: best[k] for k in ("model", "image_size", "achieved_gflops",
                                                      "fraction_of_its_matmul_peak")},
               "median_fraction_of_its_peak": {p: statistics.median(r["fraction_of_its_matmul_peak"] for r in rows
                                                                    if r["precision"] == p) for p in PRECISIONS},
               "mixed_bfloat16_speedup": speedups, "mixed_bfloat16_speedup_geometric_mean": mean_speedup,
               "mixed_bfloat16_speedup_per_cpu_second": cpu_speedups,
               "mixed_bfloat16_speedup_per_cpu_second_geometric_mean": mean_cpu_speedup,
               "mixed_bfloat16_inference_speedup_geometric_mean": mean_inference_speedup,
               "levers": {r["lever"]: r["ratio_to float32, Keras batch norm (before)"] for r in levers},
               "engine_step_over_float32_before": engine_step["ratio_to float32, Keras batch norm (before)"],
               "engine_step_over_float32_fused": engine_step["ratio_to float32, fused batch norm"],
               "engine_step_over_mixed_bfloat16_before": (engine_step["images_per_second"]
                                                          / before["mixed_bfloat16"]["images_per_second"])}
    ratio_line = (f"ratio: bfloat16 step (fused batch norm) / float32 step before: "
                  f"{summary['engine_step_over_float32_before']:.2f}x (over float32 with the fused batch norm too "
                  f"{summary['engine_step_over_float32_fused']:.2f}x; over mixed_bfloat16 before "
                  f"{summary['engine_step_over_mixed_bfloat16_before']:.2f}x; {LEVER_MODEL} {LEVER_IMAGE_SIZE}², batch "
                  f"{BATCH_SIZE}); mixed_bfloat16 / float32 with both fused: training {mean_speedup:.2f}x, per "
                  f"CPU-second {mean_cpu_speedup:.2f}x, inference {mean_inference_speedup:.2f}x (geometric means of "
                  f"{len(speedups)} cases); best bfloat16 step {best['fraction_of_its_matmul_peak']:.2f} of the "
                  f"bfloat16 matmul peak ({best['model']} {best['image_size']}², {best['achieved_gflops']:.0f} of "
                  f"{best['matmul_peak_of_its_precision_gflops']:.0f} GFLOP/s)")
    write_results("train", {"batch_size": BATCH_SIZE, "inference_batch_size": INFERENCE_BATCH_SIZE,
                            "timed_steps": steps, "models": MODELS, "image_sizes": IMAGE_SIZES,
                            "precisions": PRECISIONS, "lever_case": f"{LEVER_MODEL} {LEVER_IMAGE_SIZE}²",
                            "flops": "conv+dense multiply-adds × 2 (× 3 for training: forward + backward)"},
                  rows + levers, summary, ratio_line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
