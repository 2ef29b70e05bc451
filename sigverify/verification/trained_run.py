"""A finished run as a verifier uses it: its settings and metrics read and checked, its model loaded once, image files
preprocessed exactly as in training and embedded, and the identity (model file and preprocessing) a gallery records."""

from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import asdict
from functools import cached_property
from pathlib import Path

import numpy as np
import yaml

from sigverify.data.prepare import preprocessing_of
from sigverify.data.preprocess import preprocess_file
from sigverify.errors import ConfigError, DataError
from sigverify.runs import CONFIG_FILE, read_status
from sigverify.settings import config_from_dict

CALIBRATION_FILE = "calibration.json"
PAIR_HEAD_FILE = "pair_head.keras"  # a pair classifier's head (exp-losses' pair-ce): what scores its pairs


def load_run_model(run_dir: Path, file_name: str = "model.keras"):
    """The run's embedding model (or another model file of the run), loaded with safe_mode=True: a file that needs
    unsafe deserialization is refused."""
    import keras

    import sigverify.losses
    import sigverify.models.backbones
    import sigverify.models.siamese  # noqa: F401  (register our serializable classes: losses, layers)

    model_file = run_dir / file_name
    if not model_file.exists():
        raise ConfigError(f"--run {run_dir}: no {file_name}; expected a finished run folder")
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


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class TrainedRun:
    """A finished run folder: `config`, `metrics`, `metric` (the distance the run was scored by), `preprocessing`, and
    the model, loaded on first use and kept."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir).resolve()
        if not self.path.is_dir():
            raise ConfigError(f"--run {run_dir}: no such folder; expected a finished run folder (holding model.keras, "
                              "config.yaml, metrics.json)")
        self.config, self.metrics = read_finished_run(self.path)
        self.preprocessing = preprocessing_of(self.config.image)
        self.metric = self.metrics.get("distance", "cosine")

    @cached_property
    def model(self):
        return load_run_model(self.path)

    @cached_property
    def scoring(self):
        """What scores a pair of this run's embeddings: its distance name, or a pair classifier's trained head."""
        from sigverify.models.siamese import PAIR_CLASSIFIER, PairClassifierScore

        if self.metric != PAIR_CLASSIFIER:
            return self.metric
        return PairClassifierScore(load_run_model(self.path, PAIR_HEAD_FILE))

    @cached_property
    def identity(self) -> dict:
        """What ties embeddings to this model: the sha256 of model.keras and the preprocessing settings."""
        return {"model_sha256": file_sha256(self.path / "model.keras"),
                "preprocessing": json.dumps(asdict(self.preprocessing), sort_keys=True), "metric": self.metric}

    def read_images(self, paths) -> np.ndarray:
        """uint8 N×H×W model inputs of image files, preprocessed as in training; a DataError names a file that cannot
        be read as an image."""
        height, width = self.preprocessing.image_size_hw
        images = np.zeros((len(paths), height, width), np.uint8)
        for position, path in enumerate(paths):
            if not Path(path).is_file():
                raise DataError(f"{path}: no such file; expected a signature image")
            images[position] = preprocess_file(path, self.preprocessing)
        return images

    def embed_images(self, images: np.ndarray) -> np.ndarray:
        """float32 N×D embeddings of uint8 N×H×W preprocessed images."""
        from sigverify.models.backbones import BACKBONES, to_backbone_input
        from sigverify.models.inference import embed

        if len(self.model.input.shape) == 4:  # a model saved before the input scaling moved into the models
            backbone = BACKBONES.get(self.config.model.backbone)
            images = to_backbone_input(images, backbone.input_scaling if backbone else "unit")
        return embed(self.model, images)

    def embed_files(self, paths) -> np.ndarray:
        return self.embed_images(self.read_images(paths))

    def calibration(self):
        """The run's calibrated operating points (`sigverify calibrate`), or a ConfigError saying how to make them."""
        from sigverify.verification.calibration import Calibration

        return Calibration.read(self.path / CALIBRATION_FILE, self)
