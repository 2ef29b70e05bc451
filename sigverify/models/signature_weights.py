"""The signature-pretrained backbones shipped with the package (`sigverify/weights/`): `--weights signatures`, and what
`auto` falls back to where ImageNet cannot be loaded.

A shipped file holds a backbone's layers up to a cut layer, in float16 (half the size; the loss it costs is measured in
the model card), as HDF5: one group per layer, its weights as datasets "0", "1", ... in the layer's order. Beside it, a
model card (`<name>.card.json`, rendered as `<name>.md`): the data (synthetic writers only), the recipe, the command
that reproduces the file, its sha256, and its measured figures. The file is checked against the card's sha256 before
it is used.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import h5py
import keras
import numpy as np

from sigverify.errors import ConfigError

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"
FORMAT = "sigverify-backbone-weights/1"
SHIPPED_NAMES = {"resnet50": "resnet50-signatures", "vgg16": "vgg16-signatures"}  # backbone → file stem under WEIGHTS_DIR


@dataclass(frozen=True)
class ShippedWeights:
    backbone: str
    cut_layer: str
    path: Path
    card: dict

    @property
    def sha256(self) -> str:
        return self.card["sha256"]

    def describe(self) -> str:
        return (f"signature-pretrained weights {self.path.name} (sha256 {self.sha256[:12]}…, model card "
                f"{self.path.name.removesuffix('.h5')}.card.json; {self.backbone} up to {self.cut_layer}, later layers "
                "random)")


def card_path(weights_file: Path) -> Path:
    return weights_file.with_name(weights_file.name.removesuffix(".h5") + ".card.json")


def shipped_weights(backbone: str, folder: Path = WEIGHTS_DIR) -> ShippedWeights | None:
    """The shipped weights of `backbone`, None when the package has none for it."""
    name = SHIPPED_NAMES.get(backbone)
    if name is None or not (folder / f"{name}.h5").is_file():
        return None
    return read_shipped(folder / f"{name}.h5")


def read_shipped(path: Path) -> ShippedWeights:
    """The weights file and its model card, the file checked against the card's sha256 (a ConfigError otherwise)."""
    card_file = card_path(path)
    if not card_file.is_file():
        raise ConfigError(f"weights: {path} has no model card ({card_file.name} beside it)")
    card = json.loads(card_file.read_text())
    actual = _sha256_of(str(path), path.stat().st_mtime_ns, path.stat().st_size)
    if actual != card.get("sha256"):
        raise ConfigError(f"weights: {path} does not match its model card (sha256 {actual[:12]}…, the card says "
                          f"{str(card.get('sha256'))[:12]}…); reinstall the package or rebuild the file")
    return ShippedWeights(card["backbone"], card["cut_layer"], path, card)


@functools.cache
def _sha256_of(path: str, mtime_ns: int, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_backbone_weights(backbone_model: keras.Model, backbone: str, cut_layer: str, path: Path) -> str:
    """The layers of `backbone_model` (a backbone up to `cut_layer`) as a float16 file at `path`, written under a
    temporary name and moved into place; returns its sha256."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with h5py.File(temporary, "w") as file:
            file.attrs.update({"format": FORMAT, "backbone": backbone, "cut_layer": cut_layer})
            for layer in backbone_model.layers:
                values = layer.get_weights()
                if not values:
                    continue
                group = file.create_group(layer.name)
                for index, value in enumerate(values):
                    group.create_dataset(str(index), data=np.asarray(value, dtype=np.float16))
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return _sha256_of(str(path), path.stat().st_mtime_ns, path.stat().st_size)


def load_backbone_weights(model: keras.Model, path: Path) -> int:
    """The file's layers into the layers of `model` that have their names (a model cut before the file's cut takes
    the layers it has; one cut after keeps its later layers as they are); returns how many layers were loaded."""
    loaded = 0
    with h5py.File(path, "r") as file:
        if file.attrs.get("format") != FORMAT:
            raise ConfigError(f"weights: {path} is not a {FORMAT} file (format {file.attrs.get('format')!r})")
        present = {layer.name: layer for layer in model.layers}
        for name, group in file.items():
            if name not in present:
                continue
            layer = present[name]
            values = [group[str(index)][()] for index in range(len(group))]
            expected = [tuple(weight.shape) for weight in layer.weights]
            if [value.shape for value in values] != expected:
                raise ConfigError(f"weights: layer {name} of {path} has shapes {[v.shape for v in values]}; the "
                                  f"model's {name} expects {expected}")
            layer.set_weights([value.astype(np.float32) for value in values])
            loaded += 1
    if loaded == 0:
        raise ConfigError(f"weights: no layer of {path} is in model {model.name}; expected a {FORMAT} file of its "
                          "backbone")
    return loaded
