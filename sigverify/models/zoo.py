"""The post's models as a catalogue (`MODEL_ZOO`): each configuration of its Table 1 with the figures it reported on
CEDAR's skilled forgeries, and the model a run's settings describe."""

from __future__ import annotations

from dataclasses import dataclass

import keras

from sigverify.errors import ConfigError
from sigverify.models.backbones import KERAS_APPLICATIONS_MIN_SIZE, image_hw, validate_model_settings
from sigverify.models.embedding import (
    backbone_trainable_variables,
    build_base_cnn,
    build_base_unet,
    build_contrastive_embedding_model,
    build_embedding_model,
    build_pretrained_baseline,
    check_base_cnn_size,
    unfreeze_backbone_from,
    validate_unfreeze_layer,
)
from sigverify.models.weights import resolve_weights


@dataclass(frozen=True)
class ZooModel:
    kind: str  # "cut" (backbone cut + shared head), "base_cnn", "base_unet", "pretrained" or "contrastive"
    description: str
    backbone: str | None = None
    cut_layer: str | None = None
    normalize: bool = True
    reported_max_accuracy: float | None = None  # the post's figure on skilled forgeries, as a fraction
    reported_eer: float | None = None
    weights: str | None = None  # a start of its own, whatever --weights says (the shipped signature weights)
    multiscale_layers: tuple[str, ...] = ()  # "cut": earlier layers whose features join the cut's before the head


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
    # not in the post (its suggestion of multi-scale features): no figure to compare with
    "multiscale_resnet50": ZooModel("cut", "Multi-scale ResNet50 (conv3_block4_add + conv4_block6_add)", "resnet50",
                                    "conv4_block6_add", multiscale_layers=("conv3_block4_add",)),
    "base_cnn": ZooModel("base_cnn", "Base CNN (from scratch)", reported_max_accuracy=0.680, reported_eer=0.327),
    "base_cnn_nonorm": ZooModel("base_cnn", "Base CNN (from scratch), NONORM", normalize=False),
    "base_unet": ZooModel("base_unet", "Base UNet (from scratch)", reported_max_accuracy=0.715, reported_eer=0.293),
    "pretrained_vgg16": ZooModel("pretrained", "pretrained VGG16, no fine-tuning", "vgg16",
                                 reported_max_accuracy=0.743, reported_eer=0.268),
    "pretrained_resnet50": ZooModel("pretrained", "pretrained ResNet50, no fine-tuning", "resnet50",
                                    reported_max_accuracy=0.693, reported_eer=0.315),
    "signatures_resnet50": ZooModel("pretrained", "signature-pretrained ResNet50 + GAP, no fine-tuning", "resnet50",
                                    "conv4_block6_add", weights="signatures"),
    "signatures_vgg16": ZooModel("pretrained", "signature-pretrained VGG16 up to block3_conv1 + GAP, no fine-tuning",
                                 "vgg16", "block3_conv1", weights="signatures"),
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
    height, width = image_hw(image_size)
    if entry.kind == "cut":
        validate_model_settings(entry.backbone, entry.cut_layer, (height, width))
    elif entry.kind == "base_cnn":
        check_base_cnn_size(height, width)
    elif entry.kind in ("pretrained", "contrastive") and min(height, width) < KERAS_APPLICATIONS_MIN_SIZE:
        raise ConfigError(f"image size {height}×{width} is too small for {name}: expected at least "
                          f"{KERAS_APPLICATIONS_MIN_SIZE}×{KERAS_APPLICATIONS_MIN_SIZE}")


def build_zoo_model(name: str, image_size=224, weights: str | None = None) -> keras.Model:
    """The MODEL_ZOO entry `name` as a model. `weights` applies to the backbone; the from-scratch models (base_cnn,
    base_unet) accept only None, "none" or "auto" (always random)."""
    entry = _zoo_entry(name)
    if entry.kind in ("base_cnn", "base_unet"):
        if weights is not None and str(weights).lower() not in ("none", "random", "auto"):
            raise ConfigError(f"weights: {name} is trained from scratch and has no {weights!r} weights; use none")
        builder = build_base_cnn if entry.kind == "base_cnn" else build_base_unet
        return builder(image_size, normalize=entry.normalize)
    if entry.kind == "cut":
        return build_embedding_model(entry.backbone, entry.cut_layer, image_size, weights, normalize=entry.normalize,
                                     name=name, multiscale_layers=entry.multiscale_layers)
    if entry.kind == "pretrained":
        return build_pretrained_baseline(entry.backbone, image_size, entry.weights or weights, name=name,
                                         cut_layer=entry.cut_layer)
    return build_contrastive_embedding_model(entry.backbone, image_size, weights)


def embedding_model_from_settings(model_settings, image_size: int) -> tuple[keras.Model, str, str, list]:
    """(model, weights description, model description, the variables of its pretrained layers: none from a random
    start) of a run's model settings (`sigverify.settings.ModelSettings`): the backbone cut at `cut_layer` + the conv
    head, L2 normalization unless `normalize` is off."""
    weights, weights_description = resolve_weights(model_settings.weights, model_settings.backbone)
    model = build_embedding_model(model_settings.backbone, model_settings.cut_layer, image_size, weights=weights,
                                  normalize=model_settings.normalize, embedding_dim=model_settings.embedding_dim,
                                  head=model_settings.head)
    description = (f"{model_settings.backbone} cut at {model_settings.cut_layer} + {model_settings.head} head"
                   + ("" if model_settings.normalize else " (no L2 normalization)"))
    if model_settings.unfreeze_from and weights is None:
        description += f" (--unfreeze-from {model_settings.unfreeze_from} not applied: a random start trains every layer)"
    elif model_settings.unfreeze_from:
        validate_unfreeze_layer(model_settings.backbone, model_settings.unfreeze_from, model_settings.cut_layer)
        unfreeze_backbone_from(model, model_settings.backbone, model_settings.unfreeze_from)
        description += f", layers before {model_settings.unfreeze_from} frozen"
    return model, weights_description, description, backbone_trainable_variables(model) if weights else []


def reported_figure(model_settings, experiment: str) -> tuple[str, float, float | None] | None:
    """The post's (description, max accuracy, EER) on skilled forgeries for the model of a run, if it reported one."""
    named = MODEL_ZOO.get(model_settings.zoo or "")
    if named is not None:  # a zoo model the post did not build has no figure, whatever model shares its cut
        if named.reported_max_accuracy is None:
            return None
        return named.description, named.reported_max_accuracy, named.reported_eer
    for entry in MODEL_ZOO.values():
        if experiment == "contrastive":
            matches = entry.kind == "contrastive" and entry.backbone == model_settings.backbone
        elif experiment == "pretrain":  # frozen pooled features: the post's "pretrained, no fine-tuning"
            matches = entry.kind == "pretrained" and entry.backbone == model_settings.backbone
        else:
            matches = entry.kind == "cut" and model_settings.head == "conv" and (
                entry.backbone, entry.cut_layer, entry.normalize) == (
                model_settings.backbone, model_settings.cut_layer, model_settings.normalize)
        if matches and entry.reported_max_accuracy is not None:
            return entry.description, entry.reported_max_accuracy, entry.reported_eer
    return None


def model_weights(name: str, requested: str | None) -> tuple[str | None, str]:
    """(weights argument, description) of the zoo model `name`: the from-scratch models always start at random."""
    entry = _zoo_entry(name)
    if entry.backbone is None:
        return None, "random initialisation (trained from scratch)"
    return resolve_weights(entry.weights or requested, entry.backbone)
