"""Grad-CAM for embedding models: which regions of a signature drive the embedding, per convolutional layer.

As in the post, the target is the whole embedding (the sum of its components; its norm would be constant for an
L2-normalized model) and the maps are taken at the last convolutional layers. Gradients need the backend: TensorFlow
and JAX are supported.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from sigverify.errors import ConfigError


class GradientTap(keras.layers.Layer):
    """Identity plus a zero offset: the gradient with respect to the offset is the gradient with respect to the
    feature map passing through, which no backend exposes for an intermediate tensor of a compiled graph (JAX)."""

    def __init__(self, batch_size: int, **kwargs):
        super().__init__(**kwargs)
        self.batch_size = batch_size

    def build(self, input_shape):
        self.offset = self.add_weight(shape=(self.batch_size, *input_shape[1:]), initializer="zeros", name="offset")

    def call(self, inputs):
        return inputs + ops.cast(self.offset, inputs.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape


def last_conv_layer_names(model: keras.Model, n_layers: int = 4) -> list[str]:
    """Names of the last `n_layers` Conv2D layers of `model`'s own graph (nested models are not searched)."""
    names = [layer.name for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    if not names:
        raise ConfigError(f"model {model.name!r} has no Conv2D layer in its own graph: Grad-CAM needs one")
    return names[-n_layers:]


def _tapped_model(model: keras.Model, layer_names: list[str], batch_size: int) -> tuple[keras.Model, list[GradientTap]]:
    """`model` with a GradientTap after each named layer (sharing all of `model`'s weights), returning the embedding
    and the tapped feature maps."""
    taps = {name: GradientTap(batch_size, name=f"gradcam_tap_{name}") for name in layer_names}

    def call_with_tap(layer, *args, **kwargs):
        outputs = layer(*args, **kwargs)
        return taps[layer.name](outputs) if layer.name in taps else outputs

    clone = keras.models.clone_model(model, clone_function=lambda layer: layer, call_function=call_with_tap)
    tap_list = [taps[name] for name in layer_names]
    return keras.Model(clone.inputs, [clone.output] + [tap.output for tap in tap_list]), tap_list


def _gradients_tensorflow(tapped: keras.Model, taps: list[GradientTap], images):
    import tensorflow as tf

    with tf.GradientTape() as tape:
        embedding, *feature_maps = tapped(images, training=False)
        target = ops.sum(ops.cast(embedding, "float32"))
    return feature_maps, tape.gradient(target, [tap.offset for tap in taps])


def _gradients_jax(tapped: keras.Model, taps: list[GradientTap], images):
    import jax

    trainable = [variable.value for variable in tapped.trainable_variables]
    non_trainable = [variable.value for variable in tapped.non_trainable_variables]
    positions = [next(i for i, v in enumerate(tapped.trainable_variables) if v is tap.offset) for tap in taps]

    def embedding_sum(offsets, trainable, non_trainable, images):
        values = list(trainable)
        for position, offset in zip(positions, offsets):
            values[position] = offset
        (embedding, *feature_maps), _ = tapped.stateless_call(values, non_trainable, images, training=False)
        return ops.sum(ops.cast(embedding, "float32")), feature_maps

    gradient_function = jax.jit(jax.grad(embedding_sum, has_aux=True))
    gradients, feature_maps = gradient_function([trainable[p] for p in positions], trainable, non_trainable, images)
    return feature_maps, gradients


GRADIENT_FUNCTIONS = {"tensorflow": _gradients_tensorflow, "jax": _gradients_jax}


def gradcam_heatmaps(model: keras.Model, images, layer_names: list[str] | None = None,
                     n_layers: int = 4) -> tuple[list[str], list[list[np.ndarray]]]:
    """Grad-CAM of the embedding at each layer: returns (layer_names, heatmaps) with heatmaps[i][j] the h×w map of
    image i at layer j (the layer's own resolution), float32 in [0, 1] (1 at each map's maximum; all 0 when nothing
    has a positive influence).

    `images` are N×H×W×C model inputs. Each map is ReLU(Σ_k α_k A_k), A_k the layer's k-th feature map and α_k the mean
    over the map of ∂(Σ embedding)/∂A_k. `layer_names` defaults to the last `n_layers` Conv2D layers.
    """
    backend = keras.backend.backend()
    if backend not in GRADIENT_FUNCTIONS:
        raise NotImplementedError(f"Grad-CAM needs gradients of the {backend!r} backend; supported: "
                                  f"{', '.join(GRADIENT_FUNCTIONS)} (set KERAS_BACKEND)")
    layer_names = list(layer_names) if layer_names is not None else last_conv_layer_names(model, n_layers)
    known = {layer.name for layer in model.layers}
    unknown = [name for name in layer_names if name not in known]
    if unknown:
        raise ConfigError(f"Grad-CAM layers {unknown} are not in model {model.name!r}; its Conv2D layers: "
                          f"{last_conv_layer_names(model, n_layers=len(model.layers))}")
    images = np.asarray(images, dtype="float32")
    tapped, taps = _tapped_model(model, layer_names, batch_size=len(images))
    feature_maps, gradients = GRADIENT_FUNCTIONS[backend](tapped, taps, ops.convert_to_tensor(images))
    per_layer = []
    for feature_map, gradient in zip(feature_maps, gradients):
        feature_map = np.asarray(ops.convert_to_numpy(feature_map), dtype="float32")
        channel_weights = np.asarray(ops.convert_to_numpy(gradient), dtype="float32").mean(axis=(1, 2), keepdims=True)
        heatmap = np.maximum((feature_map * channel_weights).sum(axis=-1), 0.0)
        peak = heatmap.max(axis=(1, 2), keepdims=True)
        per_layer.append(np.divide(heatmap, peak, out=np.zeros_like(heatmap), where=peak > 0))
    return layer_names, [[maps[i] for maps in per_layer] for i in range(len(images))]
