"""Verify a signature pair with a trained run: the same preprocessing as training, the run's distance and threshold."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml

from sigverify.data.prepare import preprocessing_of
from sigverify.data.preprocess import preprocess_file
from sigverify.distances import paired_distances_numpy
from sigverify.errors import ConfigError
from sigverify.models.backbones import BACKBONES, to_backbone_input
from sigverify.runs import CONFIG_FILE, read_status
from sigverify.settings import config_from_dict


def load_run_model(run_dir: Path):
    """The run's embedding model, loaded with safe_mode=True: a file that needs unsafe deserialization is refused."""
    import keras

    import sigverify.losses  # noqa: F401  (registers our serializable classes)
    import sigverify.models.backbones  # noqa: F401

    model_file = run_dir / "model.keras"
    if not model_file.exists():
        raise ConfigError(f"--run {run_dir}: no model.keras; expected a finished run folder")
    try:
        return keras.saving.load_model(model_file, safe_mode=True, compile=False)
    except ValueError as error:
        if "safe_mode" in str(error) or "Lambda" in str(error):
            raise ConfigError(f"{model_file}: refused, it needs unsafe deserialization (e.g. a Lambda layer); "
                              "expected a model of built-in or registered layers") from None
        raise ConfigError(f"{model_file}: cannot be loaded as a Keras model ({error})") from None


def verify_pair(run_dir: str | Path, first: str | Path, second: str | Path) -> dict:
    run_dir = Path(run_dir)
    if read_status(run_dir).get("status") != "complete" or not (run_dir / "metrics.json").exists():
        raise ConfigError(f"--run {run_dir}: not a finished run (no complete status and metrics.json)")
    config = config_from_dict(yaml.safe_load((run_dir / CONFIG_FILE).read_text()))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    preprocess = preprocessing_of(config.image)
    images = np.stack([preprocess_file(first, preprocess), preprocess_file(second, preprocess)])
    model = load_run_model(run_dir)
    if len(model.input.shape) == 4:  # a model saved before the input scaling moved into the models
        backbone = BACKBONES.get(config.model.backbone)
        images = to_backbone_input(images, backbone.input_scaling if backbone else "unit")
    embeddings = np.asarray(model.predict_on_batch(images))
    metric = metrics.get("distance", "cosine")
    distance = float(paired_distances_numpy(embeddings[:1], embeddings[1:], metric=metric)[0])
    hard = metrics["hard"]
    threshold, source = hard.get("train_threshold"), "chosen on the training writers' pairs"
    if threshold is None:
        threshold, source = hard["threshold"], "chosen on the test pairs"
    return {"distance": distance, "threshold": float(threshold), "threshold_source": source, "metric": metric,
            "decision": "same writer (genuine)" if distance <= threshold else "different writer or forgery"}
