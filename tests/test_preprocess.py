"""Preprocessing: Otsu removes the paper shade, sizes and modes, the model's input scaling matches keras.applications,
the tf.data feed gives the same numbers, and the disk cache means a second run decodes no image."""

import numpy as np
import pytest
from PIL import Image

from sigverify.data import preprocess
from sigverify.data.preprocess import (
    PreprocessConfig,
    binarize_otsu,
    load_preprocessed_images,
    preprocess_grey,
)
from sigverify.errors import ConfigError, DataError
from sigverify.models.backbones import InputScaling, get_backbone, to_backbone_input


def signature_on_paper(paper_shade: int, height=60, width=120) -> np.ndarray:
    image = np.full((height, width), paper_shade, dtype=np.uint8)
    image[20:40, 10:110:3] = 30  # strokes
    return image


def test_otsu_removes_the_paper_shade():
    dark, light = binarize_otsu(signature_on_paper(180)), binarize_otsu(signature_on_paper(245))
    np.testing.assert_array_equal(dark, light)
    assert set(np.unique(dark)) == {0, 255}


@pytest.mark.parametrize("keep_aspect", [False, True])
def test_preprocess_gives_the_configured_size(keep_aspect):
    out = preprocess_grey(signature_on_paper(200), PreprocessConfig((32, 48), keep_aspect=keep_aspect))
    assert out.shape == (32, 48) and out.dtype == np.uint8
    if keep_aspect:
        assert (out[0] == 255).all(), "padding is paper"


def test_too_small_size_is_refused():
    with pytest.raises(ConfigError, match="too small"):
        PreprocessConfig((4, 4))


def test_backbone_input_matches_keras_applications():
    """The model's own first layer, InputScaling, gives ResNet50 what keras.applications.resnet.preprocess_input gives
    for the grey image repeated to three channels."""
    import keras

    from sigverify.models.embedding import build_embedding_model

    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32), dtype=np.uint8)
    model = build_embedding_model("resnet50", "conv3_block4_add", 32, weights=None)
    scaling = model.get_layer("input_scaling")
    assert isinstance(scaling, InputScaling) and scaling.scaling == get_backbone("resnet50").input_scaling
    ours = keras.ops.convert_to_numpy(keras.Model(model.input, scaling.output)(images))
    rgb = np.repeat(images[..., None], 3, axis=-1).astype(np.float32)
    expected = keras.ops.convert_to_numpy(keras.applications.resnet.preprocess_input(rgb))
    np.testing.assert_allclose(ours, expected, atol=1e-4)
    with pytest.raises(ConfigError, match="unknown backbone"):
        get_backbone("inception")
    with pytest.raises(ConfigError, match="input scaling 'inception'"):
        to_backbone_input(images, "inception")


def test_tf_feed_gives_the_same_numbers_as_numpy():
    """The tf.data feed passes the uint8 images as they are (the model scales them), so scaled in the model they are
    the NumPy reference's numbers."""
    import keras

    from sigverify.training.engine import LabelledBatches
    from sigverify.training.tf_data import labelled_dataset

    images = np.random.default_rng(1).integers(0, 256, (6, 8, 8), dtype=np.uint8)
    labels = np.array([0, 0, 1, 1, 2, 2])
    batches = np.array([[0, 1, 2], [3, 4, 5]])
    feed = LabelledBatches(images, labels, lambda epoch: batches)
    fed = [(x.numpy(), y.numpy()) for x, y in labelled_dataset(feed, epoch=0)]
    assert fed[1][0].dtype == np.uint8
    np.testing.assert_array_equal(fed[1][0], images[3:])
    scaled = keras.ops.convert_to_numpy(InputScaling(get_backbone("resnet50").input_scaling)(fed[1][0]))
    np.testing.assert_allclose(scaled, to_backbone_input(images[3:], "caffe"), atol=1e-4)
    np.testing.assert_array_equal(fed[1][1], labels[3:])


def write_pngs(folder, n):
    paths = []
    for i in range(n):
        path = folder / f"s{i}.png"
        Image.fromarray(signature_on_paper(150 + 10 * i)).save(path)
        paths.append(str(path))
    return paths


def test_second_run_decodes_no_image(tmp_path, monkeypatch):
    paths = write_pngs(tmp_path, 4)
    config = PreprocessConfig((16, 16))
    first, kept, skipped = load_preprocessed_images(paths, config, tmp_path / "cache", progress=False)
    assert first.shape == (4, 16, 16) and kept.all() and not skipped

    def fail(*args, **kwargs):
        raise AssertionError("decoded an image although it was cached")

    monkeypatch.setattr(preprocess, "read_grey", fail)
    second, _, _ = load_preprocessed_images(paths, config, tmp_path / "cache", progress=False)
    np.testing.assert_array_equal(first, second)
    # Another setting is another cache entry, so it decodes again.
    with pytest.raises(AssertionError, match="decoded"):
        load_preprocessed_images(paths, PreprocessConfig((16, 16), binarize=False), tmp_path / "cache", progress=False)


def test_bad_image_names_the_file_or_is_skipped(tmp_path):
    paths = write_pngs(tmp_path, 2)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(DataError, match="broken.png"):
        load_preprocessed_images(paths + [str(bad)], PreprocessConfig((16, 16)), tmp_path / "cache", progress=False)
    images, kept, skipped = load_preprocessed_images(paths + [str(bad)], PreprocessConfig((16, 16)), tmp_path / "cache",
                                                     skip_bad_images=True, progress=False)
    assert images.shape[0] == 2 and kept.tolist() == [True, True, False] and skipped[0][0] == str(bad)
