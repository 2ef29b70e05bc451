"""Where a backbone's weights come from: ImageNet (keras.applications, downloaded on first use where a network is
reached), the signature-pretrained weights shipped with the package (`sigverify.models.signature_weights`), random
initialisation, a weights file, or a pretraining run folder (make exp-pretrain); and the backbones built with them."""

from __future__ import annotations

import functools
import json
import warnings
from pathlib import Path

import keras

from sigverify.errors import ConfigError
from sigverify.models.backbones import check_cut_layer, cut_layer_names_of, get_backbone, signature_input
from sigverify.models.signature_weights import SHIPPED_NAMES, load_backbone_weights, shipped_weights

WEIGHTS_CHOICES = "auto, imagenet, signatures, none, a pretraining run folder (make exp-pretrain), or the path to a weights file of the backbone"
# What a pretraining run folder (make exp-pretrain) holds: the backbone up to its cut layer, and what made it.
PRETRAINED_WEIGHTS_FILE = "backbone.weights.h5"
PRETRAINED_INFO_FILE = "backbone.json"  # method, method_name, backbone, cut_layer, image_size, source, ...


@functools.cache
def _imagenet_download_error(backbone: str) -> str | None:
    """None when the ImageNet weights of `backbone` can be loaded (downloaded or cached), else the short reason.

    Building the backbone is the only public way to fetch the file; cached so that one run tries once."""
    try:
        get_backbone(backbone).constructor(include_top=False, weights="imagenet", input_shape=(None, None, 3))
    except Exception as error:  # noqa: BLE001 - Keras raises a bare Exception when the download fails
        return str(error).splitlines()[0][:200] if str(error) else type(error).__name__
    return None


def resolve_weights(requested: str | None, backbone: str) -> tuple[str | None, str]:
    """The `weights` argument for a keras.applications backbone and a description of what was used and why.

    `requested`: "auto" (ImageNet if it can be loaded, the post's protocol; otherwise the shipped signature weights;
    otherwise random initialisation with a warning), "imagenet" (a ConfigError when the weights cannot be downloaded),
    "signatures" (the shipped weights; a ConfigError where the backbone has none), None/"none"/"random", a
    pretraining run folder (its
    backbone.weights.h5 goes into the layers up to the run's cut layer; the returned argument is the folder), or the
    path to a weights file of the backbone (a `.weights.h5` saved from the keras.applications model, or Keras's own
    ImageNet `.h5` file).
    """
    get_backbone(backbone)
    choice = "none" if requested is None else str(requested)
    if choice.lower() in ("none", "random"):
        return None, "random initialisation (weights: none)"
    if choice.lower() == "auto":
        error = _imagenet_download_error(backbone)
        if error is None:
            return "imagenet", f"ImageNet weights of {backbone} (keras.applications, requested via auto)"
        shipped = shipped_weights(backbone)
        if shipped is not None:
            return "signatures", f"{shipped.describe()}, requested via auto (ImageNet could not be loaded: {error})"
        description = (f"random initialisation (imagenet requested via auto, but download failed: {error}; no "
                       f"signature weights are shipped for {backbone})")
        warnings.warn(f"{backbone}: {description}", stacklevel=2)
        return None, description
    if choice.lower() == "signatures":
        shipped = shipped_weights(backbone)
        if shipped is None:
            raise ConfigError(f"weights: signatures: no signature-pretrained weights are shipped for {backbone}; "
                              f"expected a backbone with shipped weights ({', '.join(SHIPPED_NAMES)}), or {WEIGHTS_CHOICES}")
        return "signatures", shipped.describe()
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


def pretraining_info(weights: str | None, backbone: str) -> dict | None:
    """The record of the pretraining run that `weights` names (its backbone.json, checked), None for any other start."""
    if weights is None or str(weights).lower() in ("none", "random", "auto", "imagenet", "signatures"):
        return None
    path = Path(weights).expanduser()
    folder = path if path.is_dir() else path.parent if path.name == PRETRAINED_WEIGHTS_FILE else None
    return pretraining_run_info(folder, backbone) if folder is not None else None


def build_backbone(backbone: str, image_size, weights: str | None) -> keras.Model:
    """The whole keras.applications backbone (include_top=False) behind the input scaling, from signatures (uint8
    H×W) to its last features, one flat graph, with `weights` (any form resolve_weights accepts)."""
    weights_argument, _ = resolve_weights(weights, backbone)
    constructor = get_backbone(backbone).constructor
    signature, scaled = signature_input(image_size, get_backbone(backbone).input_scaling)
    if weights_argument == "signatures":
        model = constructor(include_top=False, weights=None, input_tensor=scaled)
        load_backbone_weights(model, shipped_weights(backbone).path)
    elif weights_argument is not None and Path(weights_argument).is_dir():
        model = constructor(include_top=False, weights=None, input_tensor=scaled)
        _load_pretrained_layers(model, backbone, Path(weights_argument))
    else:
        try:
            model = constructor(include_top=False, weights=weights_argument, input_tensor=scaled)
        except (ValueError, OSError) as error:
            if weights_argument in (None, "imagenet"):
                raise
            reason = str(error).splitlines()[0]
            raise ConfigError(f"weights: file {weights_argument!r} could not be loaded into {backbone}: "
                              f"{reason}") from error
    # keras.applications gives a model built on `input_tensor` a list of inputs: one input, as every other model has
    return keras.Model(signature, model.output, name=model.name)


def _load_pretrained_layers(model: keras.Model, backbone: str, folder: Path) -> None:
    """A pretraining run's weights into `model`'s layers up to the run's cut layer (the layers it trained); Keras
    matches them by layer order, the same in every model cut at that layer."""
    info = pretraining_run_info(folder, backbone)
    up_to_cut = keras.Model(model.inputs, model.get_layer(info["cut_layer"]).output)
    try:
        up_to_cut.load_weights(folder / PRETRAINED_WEIGHTS_FILE)
    except (ValueError, OSError) as error:
        raise ConfigError(f"weights: {folder / PRETRAINED_WEIGHTS_FILE} could not be loaded into {backbone} up to "
                          f"{info['cut_layer']}: {str(error).splitlines()[0]}") from error


def build_cut_backbone(backbone: str = "resnet50", cut_layer: str = "conv4_block6_add",
                       image_size=224, weights: str | None = None,
                       name: str | None = None) -> keras.Model:
    """The layers of `backbone` up to `cut_layer` alone: what `build_embedding_model` puts before its head, and what
    pretraining trains and saves (its weights load into any model cut at or after that layer)."""
    full_backbone = build_backbone(backbone, image_size, weights)
    check_cut_layer(backbone, cut_layer, cut_layer_names_of(full_backbone, backbone))
    return keras.Model(full_backbone.input, full_backbone.get_layer(cut_layer).output,
                       name=name or f"{backbone}_to_{cut_layer}")


