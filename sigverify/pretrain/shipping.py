"""A finished pretraining run made into shipped weights: the backbone in float16 with its model card (written into the
run folder by make pretrain-backbone), and installed into the package's weights folder (make ship-weights RUN=...).
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import shutil
from pathlib import Path

import keras
import numpy as np

from sigverify.errors import ConfigError
from sigverify.models.signature_weights import (
    SHIPPED_NAMES,
    WEIGHTS_DIR,
    card_path,
    load_backbone_weights,
    read_shipped,
    shipped_weights,
    write_backbone_weights,
)
from sigverify.models.weights import PRETRAINED_INFO_FILE, build_cut_backbone
from sigverify.pretrain.models import build_frozen_features_model
from sigverify.runs import RunFolder, write_json, write_text
from sigverify.settings import ExperimentConfig

SHIPPED_FOLDER = "shipped"  # in the pretraining run folder
MAX_SHIPPED_BYTES = 20 * 1024 * 1024
MAX_SHIPPED_TOTAL_BYTES = 40 * 1024 * 1024  # every file of the package's weights folder together
SHIP_COMMAND = "make ship-weights RUN=runs/pretrain-backbone/<run id>"


def shipped_name(backbone: str) -> str:
    return SHIPPED_NAMES.get(backbone, f"{backbone}-signatures")


def start_card(weights: str | None, backbone: str) -> dict | None:
    """The model card of a pretraining start that has one (the shipped file, or a pretrain-backbone run folder), so that
    a file pretrained in stages records each earlier stage and the commands that train it."""
    if weights == "signatures":
        shipped = shipped_weights(backbone)
        return shipped.card if shipped is not None else None
    if weights and Path(weights).is_dir():
        path = Path(weights) / SHIPPED_FOLDER / f"{shipped_name(backbone)}.h5"
        return read_shipped(path).card if path.is_file() else None
    return None


def export_shipped_weights(run: RunFolder, config: ExperimentConfig, profile_config: ExperimentConfig, metrics: dict,
                           test_images: np.ndarray) -> Path:
    """run/shipped/<name>.h5 (the run's backbone in float16), its card (.card.json) and the card as Markdown;
    `profile_config`: the settings of the run's profile alone, from which the card's command adds the run's own."""
    model_settings = config.model
    name = shipped_name(model_settings.backbone)
    folder = run.file(SHIPPED_FOLDER)
    folder.mkdir(exist_ok=True)
    path = folder / f"{name}.h5"
    size = config.image.image_size
    # In float32 whatever --precision trained it: the file is used in float32 by default, and the float16 storage loss
    # measured under a bfloat16 policy would be bfloat16's own rounding of small features.
    training_policy = keras.mixed_precision.dtype_policy()
    keras.mixed_precision.set_dtype_policy("float32")
    try:
        trained = build_cut_backbone(model_settings.backbone, model_settings.cut_layer, size, weights=str(run.path))
        sha256 = write_backbone_weights(trained, model_settings.backbone, model_settings.cut_layer, path)
        if path.stat().st_size > MAX_SHIPPED_BYTES:
            raise ConfigError(f"{path}: {path.stat().st_size / 2**20:.1f} MB, more than the "
                              f"{MAX_SHIPPED_BYTES / 2**20:.0f} MB a shipped file may hold; expected an earlier --cut-layer")
        shipped = build_cut_backbone(model_settings.backbone, model_settings.cut_layer, size, weights=None)
        load_backbone_weights(shipped, path)
        storage_loss = float16_loss(trained, shipped, test_images)
    finally:
        keras.mixed_precision.set_dtype_policy(training_policy)
    info = json.loads(run.file(PRETRAINED_INFO_FILE).read_text())
    start = info.get("start_card")
    card = {
        "name": name, "file": path.name, "sha256": sha256, "bytes": path.stat().st_size,
        "format": "float16 HDF5, one group per layer (sigverify.models.signature_weights)",
        "backbone": model_settings.backbone, "cut_layer": model_settings.cut_layer,
        "parameters": int(sum(np.prod(weight.shape) for weight in trained.weights)),
        "loads_into": "every model of this backbone cut at or after the first layer: the layers up to "
                      f"{model_settings.cut_layer} come from the file, later ones are random",
        "data": f"{info['images']}; synthetic only: no CEDAR image, no evaluation writer (the evaluation sets use "
                "seed 0 or are scanned paper)",
        "recipe": {"method": info["method_name"], "loss": metrics.get("loss_description"), "image_size": size,
                   "epochs": info["epochs"], "steps_per_epoch": config.pretrain.pretrain_steps_per_epoch or "one pass",
                   "batch_size": info["batch_size"], "learning_rate": config.pretrain.pretrain_learning_rate,
                   "schedule": "cosine", "augment_strength": config.pretrain.augment_strength,
                   "precision": config.devices.precision, "start": info["start"]},
        "reproduce": reproducing_command(config, profile_config, start),
        "run": {"profile": config.profile, "seed": config.train.seed,
                "train_seconds": round(float(metrics.get("train_seconds") or 0.0)), "machine": _machine(),
                "epoch_losses": [round(loss, 4) for loss in _epoch_losses(run)]},
        "float16_loss": storage_loss,
        "figures": {"frozen features (backbone + GAP, cosine) on the "
                    f"{Path(str(metrics.get('dataset'))).name} test writers": _figures_of(metrics),
                    "the same model untrained, and raw pixels (max accuracy)": metrics.get("reference_points")},
    }
    if start is not None:
        card["earlier_stages"] = [*start.get("earlier_stages", []),
                                  {key: start[key] for key in ("sha256", "data", "recipe", "run")}]
    write_json(card_path(path), card)
    write_text(folder / f"{name}.md", model_card_markdown(card))
    return path


def reproducing_command(config: ExperimentConfig, profile_config: ExperimentConfig, start: dict | None = None) -> str:
    """The make commands that train the same file (the data only chooses the evaluation writers of the card's
    figures: pretraining sees synthetic writers alone): the profile, and a flag for each setting of the recipe that
    differs from what the profile alone gives (`profile_config`). A run started from an earlier stage's file (`start`,
    its card) repeats that stage's commands first and starts from their run folder."""
    flags = [f"PROFILE={config.profile}"]
    if config.data.data:
        flags.append(f"DATA={config.data.data}")
    if config.devices.precision != "float32":
        flags.append(f"PRECISION={config.devices.precision}")
    if config.train.seed:
        flags.append(f"SEED={config.train.seed}")
    arguments = _recipe_flags(config, profile_config)
    earlier = []
    if start is not None:
        earlier = [start["reproduce"].removesuffix(f" && {SHIP_COMMAND}")]
        stage = len(start.get("earlier_stages", [])) + 1  # the start's own stage
        arguments.append(f"--weights runs/pretrain-backbone/<stage {stage} run id>")
    elif config.model.weights not in (None, "none"):
        arguments.append(f"--weights {config.model.weights}")
    if arguments:
        flags.append(f'ARGS="{" ".join(arguments)}"')
    return " && ".join([*earlier, f"make pretrain-backbone {' '.join(flags)}", SHIP_COMMAND])


def _recipe_flags(config: ExperimentConfig, profile_config: ExperimentConfig) -> list[str]:
    """The command-line flags of the image, model and pretraining settings (the weights aside) in which `config`
    differs from `profile_config`."""
    flags = []
    for section in ("image", "model", "pretrain"):
        given, default = getattr(config, section), getattr(profile_config, section)
        for setting in dataclasses.fields(given):
            value = getattr(given, setting.name)
            if setting.name == "weights" or value == getattr(default, setting.name):
                continue
            flag = setting.name.replace("_", "-")
            flags.append(f"--{'' if value else 'no-'}{flag}" if isinstance(value, bool) else f"--{flag} {value}")
    return flags


def _machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").is_file() else ""
    return f"{cpu or platform.machine()}, {os.cpu_count()} cores"


def _epoch_losses(run: RunFolder) -> list[float]:
    history = run.file("history.csv")
    if not history.is_file():
        return []
    lines = history.read_text().splitlines()
    column = lines[0].split(",").index("loss")
    return [float(line.split(",")[column]) for line in lines[1:] if line]


def float16_loss(trained, shipped, images: np.ndarray) -> dict:
    """How far the float16 file's pooled features are from the trained float32 ones, on evaluation images."""
    reference = build_frozen_features_model(trained).predict(images, verbose=0)
    stored = build_frozen_features_model(shipped, name="shipped_features").predict(images, verbose=0)
    cosine = np.sum(reference * stored, axis=1) / (np.linalg.norm(reference, axis=1) * np.linalg.norm(stored, axis=1))
    return {"images": len(images), "min_cosine_similarity": float(cosine.min()),
            "max_abs_difference": float(np.abs(reference - stored).max()),
            "max_abs_feature": float(np.abs(reference).max())}


def _figures_of(metrics: dict) -> dict:
    return {name: {key: metrics[pair_set][key] for key in ("max_accuracy", "eer", "accuracy_at_train_threshold")}
            for pair_set, name in (("hard", "skilled forgeries"), ("easy", "random forgeries"))
            if isinstance(metrics.get(pair_set), dict)}


def _recipe_table(recipe: dict) -> str:
    return "| setting | value |\n|---|---|\n" + "\n".join(f"| {key} | {value} |" for key, value in recipe.items())


def model_card_markdown(card: dict) -> str:
    stages = card.get("earlier_stages", [])
    stage_of_recipe = f" (stage {len(stages) + 1} of {len(stages) + 1})" if stages else ""
    figures = "\n".join(f"- {where}: {json.dumps(values)}" for where, values in card["figures"].items())
    return f"""# {card['name']}

{card['backbone']} up to `{card['cut_layer']}` ({card['parameters']:,} parameters), pretrained on synthetic signatures
only. `--weights signatures` loads it (and `--weights auto` where ImageNet cannot be loaded).

- File: `{card['file']}` ({card['bytes']:,} bytes, {card['format']})
- sha256: `{card['sha256']}`
- Loads into: {card['loads_into']}
- Data: {card['data']}
- Reproduce: `{card['reproduce']}`
- Trained: profile {card['run']['profile']}, seed {card['run']['seed']}, {card['run']['train_seconds']} s on
  {card['run']['machine']}; loss per epoch {card['run']['epoch_losses']}
- float16 storage: {json.dumps(card['float16_loss'])}

## Recipe{stage_of_recipe}

{_recipe_table(card["recipe"])}

{_earlier_stages_markdown(stages)}## Figures

{figures}
"""


def _earlier_stages_markdown(stages: list[dict]) -> str:
    """The stages before this file's recipe, each from the file it wrote (earliest first), for a card's Markdown."""
    sections = []
    for number, stage in enumerate(stages, start=1):
        sections.append(f"""## Stage {number} of {len(stages) + 1}

- Its file, the start of stage {number + 1}: sha256 `{stage['sha256']}`
- Data: {stage['data']}
- Trained: profile {stage['run']['profile']}, seed {stage['run']['seed']}, {stage['run']['train_seconds']} s on
  {stage['run']['machine']}; loss per epoch {stage['run']['epoch_losses']}

{_recipe_table(stage['recipe'])}

""")
    return "".join(sections)


def install_shipped_weights(run_dir: Path, destination: Path = WEIGHTS_DIR) -> list[Path]:
    """Copy a pretrain-backbone run's shipped files into `destination` (the package's weights folder)."""
    source = Path(run_dir) / SHIPPED_FOLDER
    files = sorted(source.glob("*.h5")) if source.is_dir() else []
    if not files:
        raise ConfigError(f"RUN={run_dir}: no shipped weights ({SHIPPED_FOLDER}/*.h5); expected a finished "
                          "make pretrain-backbone run")
    incoming = {path.name: path.stat().st_size for path in files}
    too_big = [name for name, size in incoming.items() if size > MAX_SHIPPED_BYTES]
    if too_big:
        raise ConfigError(f"RUN={run_dir}: {', '.join(too_big)} over the {MAX_SHIPPED_BYTES / 2**20:.0f} MB a shipped "
                          "file may hold; expected an earlier --cut-layer")
    kept = {path.name: path.stat().st_size for path in destination.glob("*.h5") if path.name not in incoming}
    total = sum(incoming.values()) + sum(kept.values())
    if total > MAX_SHIPPED_TOTAL_BYTES:
        raise ConfigError(f"RUN={run_dir}: its {', '.join(incoming)} would bring {destination} to {total / 2**20:.1f} MB "
                          f"of weights with {', '.join(kept) or 'nothing else'}, more than the "
                          f"{MAX_SHIPPED_TOTAL_BYTES / 2**20:.0f} MB the shipped files may hold together; expected "
                          "an earlier --cut-layer")
    destination.mkdir(parents=True, exist_ok=True)
    installed = []
    for weights in files:
        for path in (weights, card_path(weights), weights.with_suffix(".md")):
            shutil.copy2(path, destination / path.name)
            installed.append(destination / path.name)
    return installed
