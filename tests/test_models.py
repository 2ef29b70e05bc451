"""Model builders: the post's exact parameter counts, setting errors, weights resolution, the contrastive head sharing its
weights, the input scaling inside every model, safe .keras round trips, and Grad-CAM against a gradient worked out by
hand."""

import keras
import numpy as np
import pytest

from sigverify.errors import ConfigError
from sigverify.models import weights as weights_module
from sigverify.models.backbones import InputScaling, to_backbone_input, validate_model_settings
from sigverify.models.embedding import (
    build_base_cnn,
    build_base_unet,
    build_contrastive_embedding_model,
    build_contrastive_head,
    build_embedding_model,
    build_pretrained_baseline,
)
from sigverify.models.weights import resolve_weights
from sigverify.models.zoo import MODEL_ZOO, build_zoo_model, model_weights, reported_figure, validate_zoo_model
from sigverify.settings import ModelSettings


def embed(model, images):
    """An eager call: quicker than predict for a couple of tiny images (no graph tracing)."""
    return keras.ops.convert_to_numpy(model(images, training=False))


def signatures(seed, n, height, width=None):
    """Random preprocessed signatures as every model takes them: uint8 N×H×W."""
    return np.random.default_rng(seed).integers(0, 256, size=(n, height, width or height), dtype=np.uint8)


@pytest.mark.parametrize(
    "backbone, cut_layer, expected",
    [
        ("resnet50", "conv4_block6_add", 9_271_520),
        ("resnet50", "conv3_block4_add", 2_175_200),
        ("resnet50", "conv5_block3_out", 24_794_336),
        ("vgg16", "block5_pool", 15_036_576),
        ("vgg16", "block3_conv1", 2_327_200),
    ],
)
def test_parameter_count_matches_the_post(backbone, cut_layer, expected):
    model = build_embedding_model(backbone, cut_layer, 224, weights=None)
    assert model.count_params() == expected
    assert model.output.shape == (None, 256)


@pytest.mark.parametrize("builder, reported", [(build_base_cnn, 1_680_000), (build_base_unet, 1_290_000)])
def test_base_model_parameter_count_within_five_percent(builder, reported):
    assert abs(builder(224).count_params() / reported - 1) <= 0.05
    small = builder(64)
    embeddings = embed(small, signatures(0, 2, 64))
    assert embeddings.shape == (2, 256)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)


def test_unknown_cut_layer_error_lists_valid_layers():
    with pytest.raises(ConfigError) as error:
        validate_model_settings("resnet50", "conv4_block7_add", 224)
    message = str(error.value)
    assert "conv4_block7_add" in message and "Closest: conv4_block6_add" in message
    assert "conv3_block{1-4}_{1_conv,2_conv,3_conv,add,out}" in message and "conv1_conv" in message
    assert len(message) < 800
    with pytest.raises(ConfigError, match=r"block\{1-5\}_\{conv1,conv2,pool\}, block\{3-5\}_conv3"):
        build_embedding_model("vgg16", "block6_pool", 64)


def test_unknown_backbone_error_lists_valid_ones():
    with pytest.raises(ConfigError, match=r"'resnet18'.*\['resnet50', 'vgg16'\]"):
        validate_model_settings("resnet18", "conv4_block6_add", 224)
    with pytest.raises(ConfigError, match="unknown model 'tiny_resnet'"):
        build_zoo_model("tiny_resnet")


def test_too_small_image_error_gives_the_minimum_size():
    # ResNet50 at 49 px: conv1 → 25, pool → 13, conv3 → 7, conv4 → 4 features; at 48 px conv4 has 3.
    assert validate_model_settings("resnet50", "conv4_block6_add", 49) == (4, 4, 1024)
    for size in (48, 20):
        with pytest.raises(ConfigError, match="at least 49×49"):
            validate_model_settings("resnet50", "conv4_block6_add", size)
    with pytest.raises(ConfigError, match="at least 49×49"):
        build_embedding_model("resnet50", "conv4_block6_add", (224, 48))
    with pytest.raises(ConfigError, match="at least 128×128"):
        validate_zoo_model("vgg16", 127)
    with pytest.raises(ConfigError, match="at least 32×32"):
        build_base_cnn((31, 64))


def test_missing_weights_file_error_names_the_path(tmp_path):
    missing = tmp_path / "absent.weights.h5"
    with pytest.raises(ConfigError, match="absent.weights.h5"):
        resolve_weights(str(missing), "resnet50")
    with pytest.raises(ConfigError, match="absent.weights.h5"):
        build_embedding_model("vgg16", "block3_conv1", 32, weights=str(missing))


def test_local_weights_file_is_loaded_into_the_backbone(tmp_path):
    keras.utils.set_random_seed(1)
    backbone = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    path = tmp_path / "vgg16.weights.h5"
    backbone.save_weights(path)
    model = build_embedding_model("vgg16", "block2_conv1", 32, weights=str(path))
    np.testing.assert_array_equal(model.get_layer("block2_conv1").kernel.numpy(),
                                  backbone.get_layer("block2_conv1").kernel.numpy())
    assert resolve_weights(str(path), "vgg16") == (str(path), f"weights file {path}")
    not_weights = tmp_path / "notes.weights.h5"
    not_weights.write_text("not an HDF5 file")
    with pytest.raises(ConfigError, match="notes.weights.h5' could not be loaded into vgg16"):
        build_embedding_model("vgg16", "block2_conv1", 32, weights=str(not_weights))


def test_auto_weights_fall_back_to_random_when_imagenet_cannot_be_fetched(monkeypatch, tmp_path):
    """Where ImageNet cannot be fetched and the package ships no file for the backbone (an empty weights folder)."""
    from sigverify.models.signature_weights import shipped_weights

    def offline(*args, **kwargs):
        raise OSError("URL fetch failure on https://example.invalid/vgg16.h5: None -- no network")

    monkeypatch.setattr(keras.src.utils.file_utils, "get_file", offline)
    monkeypatch.setattr(weights_module, "shipped_weights", lambda backbone: shipped_weights(backbone, tmp_path))
    weights_module._imagenet_download_error.cache_clear()
    try:
        with pytest.warns(UserWarning, match="random initialisation"):
            weights, description = resolve_weights("auto", "vgg16")
        assert weights is None
        assert description.startswith("random initialisation (imagenet requested via auto, but download failed")
        assert "no network" in description
        with pytest.raises(ConfigError, match="could not be loaded"):
            resolve_weights("imagenet", "vgg16")
    finally:
        weights_module._imagenet_download_error.cache_clear()
    assert resolve_weights("none", "vgg16") == (None, "random initialisation (weights: none)")
    assert resolve_weights(None, "resnet50")[0] is None


def test_contrastive_model_shares_its_head_with_the_feature_model():
    keras.utils.set_random_seed(2)
    images = signatures(2, 3, 32)
    head = build_contrastive_head(feature_dim=512)
    head.get_layer("batch_norm").moving_mean.assign(np.full(128, 0.3, "float32"))
    model = build_contrastive_embedding_model("vgg16", 32, head=head)
    assert model.get_layer("contrastive_head") is head
    assert len(model.trainable_weights) == len(head.trainable_weights) == 6  # the backbone is frozen

    features = embed(model.get_layer("pretrained_vgg16"), images)
    through_head = embed(head, features)
    np.testing.assert_allclose(embed(model, images), through_head, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(through_head, axis=1), 1.0, atol=1e-5)

    separate_features = build_pretrained_baseline("vgg16", 32)
    assert separate_features.output.shape == (None, 512)
    with pytest.raises(ConfigError, match="takes 512 features but resnet50 gives 2048"):
        build_contrastive_embedding_model("resnet50", 32, head=head)


@pytest.mark.parametrize("name, size", [("smaller_resnet50", 64), ("base_unet", 36), ("multiscale_resnet50", 49)])
def test_saved_model_loads_in_safe_mode_with_the_same_output(tmp_path, name, size):
    model = build_zoo_model(name, size)
    images = signatures(3, 2, size)
    path = tmp_path / f"{name}.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_allclose(embed(loaded, images), embed(model, images), atol=1e-5)


def test_input_scaling_matches_the_numpy_reference_and_survives_a_safe_round_trip(tmp_path):
    """InputScaling("caffe"/"unit") computes what to_backbone_input does, and an embedding model saved as model.keras
    and loaded in safe mode (InputScaling is registered) gives the same embeddings for uint8 signatures."""
    images = signatures(7, 3, 32, 40)
    for scaling in ("caffe", "unit"):
        scaled = keras.ops.convert_to_numpy(InputScaling(scaling)(images))
        assert scaled.shape == (3, 32, 40, 3) and scaled.dtype == np.float32
        np.testing.assert_allclose(scaled, to_backbone_input(images, scaling), atol=1e-5)
    with pytest.raises(ConfigError, match="input scaling 'imagenet'"):
        InputScaling("imagenet")

    keras.utils.set_random_seed(7)
    model = build_embedding_model("resnet50", "conv3_block4_add", (32, 40), weights=None)
    assert model.input.dtype == "uint8" and tuple(model.input.shape) == (None, 32, 40)
    assert isinstance(model.get_layer("input_scaling"), InputScaling)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(loaded.get_layer("input_scaling"), InputScaling)
    assert loaded.get_layer("input_scaling").scaling == "caffe"
    np.testing.assert_allclose(embed(loaded, images), embed(model, images), atol=1e-5)


def test_nonorm_variant_has_no_l2_normalization():
    assert MODEL_ZOO["small_resnet50_nonorm"].normalize is False
    images = signatures(3, 2, 32)
    normalized, nonorm = (build_embedding_model("resnet50", "conv3_block4_add", 32, normalize=normalize)
                          for normalize in (True, False))
    np.testing.assert_allclose(np.linalg.norm(embed(normalized, images), axis=1), 1.0, atol=1e-5)
    assert not np.allclose(np.linalg.norm(embed(nonorm, images), axis=1), 1.0, atol=1e-3)
    assert nonorm.name.endswith("_nonorm") and nonorm.count_params() == normalized.count_params()


def test_embedding_stays_float32_under_mixed_precision():
    keras.mixed_precision.set_dtype_policy("mixed_float16")
    try:
        model = build_base_cnn(32)
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    assert model.get_layer("stage1_1_conv").compute_dtype == "float16"
    assert model.output.dtype == "float32"


def test_zoo_lists_the_posts_results():
    assert MODEL_ZOO["small_resnet50"].reported_max_accuracy == 0.818
    assert MODEL_ZOO["small_resnet50_noskip"].cut_layer == "conv4_block6_3_conv"
    for name, entry in MODEL_ZOO.items():
        assert entry.reported_max_accuracy is None or 0.5 < entry.reported_max_accuracy < 1, name
        validate_zoo_model(name, 224)


def test_multiscale_model_concatenates_both_layers_before_the_shared_head():
    """multiscale_resnet50 at 49 px (the smallest image conv4 gives 4×4 features at): conv3_block4_add's 7×7×512
    features max-pooled to the 4×4 grid and concatenated with conv4_block6_add's 1024 channels, then the shared head
    and L2 normalization; the post did not build it, so no figure of its own and none borrowed from its cut."""
    entry = MODEL_ZOO["multiscale_resnet50"]
    assert entry.kind == "cut" and entry.reported_max_accuracy is None
    assert reported_figure(ModelSettings(zoo="multiscale_resnet50"), "models") is None  # not small_resnet50's 0.818
    keras.utils.set_random_seed(8)
    model = build_zoo_model("multiscale_resnet50", 49)
    conv3, conv4, merged = (model.get_layer(name).output
                            for name in ("conv3_block4_add", "conv4_block6_add", "multiscale_features"))
    assert (conv3.shape[1:], conv4.shape[1:], merged.shape[1:]) == ((7, 7, 512), (4, 4, 1024), (4, 4, 512 + 1024))
    assert model.get_layer("head_conv1").kernel.shape == (3, 3, 512 + 1024, 64)

    outputs = keras.Model(model.input, [conv3, conv4, merged, model.output])(signatures(8, 2, 49), training=False)
    conv3_values, conv4_values, merged_values, embeddings = (keras.ops.convert_to_numpy(x) for x in outputs)
    # 2×2 max-pool with "same" padding: 7 → 4, the last row and column pooled alone
    padded = np.pad(conv3_values, ((0, 0), (0, 1), (0, 1), (0, 0)), constant_values=-np.inf)
    np.testing.assert_allclose(merged_values[..., :512], padded.reshape(2, 4, 2, 4, 2, 512).max(axis=(2, 4)),
                               rtol=1e-6)
    np.testing.assert_allclose(merged_values[..., 512:], conv4_values, rtol=1e-6)
    assert embeddings.shape == (2, 256)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    with pytest.raises(ConfigError, match="multi-scale layer conv4_block6_add: not before the cut layer"):
        build_embedding_model("resnet50", "conv3_block4_add", 32, multiscale_layers=("conv4_block6_add",))


def test_multiscale_model_takes_the_shipped_signature_weights_at_both_scales():
    import h5py

    from sigverify.models.signature_weights import shipped_weights

    assert model_weights("multiscale_resnet50", "signatures")[0] == "signatures"
    model = build_zoo_model("multiscale_resnet50", 49, weights="signatures")
    with h5py.File(shipped_weights("resnet50").path, "r") as file:
        for name in ("conv1_conv", "conv3_block4_3_conv", "conv4_block6_3_bn"):
            stored = [file[name][str(index)][()] for index in range(len(file[name]))]
            for loaded, value in zip(model.get_layer(name).get_weights(), stored, strict=True):
                np.testing.assert_array_equal(loaded, value.astype(np.float32))


def test_gradcam_gives_one_unit_range_map_per_layer_and_image():
    from sigverify.reporting.explain import gradcam_heatmaps

    keras.utils.set_random_seed(4)
    model = build_zoo_model("smaller_resnet50", 64)
    images = signatures(4, 2, 64)
    layer_names, heatmaps = gradcam_heatmaps(model, images)
    assert layer_names == ["conv3_block4_2_conv", "conv3_block4_3_conv", "head_conv1", "head_conv2"]
    assert len(heatmaps) == 2 and all(len(row) == 4 for row in heatmaps)
    assert [heatmap.shape for heatmap in heatmaps[0]] == [(8, 8), (8, 8), (8, 8), (4, 4)]
    for heatmap in (heatmap for row in heatmaps for heatmap in row):
        assert heatmap.dtype == np.float32 and heatmap.min() >= 0 and heatmap.max() <= 1
        assert heatmap.max() in (0.0, 1.0)
    with pytest.raises(ConfigError, match="not in model"):
        gradcam_heatmaps(model, images, layer_names=["block9_conv"])


def test_model_still_saves_after_gradcam(tmp_path):
    from sigverify.reporting.explain import gradcam_heatmaps

    model = build_zoo_model("smaller_resnet50", 32)
    images = signatures(6, 2, 32)
    gradcam_heatmaps(model, images)
    model.save(tmp_path / "after_gradcam.keras")
    loaded = keras.saving.load_model(tmp_path / "after_gradcam.keras", safe_mode=True)
    assert len(loaded.weights) == len(model.weights)  # no Grad-CAM tap left in the model
    np.testing.assert_allclose(embed(loaded, images), embed(model, images), atol=1e-5)


def test_gradcam_matches_the_gradient_worked_out_by_hand():
    from sigverify.reporting.explain import gradcam_heatmaps

    keras.utils.set_random_seed(5)
    image = keras.Input((6, 5, 2))
    feature_map = keras.layers.Conv2D(3, 3, padding="same", name="conv")(image)
    embedding = keras.layers.Dense(4, name="dense")(keras.layers.Flatten()(feature_map))
    model = keras.Model(image, embedding)
    images = np.random.default_rng(5).normal(size=(3, 6, 5, 2)).astype("float32")

    # The embedding is linear in the feature map A: ∂(Σ embedding)/∂A is the Dense kernel summed over its outputs.
    features = embed(keras.Model(image, feature_map), images)
    gradient = model.get_layer("dense").kernel.numpy().sum(axis=1).reshape(6, 5, 3)
    expected = np.maximum((features * gradient.mean(axis=(0, 1))).sum(axis=-1), 0)
    expected /= expected.max(axis=(1, 2), keepdims=True)

    layer_names, heatmaps = gradcam_heatmaps(model, images)
    assert layer_names == ["conv"]
    np.testing.assert_allclose(np.stack([row[0] for row in heatmaps]), expected, atol=1e-5)


def test_gap_head_is_the_normalized_dense_of_the_cuts_mean_features():
    keras.utils.set_random_seed(3)
    model = build_embedding_model("resnet50", "conv3_block4_add", 32, head="gap", embedding_dim=16)
    # the cut's 512 channels, averaged over the grid, then Dense(16): no head convolution
    assert model.count_params() == build_pretrained_baseline("resnet50", 32, cut_layer="conv3_block4_add").count_params() \
        + 512 * 16 + 16
    images = signatures(3, 2, 32)
    features = keras.ops.convert_to_numpy(
        keras.Model(model.input, model.get_layer("conv3_block4_add").output)(images, training=False))
    kernel, bias = (keras.ops.convert_to_numpy(w) for w in model.get_layer("embedding").weights)
    expected = features.mean(axis=(1, 2)) @ kernel + bias
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(embed(model, images), expected, rtol=1e-4, atol=1e-5)
    # not the post's model: no figure borrowed from Small ResNet50 + skip at the same cut
    assert reported_figure(ModelSettings(cut_layer="conv4_block6_add", head="gap"), "triplet") is None
    assert reported_figure(ModelSettings(cut_layer="conv4_block6_add"), "triplet")[1] == 0.818
    with pytest.raises(ConfigError, match="head 'mlp' is not known: expected one of conv, gap"):
        build_embedding_model("resnet50", "conv3_block4_add", 32, head="mlp")
