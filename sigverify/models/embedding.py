"""Embedding model architectures: backbones cut at a named layer plus the shared head, the from-scratch Base CNN and
Base UNet, the pretrained baseline and the contrastive baseline. Every model takes preprocessed signatures (uint8 H×W)
and scales them itself (`sigverify.models.backbones.InputScaling`).

The shared head of every triplet model: Conv2D(64, 3×3, same, linear) → MaxPool(2) → Conv2D(32, 3×3, same, linear) →
MaxPool(2, valid) → Flatten → Dense(embedding_dim, linear) → L2 normalization (in float32). Valid pooling is what gives
the parameter counts of the post (Small ResNet50 9,271,520 at 224×224×3); the features at the cut therefore need at
least 4×4 pixels. A cut model is one flat functional graph (the backbone's layers up to the cut, then `head_*`
layers), so Grad-CAM and layer look-ups reach the backbone's convolutions directly. The "gap" head (not the post's)
replaces the convolutions and pooling by GlobalAveragePooling2D before the same Dense and normalization.

A multi-scale cut model (the post's "models designed to learn multiscale features") also takes the features of earlier
layers: each max-pooled to the cut's grid, as the head pools, and concatenated with the cut's along the channels
(`multiscale_features`: conv3_block4_add's 512 + conv4_block6_add's 1024 = 1,536), then the same head. It differs
from the single-scale model at the same cut only by the extra channels into `head_conv1`.

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

import keras
from keras import layers

from sigverify.errors import ConfigError
from sigverify.models.backbones import (
    HEAD_MIN_FEATURE_SIZE,
    KERAS_APPLICATIONS_MIN_SIZE,
    check_cut_layer,
    cut_layer_names,
    cut_layer_names_of,
    fits_head,
    get_backbone,
    image_hw,
    signature_input,
    summarize_names,
    too_small_error,
    validate_model_settings,
)
from sigverify.models.weights import build_backbone

BASE_CNN_DOWNSAMPLING = 8


HEAD_LAYER_PREFIXES = ("multiscale_", "head_", "embedding", "l2_normalize")  # the layers a cut model adds after the cut


def backbone_trainable_variables(model: keras.Model) -> list:
    """The trainable variables of a cut model's backbone layers (up to the cut), not of the head it adds."""
    return [variable for layer in model.layers if not layer.name.startswith(HEAD_LAYER_PREFIXES)
            for variable in layer.trainable_variables]


def _conv_head(features, embedding_dim: int, normalize: bool):
    x = layers.Conv2D(64, 3, padding="same", name="head_conv1")(features)
    x = layers.MaxPooling2D(2, name="head_pool1")(x)
    x = layers.Conv2D(32, 3, padding="same", name="head_conv2")(x)
    x = layers.MaxPooling2D(2, name="head_pool2")(x)
    x = layers.Flatten(name="head_flatten")(x)
    return _embedding_output(x, embedding_dim, normalize)


def _gap_head(features, embedding_dim: int, normalize: bool):
    x = layers.GlobalAveragePooling2D(name="head_gap")(features)
    return _embedding_output(x, embedding_dim, normalize)


# the names of sigverify.settings.HEADS (the module docstring describes both)
HEAD_BUILDERS = {"conv": _conv_head, "gap": _gap_head}


def _embedding_output(x, embedding_dim: int, normalize: bool):
    x = layers.Dense(embedding_dim, name="embedding")(x)
    if normalize:
        # float32 so that the unit norm stays exact under mixed precision
        x = layers.UnitNormalization(dtype="float32", name="l2_normalize")(x)
    return x


def build_embedding_model(
    backbone: str = "resnet50",
    cut_layer: str = "conv4_block6_add",
    image_size=224,
    weights: str | None = None,
    head: str = "conv",
    normalize: bool = True,
    embedding_dim: int = 256,
    name: str | None = None,
    multiscale_layers: tuple[str, ...] = (),
) -> keras.Model:
    """`backbone` cut at `cut_layer`, then the shared head: one flat functional graph from the image to the embedding.

    `weights` is anything resolve_weights accepts; a weights file is loaded into the whole backbone before the cut.
    `normalize=False` gives the NONORM variant (no L2 normalization). `head`: a HEAD_BUILDERS name ("conv": the post's).
    `multiscale_layers`: layers before the cut whose features join the cut's before the head (the multi-scale model).
    """
    if head not in HEAD_BUILDERS:
        raise ConfigError(f"head {head!r} is not known: expected one of {', '.join(HEAD_BUILDERS)}")
    get_backbone(backbone)
    height, width = image_hw(image_size)
    if min(height, width) < KERAS_APPLICATIONS_MIN_SIZE:
        validate_model_settings(backbone, cut_layer, (height, width))
    full_backbone = build_backbone(backbone, image_size, weights)
    names = cut_layer_names_of(full_backbone, backbone)
    check_cut_layer(backbone, cut_layer, names)
    features = full_backbone.get_layer(cut_layer).output
    if not fits_head(tuple(features.shape[1:])):
        raise too_small_error(backbone, cut_layer, height, width)
    if multiscale_layers:
        earlier = [_pooled_to_grid(full_backbone, backbone, cut_layer, layer_name, names)
                   for layer_name in multiscale_layers]
        features = layers.Concatenate(name="multiscale_features")([*earlier, features])
    embedding = HEAD_BUILDERS[head](features, embedding_dim, normalize)
    model_name = name or f"{backbone}_{cut_layer}" + ("" if normalize else "_nonorm")
    return keras.Model(full_backbone.input, embedding, name=model_name)


def _pooled_to_grid(full_backbone: keras.Model, backbone: str, cut_layer: str, layer_name: str, names: list[str]):
    """The features of `layer_name` (a layer before `cut_layer`) max-pooled to the cut's grid. "same" padding rounds an
    odd size up, as the backbone's strided convolutions do, so that the two grids match at every image size."""
    check_cut_layer(backbone, layer_name, names)
    if names.index(layer_name) >= names.index(cut_layer):
        raise ConfigError(f"multi-scale layer {layer_name}: not before the cut layer {cut_layer}; expected an earlier "
                          f"layer of {backbone}")
    features = full_backbone.get_layer(layer_name).output
    cut_grid = tuple(full_backbone.get_layer(cut_layer).output.shape[1:3])
    pool_size = tuple(-(-size // cut_size) for size, cut_size in zip(features.shape[1:3], cut_grid))
    pooled = layers.MaxPooling2D(pool_size, padding="same", name=f"multiscale_pool_{layer_name}")(features)
    if tuple(pooled.shape[1:3]) != cut_grid:
        raise ConfigError(f"multi-scale layer {layer_name}: its {features.shape[1]}×{features.shape[2]} features do not "
                          f"pool to the {cut_grid[0]}×{cut_grid[1]} grid of {cut_layer}")
    return pooled


def _conv_bn_relu(x, filters: int, name: str):
    x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def check_base_cnn_size(height: int, width: int) -> None:
    minimum = HEAD_MIN_FEATURE_SIZE * BASE_CNN_DOWNSAMPLING
    if min(height, width) < minimum:
        raise ConfigError(f"image size {height}×{width} is too small for base_cnn: expected at least "
                          f"{minimum}×{minimum} pixels")


def build_base_cnn(image_size, embedding_dim: int = 256, normalize: bool = True,
                   name: str = "base_cnn") -> keras.Model:
    """The from-scratch Base CNN (design in the module docstring): 1,696,320 parameters at 224×224×3."""
    check_base_cnn_size(*image_hw(image_size))
    image, x = signature_input(image_size, "unit")
    stages = ((32, 1), (64, 1), (128, 2), (256, 2))
    for stage, (filters, n_convs) in enumerate(stages, start=1):
        for conv in range(1, n_convs + 1):
            x = _conv_bn_relu(x, filters, f"stage{stage}_{conv}")
        if stage < len(stages):
            x = layers.MaxPooling2D(2, name=f"stage{stage}_pool")(x)
    return keras.Model(image, _conv_head(x, embedding_dim, normalize), name=name)


def build_base_unet(image_size, embedding_dim: int = 256, normalize: bool = True,
                    name: str = "base_unet") -> keras.Model:
    """The from-scratch Base UNet (design in the module docstring): 1,283,272 parameters at any image size."""
    image, x = signature_input(image_size, "unit")
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


def build_pretrained_baseline(backbone: str = "resnet50", image_size=224, weights: str | None = None,
                              name: str | None = None, cut_layer: str | None = None) -> keras.Model:
    """The whole backbone (or its layers up to `cut_layer`) and GlobalAveragePooling2D, used untrained (the post's
    "pretrained, no fine-tuning")."""
    full_backbone = build_backbone(backbone, image_size, weights)
    features = full_backbone.output if cut_layer is None else full_backbone.get_layer(cut_layer).output
    pooled = layers.GlobalAveragePooling2D(name="avg_pool")(features)
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
    image_size=224,
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
    features = build_pretrained_baseline(backbone, image_size, weights)
    features.trainable = False
    feature_dim = features.output.shape[-1]
    if head is None:
        head = build_contrastive_head(feature_dim, embedding_dim, dropout, l2)
    elif head.input.shape[-1] != feature_dim:
        raise ConfigError(f"contrastive head takes {head.input.shape[-1]} features but {backbone} gives {feature_dim}")
    signature = keras.Input(shape=image_hw(image_size), dtype="uint8", name="signature")
    return keras.Model(signature, head(features(signature)), name=f"contrastive_{backbone}")


def validate_pretrained_settings(backbone: str, image_size: int | tuple[int, int]) -> None:
    """The whole backbone with global pooling (pretrained and contrastive baselines) needs a known backbone and
    keras.applications' minimum image size."""
    get_backbone(backbone)
    height, width = image_hw(image_size)
    if min(height, width) < KERAS_APPLICATIONS_MIN_SIZE:
        raise ConfigError(f"image size {height}x{width} is too small for {backbone}: expected at least "
                          f"{KERAS_APPLICATIONS_MIN_SIZE}x{KERAS_APPLICATIONS_MIN_SIZE}")


def validate_unfreeze_layer(backbone: str, layer_name: str, cut_layer: str | None = None) -> None:
    """A ConfigError unless `layer_name` is a layer of `backbone` (at or before `cut_layer`, when given)."""
    names = cut_layer_names(get_backbone(backbone).name)
    if layer_name not in names:
        raise ConfigError(f"--unfreeze-from {layer_name}: not a layer of {backbone} to fine-tune from; expected one of "
                          f"{summarize_names(names)}")
    if cut_layer in names and names.index(layer_name) > names.index(cut_layer):
        raise ConfigError(f"--unfreeze-from {layer_name}: after the cut layer {cut_layer}; expected a layer of the "
                          "backbone up to the cut")


def unfreeze_backbone_from(backbone_model: keras.Model, backbone: str, layer_name: str) -> None:
    """Make `layer_name` and every later layer of a (frozen) backbone trainable, the earlier ones frozen."""
    validate_unfreeze_layer(backbone, layer_name)
    names = [layer.name for layer in backbone_model.layers]
    backbone_model.trainable = True
    start = names.index(layer_name)
    for position, layer in enumerate(backbone_model.layers):
        layer.trainable = position >= start


