"""Training speed of the blog profile on the JAX backend: the post's model (ResNet50 cut at conv4_block6_add + head,
224×224, batch 64, semi-hard triplet loss, Adam) trained with Keras `fit` for a fixed number of steps on synthetic
arrays, in float32 and mixed_bfloat16. Prints images/s, achieved TFLOP/s (FLOPs counted from the layer shapes) and peak
device memory; `--profile-step` splits a step into input copy, loss and model; `--loss-sweep` times the semi-hard loss
forward+backward at large batches. Needs NumPy, JAX and the keras wheel only (no TensorFlow: the GPU machines have
none); a small size and a few steps run it on a CPU.

    make bench-gpu    or    python -m sigverify.bench_gpu [--steps 30] [--loss-sweep] [--image-size 64 --batch-size 8]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

PRECISIONS = ("float32", "mixed_bfloat16")
BLOG_TRAIN_IMAGES, BLOG_EPOCHS = 2112, 25  # CEDAR's 88 training classes × 24 images, the post's 25 epochs
N_CLASSES = 88
LOSS_SWEEP_SIZES = (1024, 4096, 16384)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m sigverify.bench_gpu", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30, help="timed training steps per precision (default 30)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first, compilation included (default 3)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--cut-layer", default="conv4_block6_add", help="ResNet50 layer the model is cut at")
    parser.add_argument("--precision", default=",".join(PRECISIONS),
                        help=f"comma-separated dtype policies (default {','.join(PRECISIONS)})")
    parser.add_argument("--profile-step", action="store_true",
                        help="also time the parts of a step: host-to-device copy, loss, model without the loss")
    parser.add_argument("--loss-sweep", action="store_true", help="time the semi-hard loss forward+backward alone")
    parser.add_argument("--sweep-sizes", default=",".join(map(str, LOSS_SWEEP_SIZES)),
                        help="batch sizes of --loss-sweep (default 1024,4096,16384)")
    parser.add_argument("--embedding-dim", type=int, default=256)
    parser.add_argument("--json", default=None,
                        help="also write the results to this JSON file ('-': print one JSON line instead of tables)")
    args = parser.parse_args(argv)
    args.precision = [p for p in args.precision.split(",") if p]
    args.sweep_sizes = [int(size) for size in args.sweep_sizes.split(",") if size]
    unknown = [p for p in args.precision if p not in ("float32", "mixed_bfloat16", "mixed_float16", "bfloat16")]
    if unknown or not args.precision:
        parser.error(f"--precision {','.join(unknown) or '(empty)'}: expected dtype policies such as float32, "
                     "mixed_bfloat16, mixed_float16")
    if min(args.steps, args.warmup, args.batch_size, args.image_size, *args.sweep_sizes) < 1:
        parser.error("--steps, --warmup, --batch-size, --image-size and --sweep-sizes: expected positive numbers")
    return args


def forward_flops(model) -> int:
    """Floating-point operations (2 × multiply-adds) of one image's forward pass through the convolutions and dense
    layers, counted from their kernel and output shapes (the rest of the arithmetic is under 1% here)."""
    import keras

    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            total += forward_flops(layer)
        elif isinstance(layer, keras.layers.Conv2D):
            kernel_h, kernel_w, inputs_per_group, filters = layer.kernel.shape
            _, height, width, _ = layer.output.shape
            total += 2 * height * width * kernel_h * kernel_w * inputs_per_group * filters
        elif isinstance(layer, keras.layers.Dense):
            inputs, units = layer.kernel.shape
            total += 2 * inputs * units * int(np.prod(layer.output.shape[1:-1]))
    return int(total)


def peak_device_memory() -> int | None:
    """Peak bytes in use on the first device since the process started (None where the device keeps no statistics,
    as JAX's CPU device)."""
    import jax

    stats = jax.local_devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def device_description() -> str:
    import jax
    import keras

    device = jax.local_devices()[0]
    return f"{device.platform}:{device.id} {device.device_kind} (jax {jax.__version__}, keras {keras.__version__})"


def _synthetic_batches(batch_size: int, image_size: int, n_steps: int, seed: int = 0):
    """A PyDataset of `n_steps` batches from two pre-made uint8 batches of signatures (the models scale them) with labels
    of the blog's 88 training classes: every step copies a fresh batch to the device, as training does."""
    import keras

    rng = np.random.default_rng(seed)
    images = [rng.integers(0, 256, (batch_size, image_size, image_size), dtype=np.uint8) for _ in range(2)]
    labels = [rng.integers(0, N_CLASSES, batch_size).astype(np.int32) for _ in range(2)]

    class Batches(keras.utils.PyDataset):
        def __len__(self):
            return n_steps

        def __getitem__(self, index):
            return images[index % 2], labels[index % 2]

    return Batches()


def _timed_fit(model, args: argparse.Namespace) -> float:
    """Seconds per training step of `model.fit` over synthetic batches, after `warmup` steps that compile."""
    import keras

    model.fit(_synthetic_batches(args.batch_size, args.image_size, args.warmup), epochs=1, verbose=0)
    keras.ops.convert_to_numpy(model.trainable_variables[0])
    started = time.perf_counter()
    model.fit(_synthetic_batches(args.batch_size, args.image_size, args.steps, seed=1), epochs=1, verbose=0)
    keras.ops.convert_to_numpy(model.trainable_variables[0])  # waits for the last step
    return (time.perf_counter() - started) / args.steps


def _mean_embedding(labels, embeddings):
    """A loss of (almost) no cost: timing the model with it leaves out the triplet loss."""
    import keras

    return keras.ops.mean(embeddings)


def benchmark_training(args: argparse.Namespace, precision: str) -> dict:
    """Train the model in `precision` for `args.steps` steps; images/s, TFLOP/s (3 × forward FLOPs per image: forward
    plus the two backward products) and peak device memory."""
    import keras

    from sigverify.losses import TripletSemiHardLoss
    from sigverify.models.embedding import build_embedding_model

    keras.mixed_precision.set_dtype_policy(precision)
    model = build_embedding_model("resnet50", args.cut_layer, args.image_size, weights=None,
                                  embedding_dim=args.embedding_dim)
    optimizer = keras.optimizers.Adam(1e-3)
    if precision == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    model.compile(optimizer=optimizer, loss=TripletSemiHardLoss())
    step_seconds = _timed_fit(model, args)
    flops_per_image = forward_flops(model)
    images_per_second = args.batch_size / step_seconds
    result = {
        "precision": precision, "device": device_description(), "image_size": args.image_size,
        "batch_size": args.batch_size, "cut_layer": args.cut_layer, "params": model.count_params(),
        "steps": args.steps, "step_ms": 1000 * step_seconds, "images_per_second": images_per_second,
        "forward_gflop_per_image": flops_per_image / 1e9,
        "achieved_tflops": 3 * flops_per_image * images_per_second / 1e12,
        "peak_memory_bytes": peak_device_memory(),
        "blog_25_epochs_seconds": BLOG_EPOCHS * (BLOG_TRAIN_IMAGES // args.batch_size) * step_seconds,
    }
    if args.profile_step:
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=_mean_embedding)
        result["model_only_step_ms"] = 1000 * _timed_fit(model, args)
        result["loss_ms"] = benchmark_loss([args.batch_size], args.embedding_dim, repeats=args.steps)[0]["ms"]
        result["input_copy_ms"] = _input_copy_ms(args)
    return result


def _input_copy_ms(args: argparse.Namespace) -> float:
    """Host-to-device copy of one uint8 input batch."""
    import jax

    batch = np.zeros((args.batch_size, args.image_size, args.image_size), np.uint8)
    jax.device_put(batch).block_until_ready()
    started = time.perf_counter()
    for _ in range(args.steps):
        jax.device_put(batch).block_until_ready()
    return 1000 * (time.perf_counter() - started) / args.steps


def benchmark_loss(batch_sizes: list[int], embedding_dim: int, repeats: int = 10) -> list[dict]:
    """Milliseconds of one semi-hard loss forward+backward (value and gradient w.r.t. the embeddings, jit-compiled) on
    L2-normalized random embeddings with P×K labels (4 per class), and the memory XLA plans for it."""
    import jax
    import keras

    from sigverify.losses import TripletSemiHardLoss

    loss = TripletSemiHardLoss()
    value_and_gradient = jax.jit(jax.value_and_grad(lambda embeddings, labels: loss(labels, embeddings)))
    results = []
    for batch_size in batch_sizes:
        rng = np.random.default_rng(batch_size)
        embeddings = rng.normal(size=(batch_size, embedding_dim)).astype(np.float32)
        embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
        labels = rng.permutation(np.arange(batch_size) // 4).astype(np.int32)
        embeddings, labels = jax.device_put(embeddings), jax.device_put(labels)
        compiled = value_and_gradient.lower(embeddings, labels).compile()
        memory = compiled.memory_analysis()
        jax.block_until_ready(compiled(embeddings, labels))
        started = time.perf_counter()
        for _ in range(repeats):
            outputs = compiled(embeddings, labels)
        jax.block_until_ready(outputs)
        results.append({"batch_size": batch_size, "ms": 1000 * (time.perf_counter() - started) / repeats,
                        "value": float(keras.ops.convert_to_numpy(outputs[0])),
                        "planned_memory_bytes": None if memory is None else int(
                            memory.temp_size_in_bytes + memory.argument_size_in_bytes + memory.output_size_in_bytes)})
    return results


def _in_own_process(args: argparse.Namespace, precision: str) -> dict:
    """One precision's training benchmark in a fresh process: a device's peak memory cannot be reset in between."""
    child = [sys.executable, "-m", "sigverify.bench_gpu", "--precision", precision, "--steps", str(args.steps),
             "--warmup", str(args.warmup), "--image-size", str(args.image_size), "--batch-size", str(args.batch_size),
             "--cut-layer", args.cut_layer, "--embedding-dim", str(args.embedding_dim), "--json", "-"]
    if args.profile_step:
        child.append("--profile-step")
    done = subprocess.run(child, stdout=subprocess.PIPE, text=True, env=dict(os.environ, KERAS_BACKEND="jax"))
    if done.returncode != 0:
        raise SystemExit(f"error: the {precision} benchmark failed (exit {done.returncode}); its output is above")
    return json.loads(done.stdout.strip().splitlines()[-1])["training"][0]


def _gib(size: int | None) -> str:
    return "n/a" if size is None else f"{size / 2**30:.2f} GiB"


def print_training(results: list[dict]) -> None:
    first = results[0]
    print(f"\nresnet50 cut at {first['cut_layer']} + head ({first['params']:,} params), {first['image_size']}×"
          f"{first['image_size']}×3, batch {first['batch_size']}, TripletSemiHardLoss, Adam, Keras fit on "
          f"{first['device']}")
    print(f"forward pass: {first['forward_gflop_per_image']:.2f} GFLOP per image (convolutions and dense layers); a "
          "training step counts 3× that")
    print(f"{'precision':<16}{'step ms':>10}{'images/s':>11}{'TFLOP/s':>10}{'peak memory':>14}{'blog 25 epochs':>16}")
    for r in results:
        print(f"{r['precision']:<16}{r['step_ms']:>10.1f}{r['images_per_second']:>11.1f}{r['achieved_tflops']:>10.2f}"
              f"{_gib(r['peak_memory_bytes']):>14}{r['blog_25_epochs_seconds']:>15.0f}s")
    print(f"blog 25 epochs: {BLOG_EPOCHS} epochs of {BLOG_TRAIN_IMAGES:,} images at this step time")
    for r in results:
        if "model_only_step_ms" in r:
            print(f"{r['precision']} step parts: the step with a trivial loss instead of the triplet loss "
                  f"{r['model_only_step_ms']:.1f} ms; the semi-hard loss alone (B={r['batch_size']}) {r['loss_ms']:.2f} ms; "
                  f"host-to-device copy of a float32 input batch {r['input_copy_ms']:.2f} ms")


def print_loss_sweep(results: list[dict]) -> None:
    print("\nTripletSemiHardLoss forward+backward (jit, float32, P×K labels with K=4)")
    print(f"{'B':>8}{'ms':>12}{'planned memory':>17}")
    for r in results:
        print(f"{r['batch_size']:>8}{r['ms']:>12.2f}{_gib(r['planned_memory_bytes']):>17}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Keras reads its backend when first imported: JAX unless the process already runs Keras on another backend (the
    # package starts TensorFlow's where it is installed and KERAS_BACKEND is unset).
    os.environ["KERAS_BACKEND"] = "jax"
    import keras

    if keras.backend.backend() != "jax":
        print(f"error: Keras already runs on {keras.backend.backend()} in this process; expected jax "
              "(KERAS_BACKEND=jax python -m sigverify.bench_gpu)", file=sys.stderr)
        return 2
    if len(args.precision) == 1:
        training = [benchmark_training(args, args.precision[0])]
    else:
        training = [_in_own_process(args, precision) for precision in args.precision]
    results = {"training": training}
    if args.loss_sweep:
        results["loss_sweep"] = benchmark_loss(args.sweep_sizes, args.embedding_dim)
    if args.json == "-":
        print(json.dumps(results))
        return 0
    print_training(training)
    if args.loss_sweep:
        print_loss_sweep(results["loss_sweep"])
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
