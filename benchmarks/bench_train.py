"""bench-train: images per second of a triplet training step (batch 32) for the Small (conv4_block6_add) and Smaller
(conv3_block4_add) ResNet50 models at 128×128 and 224×224, in float32 and mixed_bfloat16, and the achieved GFLOP/s of
the float32 steps against TensorFlow's float32 matrix-multiply peak (4096² tf.matmul), measured again just before
each model so that both see the same load of a shared machine. Two measures: wall clock (the fastest of a few steps
or products) and work per CPU-second of this process (which a busy neighbour does not change: on an idle machine the
wall-clock rate would be about that × the cores).

FLOPs are counted from the layer shapes: multiply-adds of every convolution and dense layer × 2, × 3 for forward and
backward (batch-norm, activations and the loss are left out, so the achieved figure is a slight underestimate).

    python benchmarks/bench_train.py [--full]   (or: make bench-train; --full: 10 steps instead of 3)
"""

from __future__ import annotations

import argparse
import statistics
import sys

from common import write_results
from training import (
    TRAINING_PASSES,
    forward_flops_per_image,
    matmul_gflops,
    train_step_images_per_second,
    triplet_model,
    with_precision,
)

MODELS = {"Small ResNet50": "conv4_block6_add", "Smaller ResNet50": "conv3_block4_add"}
IMAGE_SIZES = (128, 224)
PRECISIONS = ("float32", "mixed_bfloat16")
BATCH_SIZE = 32


def measure_case(cut_layer: str, image_size: int, steps: int):
    model = triplet_model(cut_layer, image_size)
    return model, train_step_images_per_second(model, BATCH_SIZE, steps)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="10 timed steps a case instead of 3")
    parser.add_argument("--steps", type=int, default=None, help="timed steps a case (overrides --full)")
    args = parser.parse_args()
    steps = args.steps or (10 if args.full else 3)

    rows = []
    for name, cut_layer in MODELS.items():
        for image_size in IMAGE_SIZES:
            # The peak is measured again before every model: on a shared machine the load changes within a run.
            peak = {dtype: matmul_gflops(dtype=dtype) for dtype in ("float32", "bfloat16")}
            print(f"tf.matmul 4096²: float32 {peak['float32'][0]:.0f} GFLOP/s, bfloat16 {peak['bfloat16'][0]:.0f} "
                  f"GFLOP/s", flush=True)
            for precision in PRECISIONS:
                model, (images_per_second, images_per_cpu_second) = with_precision(precision, measure_case, cut_layer,
                                                                                   image_size, steps)
                training_gflop = TRAINING_PASSES * forward_flops_per_image(model) / 1e9
                row = {"model": name, "cut_layer": cut_layer, "image_size": image_size, "precision": precision,
                       "batch_size": BATCH_SIZE, "training_gflop_per_image": training_gflop,
                       "images_per_second": images_per_second, "achieved_gflops": training_gflop * images_per_second,
                       "float32_matmul_peak_gflops": peak["float32"][0], "bfloat16_matmul_peak_gflops": peak["bfloat16"][0],
                       "images_per_cpu_second": images_per_cpu_second,
                       "achieved_gflop_per_cpu_second": training_gflop * images_per_cpu_second,
                       "float32_matmul_gflop_per_cpu_second": peak["float32"][1]}
                row["fraction_of_float32_matmul_peak"] = row["achieved_gflops"] / row["float32_matmul_peak_gflops"]
                row["cpu_time_fraction_of_float32_matmul"] = (row["achieved_gflop_per_cpu_second"]
                                                              / row["float32_matmul_gflop_per_cpu_second"])
                rows.append(row)
                print(f"{name:16s} {image_size}² {precision:14s} {images_per_second:7.1f} img/s  "
                      f"{row['achieved_gflops']:6.0f} GFLOP/s ({row['fraction_of_float32_matmul_peak']:.0%} of the float32 "
                      f"matmul peak; per CPU-second {row['cpu_time_fraction_of_float32_matmul']:.0%})", flush=True)

    float32 = [r for r in rows if r["precision"] == "float32"]
    best = max(float32, key=lambda r: r["fraction_of_float32_matmul_peak"])
    def bfloat16_speedups(measure: str) -> dict[str, float]:
        return {f"{r['model']} {r['image_size']}": next(
            m[measure] for m in rows if m["precision"] == "mixed_bfloat16" and m["model"] == r["model"]
            and m["image_size"] == r["image_size"]) / r[measure] for r in float32}

    speedups, cpu_speedups = bfloat16_speedups("images_per_second"), bfloat16_speedups("images_per_cpu_second")
    mean_speedup, mean_cpu_speedup = (statistics.geometric_mean(x.values()) for x in (speedups, cpu_speedups))
    summary = {"matmul_peak_gflops": {"float32": max(r["float32_matmul_peak_gflops"] for r in rows),
                                      "bfloat16": max(r["bfloat16_matmul_peak_gflops"] for r in rows)},
               "best_float32": {k: best[k] for k in ("model", "image_size", "achieved_gflops",
                                                      "fraction_of_float32_matmul_peak")},
               "median_fraction_of_peak": statistics.median(r["fraction_of_float32_matmul_peak"] for r in float32),
               "median_cpu_time_fraction": statistics.median(r["cpu_time_fraction_of_float32_matmul"] for r in float32),
               "mixed_bfloat16_speedup": speedups, "mixed_bfloat16_speedup_geometric_mean": mean_speedup,
               "mixed_bfloat16_speedup_per_cpu_second": cpu_speedups,
               "mixed_bfloat16_speedup_per_cpu_second_geometric_mean": mean_cpu_speedup}
    ratio_line = (f"ratio: float32 training / float32 matmul peak: wall clock best "
                  f"{best['fraction_of_float32_matmul_peak']:.2f} ({best['model']} {best['image_size']}², "
                  f"{best['achieved_gflops']:.0f} of {best['float32_matmul_peak_gflops']:.0f} GFLOP/s), median "
                  f"{summary['median_fraction_of_peak']:.2f}; per CPU-second median {summary['median_cpu_time_fraction']:.2f}; "
                  f"mixed_bfloat16 / float32 images/s {mean_speedup:.2f}x, per CPU-second {mean_cpu_speedup:.2f}x "
                  f"(geometric means of {len(speedups)} cases)")
    write_results("train", {"batch_size": BATCH_SIZE, "timed_steps": steps, "models": MODELS,
                            "image_sizes": IMAGE_SIZES, "precisions": PRECISIONS,
                            "flops": "conv+dense multiply-adds × 2 × 3 (forward + backward)"},
                  rows, summary, ratio_line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
