"""Prints the numerics class of this machine: which rounding TensorFlow trains the smoke recipes with here.

TensorFlow runs oneDNN's kernels only on CPUs with AVX-512 VNNI/BF16 or AMX and Eigen's elsewhere, each picks its
kernels by instruction set and thread count, and libm picks its exp and log by CPU: two machines can train the same
recipe from the same seed to numbers a few pairs of 60 apart. The class is the CPU (model, cores, vector
instructions), the TensorFlow version and oneDNN switch, and a bit-for-bit hash of a few seeded, op-deterministic Adam
steps of a tiny network made of the recipes' ops (convolution, fused batch norm, ReLU, bilinear resize, global pooling,
dense, L2 normalization, a log-sum-exp loss). `tests/test_recipes_unchanged.py` compares a recipe's numbers with a
recording only in the class it was recorded in."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import tensorflow as tf

ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile")


def cpu_description() -> str:
    fields = {}
    cpuinfo = Path("/proc/cpuinfo")
    for line in cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []:
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    flags = set(fields.get("flags", "").split())
    return f"{fields.get('model name', 'unknown CPU')}, {os.cpu_count()} cores, " + " ".join(
        flag for flag in ISA_FLAGS if flag in flags)


def training_digest(steps: int = 3) -> str:
    tf.keras.utils.set_random_seed(0)
    tf.config.experimental.enable_op_determinism()
    rng = np.random.default_rng(0)
    images = tf.constant(rng.random((8, 24, 24, 1), dtype=np.float32))
    kernel = tf.Variable(rng.normal(0, 0.3, (3, 3, 1, 16)).astype(np.float32))
    scale, offset = tf.Variable(np.ones(16, np.float32)), tf.Variable(np.zeros(16, np.float32))
    wide_kernel = tf.Variable(rng.normal(0, 0.1, (3, 3, 16, 64)).astype(np.float32))
    dense = tf.Variable(rng.normal(0, 0.1, (64, 32)).astype(np.float32))
    variables = [kernel, scale, offset, wide_kernel, dense]
    optimizer = tf.keras.optimizers.Adam(1e-2)
    for _ in range(steps):
        with tf.GradientTape() as tape:
            features = tf.nn.conv2d(images, kernel, strides=1, padding="SAME")
            features, _, _ = tf.compat.v1.nn.fused_batch_norm(features, scale, offset, is_training=True)
            features = tf.image.resize(tf.nn.relu(features), (12, 12), method="bilinear")
            features = tf.nn.relu(tf.nn.conv2d(features, wide_kernel, strides=1, padding="VALID"))
            embeddings = tf.math.l2_normalize(tf.reduce_mean(features, axis=(1, 2)) @ dense, axis=1)
            similarities = embeddings @ tf.transpose(embeddings) * 8.0
            loss = tf.reduce_mean(tf.reduce_logsumexp(similarities, axis=1) - tf.linalg.diag_part(similarities))
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
    digest = hashlib.sha256(np.float32(loss.numpy()).tobytes())
    for variable in variables:
        digest.update(variable.numpy().tobytes())
    return digest.hexdigest()


def numerics_class() -> dict:
    """{"key": 16 hex digits, "machine": what a person reads} of this process's numerics."""
    onednn = os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default")
    machine = f"{cpu_description()}; TensorFlow {tf.__version__}, TF_ENABLE_ONEDNN_OPTS={onednn}"
    key = hashlib.sha256(f"{machine}\n{training_digest()}".encode()).hexdigest()[:16]
    return {"key": key, "machine": machine}


if __name__ == "__main__":
    print(json.dumps(numerics_class()))
