"""Training: one engine interface (`engine.TrainingEngine`, its feeds and what both engines share), an engine per Keras
backend (`tf_engine` with `tf_data` on TensorFlow, `jax_engine` on JAX), chosen once per process by `make_engine`."""

from __future__ import annotations

import keras

from sigverify.errors import ConfigError
from sigverify.training.engine import TrainingEngine


def make_engine(devices) -> TrainingEngine:
    """The engine of this process's Keras backend for `devices` (a `sigverify.settings.DeviceSettings`): its strategy
    or distribution, precision policy and XLA setting. Must run before the backend starts (logical CPU devices)."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        from sigverify.training.tf_engine import TensorFlowEngine

        return TensorFlowEngine(devices)
    if backend == "jax":
        from sigverify.training.jax_engine import JaxEngine

        return JaxEngine(devices)
    raise ConfigError(f"KERAS_BACKEND={backend}: the experiments train on the tensorflow or jax backend; expected one "
                      f"of those (the losses and models themselves run on {backend})")
