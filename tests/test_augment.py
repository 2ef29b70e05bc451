"""Signature augmentations: shapes and dtypes kept, the same draws for the same seed, each transform's change bounded,
ink kept as ink (no transform invents strokes far from the signature or turns the page dark)."""

from pathlib import Path

import cv2
import numpy as np
import pytest

from sigverify.data.augment import (
    add_speckle_noise,
    affine,
    augment,
    augment_batch,
    batch_augmenter,
    change_stroke_width,
    crop_ink,
    elastic_warp,
    ink_mask,
    view_pair_augmenter,
)
from sigverify.data.preprocess import PreprocessConfig, preprocess_file
from sigverify.errors import ConfigError

SIGNATURE = Path(__file__).parent / "data" / "signature.png"


@pytest.fixture(scope="module")
def signature() -> np.ndarray:
    """A real preprocessed signature (binarized, resized to 64×96: grey stroke edges, as the models see them)."""
    return preprocess_file(SIGNATURE, PreprocessConfig((64, 96)))


def _ink_distance(image: np.ndarray) -> np.ndarray:
    """Per pixel, the distance in pixels to the nearest ink pixel of `image`."""
    return cv2.distanceTransform(np.where(ink_mask(image), 0, 255).astype(np.uint8), cv2.DIST_L2, 5)


def _far_ink(result: np.ndarray, original: np.ndarray, tolerance_px: float) -> float:
    """Fraction of the result's ink pixels further than `tolerance_px` from any ink of the original."""
    ink = ink_mask(result)
    return float((_ink_distance(original)[ink] > tolerance_px).mean()) if ink.any() else 0.0


def test_signature_fixture_is_ink_on_paper(signature):
    assert signature.dtype == np.uint8 and signature.shape == (64, 96)
    assert 0.02 < ink_mask(signature).mean() < 0.4 and signature.max() == 255


def test_affine_identity_and_bounded_moves(signature):
    np.testing.assert_array_equal(affine(signature), signature)
    height, width = signature.shape
    # A shift moves the ink by exactly the shift (away from the border).
    shifted = affine(signature, shift_fraction_xy=(3 / width, 2 / height))
    np.testing.assert_array_equal(shifted[2:, 3:], signature[:-2, :-3])
    corner_distance = np.hypot(width / 2, height / 2)
    for kwargs, max_move in (({"rotation_degrees": 8}, corner_distance * np.deg2rad(8)),
                             ({"shear": 0.3}, 0.3 * height / 2),
                             ({"scale": 1.15}, 0.15 * corner_distance)):
        moved = affine(signature, **kwargs)
        assert moved.shape == signature.shape and moved.dtype == np.uint8
        assert not np.array_equal(moved, signature), kwargs
        assert _far_ink(moved, signature, max_move + 1.5) == 0.0, kwargs
        # Ink is carried, not created or lost: the amount of ink changes at most by the area change (scale²).
        ratio = ink_mask(moved).sum() / ink_mask(signature).sum()
        assert 0.75 < ratio < 1.5, (kwargs, ratio)


def test_stroke_width_grows_or_shrinks_the_ink(signature):
    thicker, thinner = change_stroke_width(signature, 1), change_stroke_width(signature, -1)
    ink, thick_ink, thin_ink = ink_mask(signature), ink_mask(thicker), ink_mask(thinner)
    assert (thick_ink | ~ink).all() and thick_ink.sum() > ink.sum()  # every ink pixel stays ink, and more
    assert (ink | ~thin_ink).all() and thin_ink.sum() < ink.sum()  # no new ink, less of it
    assert _far_ink(thicker, signature, 1.5) == 0.0
    np.testing.assert_array_equal(change_stroke_width(signature, 0), signature)


def test_elastic_warp_moves_no_pixel_further_than_its_amplitude(signature):
    warped = elastic_warp(signature, np.random.default_rng(0), amplitude_px=2.0, smoothness_px=6.0)
    assert warped.shape == signature.shape and warped.dtype == np.uint8
    assert not np.array_equal(warped, signature)
    assert _far_ink(warped, signature, 2.0 * np.sqrt(2) + 1.0) == 0.0
    assert 0.7 < ink_mask(warped).sum() / ink_mask(signature).sum() < 1.3
    np.testing.assert_array_equal(elastic_warp(signature, np.random.default_rng(0), 0.0, 6.0), signature)


def test_crop_keeps_a_span_of_the_ink(signature):
    cropped = crop_ink(signature, np.random.default_rng(1), keep_fraction=0.6)
    ink, kept = ink_mask(signature), ink_mask(cropped)
    assert (ink | ~kept).all()  # nothing new
    np.testing.assert_array_equal(cropped[kept], signature[kept])
    columns = np.flatnonzero(ink.any(axis=0))
    kept_columns = np.flatnonzero(kept.any(axis=0))
    assert kept_columns[-1] - kept_columns[0] + 1 <= round(0.6 * (columns[-1] - columns[0] + 1))
    assert 0.2 * ink.sum() < kept.sum() < ink.sum()
    blank = np.full((20, 30), 255, np.uint8)
    np.testing.assert_array_equal(crop_ink(blank, np.random.default_rng(1), 0.5), blank)


def test_noise_changes_at_most_its_amount(signature):
    noisy = add_speckle_noise(signature, np.random.default_rng(2), amount=0.01)
    changed = (noisy != signature).mean()
    assert 0 < changed <= 0.02  # each pixel chosen with probability 0.01 (binomial spread), half of them unchanged
    assert set(np.unique(noisy[noisy != signature])) <= {0, 255}


def test_augment_is_deterministic_per_seed_and_bounded(signature):
    first = augment(signature, np.random.default_rng(7), strength=1.0)
    again = augment(signature, np.random.default_rng(7), strength=1.0)
    other = augment(signature, np.random.default_rng(8), strength=1.0)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    np.testing.assert_array_equal(augment(signature, np.random.default_rng(7), strength=0.0), signature)
    for seed in range(20):
        result = augment(signature, np.random.default_rng(seed), strength=1.0)
        assert result.shape == signature.shape and result.dtype == np.uint8
        ratio = ink_mask(result).sum() / ink_mask(signature).sum()
        assert 0.2 < ratio < 2.5, (seed, ratio)  # a crop may keep 60 % of the width; thickening adds ink
        # The page stays paper: (almost) all ink lies near the signature (noise specks excepted).
        assert _far_ink(result, signature, 0.3 * max(signature.shape)) < 0.05, seed
        assert (result == 255).mean() > 0.5


def test_batch_augmenters_are_reproducible_per_batch_number(signature):
    batch = np.stack([signature, signature[::-1], np.full_like(signature, 255)])
    augmented = augment_batch(batch, np.random.default_rng(3))
    assert augmented.shape == batch.shape and augmented.dtype == np.uint8
    assert (augmented[2] == 255).mean() > 0.97  # a blank page gets a few specks at most
    first = batch_augmenter(seed=5, epoch=2, strength=0.5)
    np.testing.assert_array_equal(first(batch, 4), batch_augmenter(5, 2, 0.5)(batch, 4))
    assert not np.array_equal(first(batch, 4), first(batch, 5))
    assert not np.array_equal(first(batch, 4), batch_augmenter(5, 3, 0.5)(batch, 4))
    view_a, view_b = view_pair_augmenter(5, 2, 1.0)(batch, 0)
    assert view_a.shape == view_b.shape == batch.shape and not np.array_equal(view_a, view_b)
    again_a, _ = view_pair_augmenter(5, 2, 1.0)(batch, 0)
    np.testing.assert_array_equal(view_a, again_a)


def test_bad_input_is_refused(signature):
    with pytest.raises(ConfigError, match="uint8 H×W"):
        augment(signature.astype(np.float32), np.random.default_rng(0))
    with pytest.raises(ConfigError, match="strength"):
        augment(signature, np.random.default_rng(0), strength=2.0)
    with pytest.raises(ConfigError, match="N×H×W"):
        augment_batch(signature, np.random.default_rng(0))


def test_feeds_augment_each_batch_reproducibly(signature):
    """`--augment` in the tf.data feed: the batch's images change, the labels do not, and the same (seed, epoch) gives
    the same batches however tf.data's threads interleave; the two-view feed gives two different views per image."""
    from sigverify.training.engine import LabelledBatches, ViewBatches
    from sigverify.training.tf_data import labelled_dataset, view_dataset

    images = np.stack([signature, signature[:, ::-1], signature[::-1], np.roll(signature, 9, axis=1)])
    labels = np.array([3, 3, 5, 5])
    batches = np.array([[0, 1], [2, 3], [1, 2]])

    def feed(augment_of_epoch):
        batches_feed = LabelledBatches(images, labels, lambda epoch: batches, augment_of_epoch=augment_of_epoch)
        return [(x.numpy(), y.numpy()) for x, y in labelled_dataset(batches_feed, epoch=0)]

    def augmenter(epoch):
        return batch_augmenter(seed=1, epoch=epoch, strength=1.0)

    plain = feed(None)
    augmented = feed(augmenter)
    assert [y.tolist() for _, y in augmented] == [y.tolist() for _, y in plain] == [[3, 3], [5, 5], [3, 5]]
    assert all(x.shape == (2, 64, 96) and x.dtype == np.uint8 for x, _ in augmented)
    assert not any(np.array_equal(a, p) for (a, _), (p, _) in zip(augmented, plain))
    for (first, _), (second, _) in zip(augmented, feed(augmenter)):
        np.testing.assert_array_equal(first, second)
    # Batch 2 holds images 1 and 2: augmented with batch 2's draws, so it matches the NumPy augmenter on that batch.
    expected = batch_augmenter(seed=1, epoch=0, strength=1.0)(images[[1, 2]], 2)
    np.testing.assert_array_equal(augmented[2][0], expected)

    two_views = view_pair_augmenter(seed=1, epoch=0, strength=1.0)
    views_feed = ViewBatches(images, lambda epoch: batches,
                             lambda epoch: view_pair_augmenter(seed=1, epoch=epoch, strength=1.0))
    for batch_number, ((first_views, second_views), targets) in enumerate(view_dataset(views_feed, epoch=0)):
        assert first_views.shape == second_views.shape == (2, 64, 96) and targets.numpy().tolist() == [0, 0]
        expected_first, expected_second = two_views(images[batches[batch_number]], batch_number)
        np.testing.assert_array_equal(first_views.numpy(), expected_first)
        np.testing.assert_array_equal(second_views.numpy(), expected_second)
