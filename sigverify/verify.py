"""Verify a signature pair with a trained run: the same preprocessing as training, the run's distance and threshold."""

from __future__ import annotations

import json
import zipfile
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

    import sigverify.losses
    import sigverify.models.backbones  # noqa: F401  (register our serializable classes: losses, InputScaling)

    model_file = run_dir / "model.keras"
    if not model_file.exists():
        raise ConfigError(f"--run {run_dir}: no model.keras; expected a finished run folder")
    try:
        return keras.saving.load_model(model_file, safe_mode=True, compile=False)
    except (OSError, zipfile.BadZipFile) as error:
        raise ConfigError(f"{model_file}: cannot be read ({error}); expected the model.keras the run wrote") from None
    except ValueError as error:
        if "safe_mode" in str(error) or "Lambda" in str(error):
            raise ConfigError(f"{model_file}: refused, it needs unsafe deserialization (e.g. a Lambda layer); "
                              "expected a model of built-in or registered layers") from None
        raise ConfigError(f"{model_file}: cannot be loaded as a Keras model ({error})") from None


def read_finished_run(run_dir: Path):
    """(settings, metrics) of a finished run folder, or a ConfigError naming the file that is missing or damaged."""
    try:
        status = read_status(run_dir)
    except (OSError, ValueError) as error:
        raise ConfigError(f"--run {run_dir}: its status.json cannot be read ({error}); expected a finished run folder") from None
    if status.get("status") != "complete":
        raise ConfigError(f"--run {run_dir}: not a finished run (status {status.get('status', 'missing')}); expected a "
                          "folder whose run completed")
    config_file, metrics_file = run_dir / CONFIG_FILE, run_dir / "metrics.json"
    try:
        config = config_from_dict(yaml.safe_load(config_file.read_text()) or {})
    except (OSError, yaml.YAMLError, TypeError, ConfigError) as error:
        raise ConfigError(f"{config_file}: cannot be read as the run's settings ({str(error).splitlines()[0]}); "
                          "expected the config.yaml the run wrote") from None
    try:
        metrics = json.loads(metrics_file.read_text())
        metrics["hard"]["threshold"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ConfigError(f"{metrics_file}: cannot be read as the run's metrics ({type(error).__name__}: {error}); "
                          "expected the metrics.json the run wrote, with a skilled-forgery threshold") from None
    return config, metrics


def verify_pair(run_dir: str | Path, first: str | Path, second: str | Path) -> dict:
    run_dir = Path(run_dir)
    config, metrics = read_finished_run(run_dir)
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
