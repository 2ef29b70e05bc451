"""Embedding model builders: ImageNet backbones cut at a named layer plus the shared head, the from-scratch Base CNN and
Base UNet, the contrastive baseline, and a catalogue (`MODEL_ZOO`) of the post's configurations with its reported results.

The shared head of every triplet model: Conv2D(64, 3×3, same, linear) → MaxPool(2) → Conv2D(32, 3×3, same, linear) →
MaxPool(2, valid) → Flatten → Dense(embedding_dim, linear) → L2 normalization (in float32). Valid pooling is what gives
the parameter counts of the post (Small ResNet50 9,271,520 at 224×224×3); the features at the cut therefore need at
least 4×4 pixels. A cut model is one flat functional graph (the backbone's layers up to the cut, then `head_*`
layers), so Grad-CAM and layer look-ups reach the backbone's convolutions directly.

Base CNN (trained from scratch, 1,696,320 parameters at 224×224×3; the post's was 1.68M): a VGG-like stack of 3×3
convolutions without bias, each followed by BatchNorm and ReLU, in four stages of 32, 64, 128 and 256 channels with 1,
1, 2 and 2 convolutions, a 2×2 max-pool after each of the first three stages (features at 1/8 of the image size, 28×28
at 224), then the shared head, so that it differs from the cut models only in its trunk. Like theirs, its count depends
on the image size through the head's Dense (1,327,680 at 64×64). Images of at least 32×32 pixels.

Base UNet (trained from scratch, 1,283,272 parameters at any image size; the post's was 1.29M): a U-Net encoder of three
levels (24, 48, 96 channels; two 3×3 conv-BatchNorm-ReLU each, 2×2 max-pool after each) to a 192-channel bottleneck at
1/8 resolution (two conv-BatchNorm-ReLU), and a decoder that upsamples ×2, concatenates the encoder features of the
same level (skip connection) and applies two conv-BatchNorm-ReLU (96, 48, 24 channels) back to full resolution. The
embedding comes from the bottleneck and every decoder level: global average and global max pooling of each (720
values) → Dense(embedding_dim, linear) → L2 normalization. Builds at any image size (odd sizes are cropped back after
upsampling).
"""

from __future__ import annotations

import difflib
import functools
import json
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras
from keras import layers

from sigverify.errors import ConfigError


@dataclass(frozen=True)
class Backbone:
    constructor: Callable[..., keras.Model]
    cut_layer_pattern: str  # names of the layers a model may be cut at
    cut_layer_kinds: str  # the same, in words, for error messages


BACKBONES = {
    "resnet50": Backbone(keras.applications.ResNet50, r"conv1_conv|conv\d_block\d+_(\d_conv|add|out)",
                         "block outputs (*_add before the ReLU, *_out after) and convolutions (*_conv)"),
    "vgg16": Backbone(keras.applications.VGG16, r"block\d_(conv\d|pool)", "convolutions and pools"),
}

KERAS_APPLICATIONS_MIN_SIZE = 32  # keras.applications refuses smaller images
HEAD_MIN_FEATURE_SIZE = 4  # the head's two valid 2×2 max-pools need at least 4×4 features
BASE_CNN_DOWNSAMPLING = 8


def _backbone(name: str) -> Backbone:
    if name not in BACKBONES:
        raise ConfigError(f"unknown backbone {name!r}: expected one of {sorted(BACKBONES)}")
    return BACKBONES[name]


def _image_hw(image_size: int | tuple[int, int] | tuple[int, int, int]) -> tuple[int, int]:
    if isinstance(image_size, int):
        return image_size, image_size
    return int(image_size[0]), int(image_size[1])


# Weights


WEIGHTS_CHOICES = "auto, imagenet, none, a pretraining run folder (make exp-pretrain), or the path to a weights file of the backbone"
# What a pretraining run folder (make exp-pretrain) holds: the backbone up to its cut layer, and what made it.
PRETRAINED_WEIGHTS_FILE = "backbone.weights.h5"
PRETRAINED_INFO_FILE = "backbone.json"  # method, method_name, backbone, cut_layer, image_size, source, ...


@functools.cache
def _imagenet_download_error(backbone: str) -> str | None:
    """None when the ImageNet weights of `backbone` can be loaded (downloaded or cached), else the short reason.

    Building the backbone is the only public way to fetch the file; cached so that one run tries once."""
    try:
        _backbone(backbone).constructor(include_top=False, weights="imagenet", input_shape=(None, None, 3))
    except Exception as error:  # noqa: BLE001 - Keras raises a bare Exception when the download fails
        return str(error).splitlines()[0][:200] if str(error) else type(error).__name__
    return None


def resolve_weights(requested: str | None, backbone: str) -> tuple[str | None, str]:
    """The `weights` argument for a keras.applications backbone and a description of what was used and why.

    `requested`: "auto" (ImageNet if it can be loaded, otherwise random initialisation with a warning), "imagenet"
    (a ConfigError when the weights cannot be downloaded), None/"none"/"random", a pretraining run folder (its
    backbone.weights.h5 goes into the layers up to the run's cut layer; the returned argument is the folder), or the
    path to a weights file of the backbone (a `.weights.h5` saved from the keras.applications model, or Keras's own
    ImageNet `.h5` file).
    """
    _backbone(backbone)
    choice = "none" if requested is None else str(requested)
    if choice.lower() in ("none", "random"):
        return None, "random initialisation (weights: none)"
    if choice.lower() == "auto":
        error = _imagenet_download_error(backbone)
        if error is None:
            return "imagenet", f"ImageNet weights of {backbone} (keras.applications, requested via auto)"
        description = f"random initialisation (imagenet requested via auto, but download failed: {error})"
        warnings.warn(f"{backbone}: {description}", stacklevel=2)
        return None, description
    if choice.lower() == "imagenet":
        error = _imagenet_download_error(backbone)
        if error is not None:
            raise ConfigError(f"weights: imagenet: the ImageNet weights of {backbone} could not be loaded ({error}); "
                              "use weights 'auto' (falls back to random), 'none', or a local weights file")
        return "imagenet", f"ImageNet weights of {backbone} (keras.applications)"
    path = Path(choice).expanduser()
    if path.is_dir() or path.name == PRETRAINED_WEIGHTS_FILE:
        folder = path if path.is_dir() else path.parent
        info = pretraining_run_info(folder, backbone)
        return str(folder), (f"pretrained by {info['method_name']} in {folder} ({backbone} up to "
                             f"{info['cut_layer']}; later layers random)")
    if not path.is_file():
        raise ConfigError(f"weights: file {str(path)!r} not found; expected {WEIGHTS_CHOICES}")
    return str(path), f"weights file {path}"


def pretraining_run_info(folder: str | Path, backbone: str) -> dict:
    """The backbone.json of a pretraining run folder, checked: a ConfigError unless the folder holds a pretrained
    `backbone` (its weights file and its record)."""
    folder = Path(folder)
    info_file, weights_file = folder / PRETRAINED_INFO_FILE, folder / PRETRAINED_WEIGHTS_FILE
    if not info_file.is_file() or not weights_file.is_file():
        raise ConfigError(f"weights: {folder} is not a finished pretraining run (no {PRETRAINED_INFO_FILE} and "
                          f"{PRETRAINED_WEIGHTS_FILE}); expected a folder written by make exp-pretrain, or "
                          f"{WEIGHTS_CHOICES}")
    info = json.loads(info_file.read_text())
    if info.get("backbone") != backbone:
        raise ConfigError(f"weights: {folder} pretrained a {info.get('backbone')} backbone; expected {backbone}")
    return info


def _build_backbone(backbone: str, input_shape: tuple, weights: str | None) -> keras.Model:
    """The whole keras.applications backbone (include_top=False) with `weights` (any form resolve_weights accepts)."""
    weights_argument, _ = resolve_weights(weights, backbone)
    if weights_argument is not None and Path(weights_argument).is_dir():
        model = _backbone(backbone).constructor(include_top=False, weights=None, input_shape=input_shape)
        _load_pretrained_layers(model, backbone, Path(weights_argument))
        return model
    try:
        return _backbone(backbone).constructor(include_top=False, weights=weights_argument, input_shape=input_shape)
    except (ValueError, OSError) as error:
        if weights_argument in (None, "imagenet"):
            raise
        reason = str(error).splitlines()[0]
        raise ConfigError(f"weights: file {weights_argument!r} could not be loaded into {backbone}: {reason}") from error


def _load_pretrained_layers(model: keras.Model, backbone: str, folder: Path) -> None:
    """A pretraining run's weights into `model`'s layers up to the run's cut layer (the layers it trained); Keras
    matches them by layer order, the same in every model cut at that layer."""
    info = pretraining_run_info(folder, backbone)
    up_to_cut = keras.Model(model.input, model.get_layer(info["cut_layer"]).output)
    try:
        up_to_cut.load_weights(folder / PRETRAINED_WEIGHTS_FILE)
    except (ValueError, OSError) as error:
        raise ConfigError(f"weights: {folder / PRETRAINED_WEIGHTS_FILE} could not be loaded into {backbone} up to "
                          f"{info['cut_layer']}: {str(error).splitlines()[0]}") from error


def build_cut_backbone(backbone: str = "resnet50", cut_layer: str = "conv4_block6_add",
                       input_shape: tuple[int, int, int] = (224, 224, 3), weights: str | None = None,
                       name: str | None = None) -> keras.Model:
    """The layers of `backbone` up to `cut_layer` alone: what `build_embedding_model` puts before its head, and what
    pretraining trains and saves (its weights load into any model cut at or after that layer)."""
    full_backbone = _build_backbone(backbone, tuple(input_shape), weights)
    _check_cut_layer(backbone, cut_layer, _cut_layer_names_of(full_backbone, backbone))
    return keras.Model(full_backbone.input, full_backbone.get_layer(cut_layer).output,
                       name=name or f"{backbone}_to_{cut_layer}")


# Cut layers and image sizes


@functools.lru_cache(maxsize=1)
def _symbolic_backbone(backbone: str) -> keras.Model:
    """The backbone with a free image size and random weights, kept on the CPU: used only to read layer names and shapes."""
    with keras.device("cpu"):
        return _backbone(backbone).constructor(include_top=False, weights=None, input_shape=(None, None, 3))


def _cut_layer_names_of(model: keras.Model, backbone: str) -> list[str]:
    pattern = re.compile(_backbone(backbone).cut_layer_pattern)
    return [layer.name for layer in model.layers if pattern.fullmatch(layer.name)]


def cut_layer_names(backbone: str) -> list[str]:
    """Names of the layers `backbone` may be cut at, in graph order."""
    return _cut_layer_names_of(_symbolic_backbone(backbone), backbone)


def _number_span(numbers: list[int]) -> str:
    if len(numbers) == 1:
        return str(numbers[0])
    if numbers == list(range(numbers[0], numbers[-1] + 1)):
        return f"{numbers[0]}-{numbers[-1]}"
    return ",".join(map(str, numbers))


def _braced(text: str) -> str:
    return "{" + text + "}" if "," in text or "-" in text else text


def _summarize_names(names: list[str]) -> str:
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


def _check_cut_layer(backbone: str, cut_layer: str, names: list[str]) -> None:
    if cut_layer in names:
        return
    close = difflib.get_close_matches(cut_layer, names, n=3)
    hint = f" Closest: {', '.join(close)}." if close else ""
    raise ConfigError(f"cut layer {cut_layer!r} is not a layer of {backbone} a model can be cut at.{hint} Valid cut "
                      f"layers ({_backbone(backbone).cut_layer_kinds}): {_summarize_names(names)}")


def _cut_feature_shape(backbone: str, cut_layer: str, height: int, width: int) -> tuple[int, int, int] | None:
    """(h, w, channels) of the features at the cut for an image of height×width; None when the backbone cannot run."""
    model = _symbolic_backbone(backbone)
    cut = keras.Model(model.input, model.get_layer(cut_layer).output)
    try:
        return tuple(cut.compute_output_spec(keras.KerasTensor((1, height, width, 3))).shape[1:])
    except ValueError:  # a pool or convolution left with nothing
        return None


def _fits_head(feature_shape: tuple | None) -> bool:
    return feature_shape is not None and min(feature_shape[:2]) >= HEAD_MIN_FEATURE_SIZE


@functools.cache
def minimum_image_size(backbone: str, cut_layer: str) -> int:
    """The smallest square image side for which `backbone` cut at `cut_layer` still feeds the head 4×4 features."""
    low, high = KERAS_APPLICATIONS_MIN_SIZE, KERAS_APPLICATIONS_MIN_SIZE
    while not _fits_head(_cut_feature_shape(backbone, cut_layer, high, high)):
        low, high = high, high * 2
    while low < high:  # the feature size only grows with the image size
        middle = (low + high) // 2
        if _fits_head(_cut_feature_shape(backbone, cut_layer, middle, middle)):
            high = middle
        else:
            low = middle + 1
    return high


def _too_small_error(backbone: str, cut_layer: str, height: int, width: int) -> ConfigError:
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
    _backbone(backbone)
    height, width = _image_hw(image_size)
    _check_cut_layer(backbone, cut_layer, cut_layer_names(backbone))
    if min(height, width) < KERAS_APPLICATIONS_MIN_SIZE:
        raise _too_small_error(backbone, cut_layer, height, width)
    feature_shape = _cut_feature_shape(backbone, cut_layer, height, width)
    if not _fits_head(feature_shape):
        raise _too_small_error(backbone, cut_layer, height, width)
    return feature_shape


# The triplet models


def _embedding_head(features, embedding_dim: int, normalize: bool):
    x = layers.Conv2D(64, 3, padding="same", name="head_conv1")(features)
    x = layers.MaxPooling2D(2, name="head_pool1")(x)
    x = layers.Conv2D(32, 3, padding="same", name="head_conv2")(x)
    x = layers.MaxPooling2D(2, name="head_pool2")(x)
    x = layers.Flatten(name="head_flatten")(x)
    return _embedding_output(x, embedding_dim, normalize)


def _embedding_output(x, embedding_dim: int, normalize: bool):
    x = layers.Dense(embedding_dim, name="embedding")(x)
    if normalize:
        # float32 so that the unit norm stays exact under mixed precision
        x = layers.UnitNormalization(dtype="float32", name="l2_normalize")(x)
    return x


def build_embedding_model(
    backbone: str = "resnet50",
    cut_layer: str = "conv4_block6_add",
    input_shape: tuple[int, int, int] = (224, 224, 3),
    weights: str | None = None,
    head: str = "conv",
    normalize: bool = True,
    embedding_dim: int = 256,
    name: str | None = None,
) -> keras.Model:
    """`backbone` cut at `cut_layer`, then the shared head: one flat functional graph from the image to the embedding.

    `weights` is anything resolve_weights accepts; a weights file is loaded into the whole backbone before the cut.
    `normalize=False` gives the NONORM variant (no L2 normalization). `head` names the head; "conv" is the only one.
    """
    if head != "conv":
        raise ConfigError(f"head {head!r} is not known: expected 'conv' (the post's head)")
    _backbone(backbone)
    height, width = _image_hw(input_shape)
    if min(height, width) < KERAS_APPLICATIONS_MIN_SIZE:
        validate_model_settings(backbone, cut_layer, (height, width))
    full_backbone = _build_backbone(backbone, tuple(input_shape), weights)
    _check_cut_layer(backbone, cut_layer, _cut_layer_names_of(full_backbone, backbone))
    features = full_backbone.get_layer(cut_layer).output
    if not _fits_head(tuple(features.shape[1:])):
        raise _too_small_error(backbone, cut_layer, height, width)
    embedding = _embedding_head(features, embedding_dim, normalize)
    model_name = name or f"{backbone}_{cut_layer}" + ("" if normalize else "_nonorm")
    return keras.Model(full_backbone.input, embedding, name=model_name)


def _conv_bn_relu(x, filters: int, name: str):
    x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def _check_base_cnn_size(height: int, width: int) -> None:
    minimum = HEAD_MIN_FEATURE_SIZE * BASE_CNN_DOWNSAMPLING
    if min(height, width) < minimum:
        raise ConfigError(f"image size {height}×{width} is too small for base_cnn: expected at least "
                          f"{minimum}×{minimum} pixels")


def build_base_cnn(input_shape: tuple[int, int, int], embedding_dim: int = 256, normalize: bool = True,
                   name: str = "base_cnn") -> keras.Model:
    """The from-scratch Base CNN (design in the module docstring): 1,696,320 parameters at 224×224×3."""
    _check_base_cnn_size(*_image_hw(input_shape))
    image = keras.Input(shape=tuple(input_shape), name="image")
    x = image
    stages = ((32, 1), (64, 1), (128, 2), (256, 2))
    for stage, (filters, n_convs) in enumerate(stages, start=1):
        for conv in range(1, n_convs + 1):
            x = _conv_bn_relu(x, filters, f"stage{stage}_{conv}")
        if stage < len(stages):
            x = layers.MaxPooling2D(2, name=f"stage{stage}_pool")(x)
    return keras.Model(image, _embedding_head(x, embedding_dim, normalize), name=name)


def build_base_unet(input_shape: tuple[int, int, int], embedding_dim: int = 256, normalize: bool = True,
                    name: str = "base_unet") -> keras.Model:
    """The from-scratch Base UNet (design in the module docstring): 1,283,272 parameters at any image size."""
    image = keras.Input(shape=tuple(input_shape), name="image")
    x = image
    encoder_widths, bottleneck_width = (24, 48, 96), 192
    skips = []
    for level, filters in enumerate(encoder_widths, start=1):
        x = _conv_bn_relu(_conv_bn_relu(x, filters, f"encoder{level}_1"), filters, f"encoder{level}_2")
        skips.append(x)
        x = layers.MaxPooling2D(2, padding="same", name=f"encoder{level}_pool")(x)
    x = _conv_bn_relu(_conv_bn_relu(x, bottleneck_width, "bottleneck_1"), bottleneck_width, "bottleneck_2")
    pooled = [layers.GlobalAveragePooling2D(name="bottleneck_avg")(x), layers.GlobalMaxPooling2D(name="bottleneck_max")(x)]
    for level, filters, skip in zip(range(len(encoder_widths), 0, -1), reversed(encoder_widths), reversed(skips)):
        x = layers.UpSampling2D(2, name=f"decoder{level}_up")(x)
        extra_height, extra_width = x.shape[1] - skip.shape[1], x.shape[2] - skip.shape[2]
        if extra_height or extra_width:  # an odd size was rounded up by the "same" max-pool
            x = layers.Cropping2D(((0, extra_height), (0, extra_width)), name=f"decoder{level}_crop")(x)
        x = layers.Concatenate(name=f"decoder{level}_skip")([x, skip])
        x = _conv_bn_relu(_conv_bn_relu(x, filters, f"decoder{level}_1"), filters, f"decoder{level}_2")
        pooled += [layers.GlobalAveragePooling2D(name=f"decoder{level}_avg")(x),
                   layers.GlobalMaxPooling2D(name=f"decoder{level}_max")(x)]
    x = layers.Concatenate(name="pooled_features")(pooled)
    return keras.Model(image, _embedding_output(x, embedding_dim, normalize), name=name)


# The pretrained and contrastive baselines


def build_pretrained_baseline(backbone: str = "resnet50", input_shape: tuple[int, int, int] = (224, 224, 3),
                              weights: str | None = None, name: str | None = None) -> keras.Model:
    """The whole backbone and GlobalAveragePooling2D, used untrained (the post's "pretrained, no fine-tuning")."""
    full_backbone = _build_backbone(backbone, tuple(input_shape), weights)
    pooled = layers.GlobalAveragePooling2D(name="avg_pool")(full_backbone.output)
    return keras.Model(full_backbone.input, pooled, name=name or f"pretrained_{backbone}")


def build_contrastive_head(feature_dim: int, embedding_dim: int = 128, dropout: float = 0.4, l2: float = 0.01,
                           hidden_units: int = 128, name: str = "contrastive_head") -> keras.Model:
    """The trainable part of the contrastive baseline, from pooled backbone features to the L2-normalized embedding:
    Dense(hidden_units, relu, L2 `l2`) → Dropout → BatchNorm → Dense(embedding_dim) → L2 normalization."""
    features = keras.Input(shape=(feature_dim,), name="pooled_features")
    x = layers.Dense(hidden_units, activation="relu", kernel_regularizer=keras.regularizers.L2(l2), name="dense_relu")(
        features
    )
    x = layers.Dropout(dropout, name="dropout")(x)
    x = layers.BatchNormalization(name="batch_norm")(x)
    return keras.Model(features, _embedding_output(x, embedding_dim, normalize=True), name=name)


def build_contrastive_embedding_model(
    backbone: str = "resnet50",
    input_shape: tuple[int, int, int] = (224, 224, 3),
    weights: str | None = None,
    embedding_dim: int = 128,
    dropout: float = 0.4,
    l2: float = 0.01,
    head: keras.Model | None = None,
) -> keras.Model:
    """The contrastive baseline's embedding: frozen build_pretrained_baseline → contrastive head.

    Pass `head` (from build_contrastive_head, e.g. trained on cached pooled features) to reuse it: the model then shares
    its layers and weights. Without it a new head is built; `model.get_layer("contrastive_head")` returns it.
    """
    features = build_pretrained_baseline(backbone, input_shape, weights)
    features.trainable = False
    feature_dim = features.output.shape[-1]
    if head is None:
        head = build_contrastive_head(feature_dim, embedding_dim, dropout, l2)
    elif head.input.shape[-1] != feature_dim:
        raise ConfigError(f"contrastive head takes {head.input.shape[-1]} features but {backbone} gives {feature_dim}")
    image = keras.Input(shape=tuple(input_shape), name="image")
    return keras.Model(image, head(features(image)), name=f"contrastive_{backbone}")


def validate_pretrained_settings(backbone: str, image_size: int | tuple[int, int]) -> None:
    """The whole backbone with global pooling (pretrained and contrastive baselines) needs a known backbone and
    keras.applications' minimum image size."""
    _backbone(backbone)
    height, width = _image_hw(image_size)
    if min(height, width) < KERAS_APPLICATIONS_MIN_SIZE:
        raise ConfigError(f"image size {height}x{width} is too small for {backbone}: expected at least "
                          f"{KERAS_APPLICATIONS_MIN_SIZE}x{KERAS_APPLICATIONS_MIN_SIZE}")


def validate_unfreeze_layer(backbone: str, layer_name: str) -> None:
    names = cut_layer_names(_backbone(backbone).name)
    if layer_name not in names:
        raise ConfigError(f"--unfreeze-from {layer_name}: not a layer of {backbone} to fine-tune from; expected one of "
                          f"{_summarize_names(names)}")


def unfreeze_backbone_from(backbone_model: keras.Model, backbone: str, layer_name: str) -> None:
    """Make `layer_name` and every later layer of a (frozen) backbone trainable, the earlier ones frozen."""
    validate_unfreeze_layer(backbone, layer_name)
    names = [layer.name for layer in backbone_model.layers]
    backbone_model.trainable = True
    start = names.index(layer_name)
    for position, layer in enumerate(backbone_model.layers):
        layer.trainable = position >= start


# The catalogue


@dataclass(frozen=True)
class ZooModel:
    kind: str  # "cut" (backbone cut + shared head), "base_cnn", "base_unet", "pretrained" or "contrastive"
    description: str
    backbone: str | None = None
    cut_layer: str | None = None
    normalize: bool = True
    reported_max_accuracy: float | None = None  # the post's figure on skilled forgeries, as a fraction
    reported_eer: float | None = None


MODEL_ZOO = {
    "small_resnet50": ZooModel("cut", "Small ResNet50 + skip", "resnet50", "conv4_block6_add",
                               reported_max_accuracy=0.818, reported_eer=0.184),
    "small_resnet50_noskip": ZooModel("cut", "Small ResNet50 without skip", "resnet50", "conv4_block6_3_conv",
                                      reported_max_accuracy=0.766, reported_eer=0.236),
    "smaller_resnet50": ZooModel("cut", "Smaller ResNet50 + skip", "resnet50", "conv3_block4_add",
                                 reported_max_accuracy=0.761, reported_eer=0.24),
    "resnet50": ZooModel("cut", "Full ResNet50", "resnet50", "conv5_block3_out",
                         reported_max_accuracy=0.764, reported_eer=0.242),
    "vgg16": ZooModel("cut", "VGG16", "vgg16", "block5_pool", reported_max_accuracy=0.674, reported_eer=0.328),
    "small_vgg16": ZooModel("cut", "Small VGG16", "vgg16", "block3_conv1", reported_max_accuracy=0.721),
    "small_resnet50_nonorm": ZooModel("cut", "Small ResNet50 + skip, NONORM", "resnet50", "conv4_block6_add",
                                      normalize=False),
    "base_cnn": ZooModel("base_cnn", "Base CNN (from scratch)", reported_max_accuracy=0.680, reported_eer=0.327),
    "base_cnn_nonorm": ZooModel("base_cnn", "Base CNN (from scratch), NONORM", normalize=False),
    "base_unet": ZooModel("base_unet", "Base UNet (from scratch)", reported_max_accuracy=0.715, reported_eer=0.293),
    "pretrained_vgg16": ZooModel("pretrained", "pretrained VGG16, no fine-tuning", "vgg16",
                                 reported_max_accuracy=0.743, reported_eer=0.268),
    "pretrained_resnet50": ZooModel("pretrained", "pretrained ResNet50, no fine-tuning", "resnet50",
                                    reported_max_accuracy=0.693, reported_eer=0.315),
    "contrastive_resnet50": ZooModel("contrastive", "contrastive loss, frozen ResNet50", "resnet50",
                                     reported_max_accuracy=0.728),
}


def _zoo_entry(name: str) -> ZooModel:
    if name not in MODEL_ZOO:
        raise ConfigError(f"unknown model {name!r}: expected one of {', '.join(MODEL_ZOO)}")
    return MODEL_ZOO[name]


def validate_zoo_model(name: str, image_size: int | tuple[int, int]) -> None:
    """validate_model_settings for a MODEL_ZOO entry: a ConfigError for an unknown name or an image too small."""
    entry = _zoo_entry(name)
    height, width = _image_hw(image_size)
    if entry.kind == "cut":
        validate_model_settings(entry.backbone, entry.cut_layer, (height, width))
    elif entry.kind == "base_cnn":
        _check_base_cnn_size(height, width)
    elif entry.kind in ("pretrained", "contrastive") and min(height, width) < KERAS_APPLICATIONS_MIN_SIZE:
        raise ConfigError(f"image size {height}×{width} is too small for {name}: expected at least "
                          f"{KERAS_APPLICATIONS_MIN_SIZE}×{KERAS_APPLICATIONS_MIN_SIZE}")


def build_zoo_model(name: str, input_shape: tuple[int, int, int] = (224, 224, 3), weights: str | None = None) -> keras.Model:
    """The MODEL_ZOO entry `name` as a model. `weights` applies to the backbone; the from-scratch models (base_cnn,
    base_unet) accept only None, "none" or "auto" (always random)."""
    entry = _zoo_entry(name)
    if entry.kind in ("base_cnn", "base_unet"):
        if weights is not None and str(weights).lower() not in ("none", "random", "auto"):
            raise ConfigError(f"weights: {name} is trained from scratch and has no {weights!r} weights; use none")
        builder = build_base_cnn if entry.kind == "base_cnn" else build_base_unet
        return builder(input_shape, normalize=entry.normalize)
    if entry.kind == "cut":
        return build_embedding_model(entry.backbone, entry.cut_layer, input_shape, weights, normalize=entry.normalize,
                                     name=name)
    if entry.kind == "pretrained":
        return build_pretrained_baseline(entry.backbone, input_shape, weights, name=name)
    return build_contrastive_embedding_model(entry.backbone, input_shape, weights)
