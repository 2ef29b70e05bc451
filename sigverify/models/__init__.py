"""Embedding models: backbones cut at a named layer plus a small head, the from-scratch and contrastive baselines."""

from sigverify.models.embedding import (
    BACKBONES,
    MODEL_ZOO,
    ZooModel,
    build_base_cnn,
    build_base_unet,
    build_contrastive_embedding_model,
    build_contrastive_head,
    build_embedding_model,
    build_pretrained_baseline,
    build_zoo_model,
    cut_layer_names,
    minimum_image_size,
    resolve_weights,
    validate_model_settings,
    validate_zoo_model,
)

__all__ = [
    "BACKBONES",
    "MODEL_ZOO",
    "ZooModel",
    "build_base_cnn",
    "build_base_unet",
    "build_contrastive_embedding_model",
    "build_contrastive_head",
    "build_embedding_model",
    "build_pretrained_baseline",
    "build_zoo_model",
    "cut_layer_names",
    "minimum_image_size",
    "resolve_weights",
    "validate_model_settings",
    "validate_zoo_model",
]
