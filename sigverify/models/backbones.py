"""keras.applications backbones as this suite uses them: the input scaling that turns a preprocessed signature into
backbone input inside the model, the layers a backbone may be cut at, and the image sizes a cut needs.

Every model of the suite takes preprocessed signatures as they come out of `sigverify.data.preprocess`: uint8 H×W, ink
0, paper 255. Its first layer, `InputScaling`, does what `keras.applications.<backbone>.preprocess_input` would do
to the grey image replicated to three channels (as keras-io puts `preprocess_input` inside the model), so that feeds,
evaluation and verification never need to know which backbone they feed.
"""

from __future__ import annotations

import difflib
import functools
import re
from collections.abc import Callable
from dataclasses import dataclass

import keras
import numpy as np
from keras import layers

from sigverify.errors import ConfigError

# keras.applications' "caffe" mode (ResNet50, VGG16): BGR channel means subtracted, no scaling.
CAFFE_BGR_MEAN = np.array([103.939, 116.779, 123.68], dtype=np.float32)
INPUT_SCALINGS = ("caffe", "unit")  # unit: [0, 1], the from-scratch models


@dataclass(frozen=True)
class Backbone:
    name: str
    constructor: Callable[..., keras.Model]
    cut_layer_pattern: str  # names of the layers a model may be cut at
    cut_layer_kinds: str  # the same, in words, for error messages
    input_scaling: str = "caffe"


BACKBONES = {
    "resnet50": Backbone("resnet50", keras.applications.ResNet50, r"conv1_conv|conv\d_block\d+_(\d_conv|add|out)",
                         "block outputs (*_add before the ReLU, *_out after) and convolutions (*_conv)"),
    "vgg16": Backbone("vgg16", keras.applications.VGG16, r"block\d_(conv\d|pool)", "convolutions and pools"),
}

KERAS_APPLICATIONS_MIN_SIZE = 32  # keras.applications refuses smaller images
HEAD_MIN_FEATURE_SIZE = 4  # the head's two valid 2×2 max-pools need at least 4×4 features


def get_backbone(name: str) -> Backbone:
    if name not in BACKBONES:
        raise ConfigError(f"unknown backbone {name!r}: expected one of {sorted(BACKBONES)}")
    return BACKBONES[name]


def image_hw(image_size: int | tuple[int, int] | tuple[int, ...]) -> tuple[int, int]:
    if isinstance(image_size, int):
        return image_size, image_size
    return int(image_size[0]), int(image_size[1])


# Input scaling


@keras.saving.register_keras_serializable(package="sigverify")
class InputScaling(layers.Layer):
    """uint8 B×H×W grey signatures → float32 B×H×W×3 backbone input: "caffe" subtracts keras.applications' BGR means
    from the grey value in each channel, "unit" divides by 255. Computed in float32 under any precision policy, so the
    numbers are those of `to_backbone_input`."""

    def __init__(self, scaling: str = "caffe", **kwargs):
        kwargs["dtype"] = "float32"
        super().__init__(**kwargs)
        if scaling not in INPUT_SCALINGS:
            raise ConfigError(f"input scaling {scaling!r}: expected one of {', '.join(INPUT_SCALINGS)}")
        self.scaling = scaling

    def call(self, images):
        grey = keras.ops.expand_dims(keras.ops.cast(images, "float32"), -1)
        rgb = keras.ops.repeat(grey, 3, axis=-1)
        if self.scaling == "caffe":
            return rgb - keras.ops.convert_to_tensor(CAFFE_BGR_MEAN)
        return rgb / 255.0

    def compute_output_shape(self, input_shape):
        return (*input_shape, 3)

    def get_config(self):
        return {**super().get_config(), "scaling": self.scaling}


def to_backbone_input(images: np.ndarray, scaling: str = "caffe") -> np.ndarray:
    """What `InputScaling(scaling)` computes, in NumPy: the reference its test compares with, and the input of model
    files saved before the scaling moved into the models (they take float32 N×H×W×3)."""
    if scaling not in INPUT_SCALINGS:
        raise ConfigError(f"input scaling {scaling!r}: expected one of {', '.join(INPUT_SCALINGS)}")
    rgb = np.repeat(images.astype(np.float32)[..., None], 3, axis=-1)
    return rgb - CAFFE_BGR_MEAN if scaling == "caffe" else rgb / 255.0


def signature_input(image_size, scaling: str, name: str = "signature"):
    """(the model's input: uint8 B×H×W, its scaled three-channel tensor)."""
    height, width = image_hw(image_size)
    signature = keras.Input(shape=(height, width), dtype="uint8", name=name)
    return signature, InputScaling(scaling, name="input_scaling")(signature)


# Cut layers and image sizes


@functools.lru_cache(maxsize=1)
def _symbolic_backbone(backbone: str) -> keras.Model:
    """The backbone with a free image size and random weights, kept on the CPU: used only to read layer names and shapes."""
    with keras.device("cpu"):
        return get_backbone(backbone).constructor(include_top=False, weights=None, input_shape=(None, None, 3))


def cut_layer_names_of(model: keras.Model, backbone: str) -> list[str]:
    pattern = re.compile(get_backbone(backbone).cut_layer_pattern)
    return [layer.name for layer in model.layers if pattern.fullmatch(layer.name)]


def cut_layer_names(backbone: str) -> list[str]:
    """Names of the layers `backbone` may be cut at, in graph order."""
    return cut_layer_names_of(_symbolic_backbone(backbone), backbone)


def _number_span(numbers: list[int]) -> str:
    if len(numbers) == 1:
        return str(numbers[0])
    if numbers == list(range(numbers[0], numbers[-1] + 1)):
        return f"{numbers[0]}-{numbers[-1]}"
    return ",".join(map(str, numbers))


def _braced(text: str) -> str:
    return "{" + text + "}" if "," in text or "-" in text else text


def summarize_names(names: list[str]) -> str:
    """Group names by block so that the list stays short enough to read: conv4_block1_add, …, conv4_block6_out →
    'conv4_block{1-6}_{add,out}'; VGG16's block1_conv1, …, block5_pool → 'block{1-5}_{conv1,conv2,pool}'."""
    groups: dict[str, dict[str, list[int]]] = {}  # "conv4_block" -> {"add": [1, ..., 6], ...}; "conv1_conv" -> {}
    for name in names:
        block = re.search(r"(?<=block)(\d+)_", name)
        if block is None:
            groups.setdefault(name, {})
        else:
            tails = groups.setdefault(name[: block.start()], {})
            tails.setdefault(name[block.end():], []).append(int(block.group(1)))
    parts = []
    for head, tails in groups.items():
        if not tails:
            parts.append(head)
        by_span: dict[str, list[str]] = {}
        for tail, numbers in tails.items():
            by_span.setdefault(_number_span(numbers), []).append(tail)
        parts += [f"{head}{_braced(span)}_{_braced(','.join(tail_names))}" for span, tail_names in by_span.items()]
    return ", ".join(parts)


def check_cut_layer(backbone: str, cut_layer: str, names: list[str]) -> None:
    if cut_layer in names:
        return
    close = difflib.get_close_matches(cut_layer, names, n=3)
    hint = f" Closest: {', '.join(close)}." if close else ""
    raise ConfigError(f"cut layer {cut_layer!r} is not a layer of {backbone} a model can be cut at.{hint} Valid cut "
                      f"layers ({get_backbone(backbone).cut_layer_kinds}): {summarize_names(names)}")


def _cut_feature_shape(backbone: str, cut_layer: str, height: int, width: int) -> tuple[int, int, int] | None:
    """(h, w, channels) of the features at the cut for an image of height×width; None when the backbone cannot run."""
    model = _symbolic_backbone(backbone)
    cut = keras.Model(model.input, model.get_layer(cut_layer).output)
    try:
        return tuple(cut.compute_output_spec(keras.KerasTensor((1, height, width, 3))).shape[1:])
    except ValueError:  # a pool or convolution left with nothing
        return None


def fits_head(feature_shape: tuple | None) -> bool:
    return feature_shape is not None and min(feature_shape[:2]) >= HEAD_MIN_FEATURE_SIZE


@functools.cache
def minimum_image_size(backbone: str, cut_layer: str) -> int:
    """The smallest square image side for which `backbone` cut at `cut_layer` still feeds the head 4×4 features."""
    low, high = KERAS_APPLICATIONS_MIN_SIZE, KERAS_APPLICATIONS_MIN_SIZE
    while not fits_head(_cut_feature_shape(backbone, cut_layer, high, high)):
        low, high = high, high * 2
    while low < high:  # the feature size only grows with the image size
        middle = (low + high) // 2
        if fits_head(_cut_feature_shape(backbone, cut_layer, middle, middle)):
            high = middle
        else:
            low = middle + 1
    return high


def too_small_error(backbone: str, cut_layer: str, height: int, width: int) -> ConfigError:
    minimum = minimum_image_size(backbone, cut_layer)
    return ConfigError(f"image size {height}×{width} is too small for {backbone} cut at {cut_layer}: the head needs "
                       f"at least {HEAD_MIN_FEATURE_SIZE}×{HEAD_MIN_FEATURE_SIZE} features at the cut, which takes "
                       f"images of at least {minimum}×{minimum} pixels")


def validate_model_settings(backbone: str, cut_layer: str, image_size: int | tuple[int, int]) -> tuple[int, int, int]:
    """Check a backbone, cut layer and image size before any work; returns the (h, w, channels) of the features at the cut.

    Raises ConfigError for an unknown backbone, a layer the backbone cannot be cut at (the message lists the valid
    ones), or an image too small for the cut (the message gives the minimum size). Costs one backbone construction
    with random weights per process (about 0.7 s for ResNet50, 0.2 s for VGG16 on a CPU), no weights file.
    """
    get_backbone(backbone)
    height, width = image_hw(image_size)
    check_cut_layer(backbone, cut_layer, cut_layer_names(backbone))
    if min(height, width) < KERAS_APPLICATIONS_MIN_SIZE:
        raise too_small_error(backbone, cut_layer, height, width)
    feature_shape = _cut_feature_shape(backbone, cut_layer, height, width)
    if not fits_head(feature_shape):
        raise too_small_error(backbone, cut_layer, height, width)
    return feature_shape


