"""Running a model over preprocessed signatures: embeddings in batches, and a frozen model's features cached on disk."""

from __future__ import annotations

import hashlib
from pathlib import Path

import keras
import numpy as np

from sigverify.data.preprocess import default_cache_dir
from sigverify.runs import writing


def embed(model: keras.Model, inputs: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Outputs (float32 N×D) of `model` for its inputs: preprocessed uint8 N×H×W signatures (every model scales them
    itself), or cached features for a head alone."""
    # A model built under a tf.distribute strategy gives every replica the whole batch and returns their outputs stacked
    # (replica-major): the first len(chunk) rows are the batch's outputs.
    chunks = [model.predict_on_batch(chunk)[: len(chunk)]
              for chunk in (inputs[i : i + batch_size] for i in range(0, len(inputs), batch_size))]
    return np.concatenate([keras.ops.convert_to_numpy(c) for c in chunks]).astype(np.float32)


def cached_features(feature_model: keras.Model, images: np.ndarray, cache_dir=None) -> np.ndarray:
    """`feature_model` outputs for preprocessed images, computed once and kept on disk: keyed by the images' bytes and
    the model's weights, so a frozen backbone's features are never computed twice for the same data."""
    digest = hashlib.sha1(images.tobytes())
    for weight in feature_model.weights:
        digest.update(keras.ops.convert_to_numpy(weight).tobytes())
    cache_root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    entry = cache_root / "features" / f"{feature_model.name}-{digest.hexdigest()[:20]}.npy"
    if entry.exists():
        return np.load(entry)
    features = embed(feature_model, images)
    entry.parent.mkdir(parents=True, exist_ok=True)
    with writing(entry) as temporary:
        np.save(temporary, features)
    return features
