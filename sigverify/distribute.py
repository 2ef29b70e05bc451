"""Device placement through tf.distribute: one function picks the strategy every experiment trains under."""

from __future__ import annotations

import json
import logging
import os

import keras
import tensorflow as tf

from sigverify.errors import ConfigError

log = logging.getLogger(__name__)


def split_cpu(n_devices: int) -> None:
    """Expose the CPU as n logical devices (so MirroredStrategy can be exercised without GPUs). Must run before TF
    initialises its devices; calling it again with the same count is harmless."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    current = tf.config.get_logical_device_configuration(cpu)
    if current is not None and len(current) == n_devices:
        return
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * n_devices)
    except RuntimeError as error:
        raise ConfigError(f"--cpu-devices {n_devices}: TensorFlow's devices were already initialised ({error})") from None


def make_strategy(name: str = "auto", cpu_devices: int | None = None) -> tf.distribute.Strategy:
    """auto: Mirrored over all GPUs when there are several, the one GPU, or the CPU; cpu: the CPU even with GPUs;
    mirrored: all GPUs, else all logical CPUs; multiworker: MultiWorkerMirroredStrategy from TF_CONFIG."""
    if name == "multiworker":
        if "TF_CONFIG" not in os.environ:
            raise ConfigError("--strategy multiworker: TF_CONFIG is not set; expected a cluster spec with this task's index")
        json.loads(os.environ["TF_CONFIG"])
        if cpu_devices:
            split_cpu(cpu_devices)
        return tf.distribute.MultiWorkerMirroredStrategy()
    if cpu_devices:
        split_cpu(cpu_devices)
    gpus = tf.config.list_logical_devices("GPU")
    cpus = tf.config.list_logical_devices("CPU")
    if name == "cpu":
        return tf.distribute.OneDeviceStrategy(cpus[0].name)
    if name == "mirrored":
        devices = [d.name for d in (gpus or cpus)]
        return tf.distribute.MirroredStrategy(devices)
    if name == "auto":
        if len(gpus) > 1:
            return tf.distribute.MirroredStrategy([d.name for d in gpus])
        return tf.distribute.OneDeviceStrategy((gpus or cpus)[0].name)
    raise ConfigError(f"unknown strategy {name!r}: expected one of auto, cpu, mirrored, multiworker")


def describe_strategy(strategy: tf.distribute.Strategy) -> str:
    devices = getattr(strategy.extended, "worker_devices", None) or []
    return f"{type(strategy).__name__} over {strategy.num_replicas_in_sync} replica(s): {', '.join(devices)}"


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Only the chief writes the run folder under multi-worker training."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    return task_type == "chief" or (task_type == "worker" and task_id == 0 and "chief" not in resolver.cluster_spec().as_dict())


def set_precision(mixed: bool) -> str:
    """float32, or mixed precision: float16 compute on a GPU, bfloat16 on a CPU (losses and the L2 normalization stay
    float32). Returns the policy name."""
    if not mixed:
        policy = "float32"
    else:
        policy = "mixed_float16" if tf.config.list_logical_devices("GPU") else "mixed_bfloat16"
    keras.mixed_precision.set_dtype_policy(policy)
    return policy
