"""Augmentations for preprocessed signature images (uint8 H×W, ink 0, paper 255), not photographs: small affine
changes, stroke width, elastic warp, a crop of part of the ink and speckle noise; no colour jitter (the input is
binarized). Pure functions on one image; every random draw comes from the `numpy.random.Generator` passed in.

`augment(image, rng, strength)` draws one random combination; `augment_batch` applies it to each image of a batch;
`batch_augmenter(seed, epoch, strength)` gives the feeds a function of (batch, batch number) whose draws depend only on
(seed, epoch, batch number), so an epoch's augmented batches are the same after a resume and whatever the order in
which tf.data's threads ask for them.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

from sigverify.data.preprocess import INK, PAPER
from sigverify.errors import ConfigError

FINE_TUNING_STRENGTH = 0.5  # `--augment` of the supervised experiments: half the largest changes
INK_THRESHOLD = 128  # below: ink (preprocessed images are binarized, then resized, so stroke edges are grey)
AUGMENT_STREAM = 4  # the augmentations' own random stream, apart from the samplers' (seed, epoch[, 1, 2, 3])

# The largest change of each kind, reached at strength 1.
MAX_ROTATION_DEGREES = 8.0
MAX_SHEAR = 0.3
MAX_LOG_SCALE = 0.15  # scale factor in [e^-0.15, e^0.15], about ±15 %
MAX_SHIFT_FRACTION = 0.06  # of the image's width / height
STROKE_CHANGE_PROBABILITY = 0.5
ELASTIC_PROBABILITY = 0.5
MAX_ELASTIC_AMPLITUDE_FRACTION = 0.02  # of the image side: 2 px at 96 px
ELASTIC_SMOOTHNESS_FRACTION = 0.08
CROP_PROBABILITY = 0.3
MIN_CROP_KEEP_FRACTION = 0.6
MAX_NOISE_AMOUNT = 0.01  # fraction of the pixels
MIN_INK_KEPT_BY_THINNING = 0.5


def _check_image(image: np.ndarray) -> None:
    if image.dtype != np.uint8 or image.ndim != 2:
        raise ConfigError(f"augment: expected a uint8 H×W image, got {image.dtype} {image.shape}")


def ink_mask(image: np.ndarray) -> np.ndarray:
    return image < INK_THRESHOLD


def affine(image: np.ndarray, rotation_degrees: float = 0.0, shear: float = 0.0, scale: float = 1.0,
           shift_fraction_xy: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """Rotation (degrees, counter-clockwise), horizontal shear (x += shear·y) and scaling about the image centre, then a
    shift by fractions of the width and height. Paper fills what comes in from outside the image."""
    _check_image(image)
    height, width = image.shape
    centre = np.array([(width - 1) / 2, (height - 1) / 2])
    angle = np.deg2rad(rotation_degrees)
    rotation = np.array([[np.cos(angle), np.sin(angle)], [-np.sin(angle), np.cos(angle)]])
    linear = scale * rotation @ np.array([[1.0, shear], [0.0, 1.0]])
    shift = np.array([shift_fraction_xy[0] * width, shift_fraction_xy[1] * height])
    matrix = np.hstack([linear, (centre + shift - linear @ centre)[:, None]])
    return cv2.warpAffine(image, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                          borderValue=PAPER)


def change_stroke_width(image: np.ndarray, pixels: int) -> np.ndarray:
    """Strokes thicker by `pixels` (> 0: a minimum filter spreads the ink) or thinner (< 0: a maximum filter), with a
    square window of side |pixels| + 1."""
    _check_image(image)
    if pixels == 0:
        return image.copy()
    kernel = np.ones((abs(pixels) + 1, abs(pixels) + 1), np.uint8)
    spread = cv2.erode if pixels > 0 else cv2.dilate  # on ink = 0, erosion (minimum) grows the ink
    return spread(image, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=PAPER)


def elastic_warp(image: np.ndarray, rng: np.random.Generator, amplitude_px: float, smoothness_px: float) -> np.ndarray:
    """A smooth random displacement field (Gaussian-filtered noise, width `smoothness_px`) scaled so that no pixel
    moves further than `amplitude_px` in x or y: the wobble of a hand that writes the same name twice."""
    _check_image(image)
    height, width = image.shape
    displacements = []
    for _ in range(2):
        field = cv2.GaussianBlur(rng.standard_normal((height, width)).astype(np.float32), (0, 0), max(smoothness_px, 0.5))
        peak = float(np.abs(field).max())
        displacements.append(field * (amplitude_px / peak) if peak > 0 else field)
    grid_x, grid_y = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    return cv2.remap(image, grid_x + displacements[0], grid_y + displacements[1], cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_CONSTANT, borderValue=PAPER)


def crop_ink(image: np.ndarray, rng: np.random.Generator, keep_fraction: float) -> np.ndarray:
    """Keep the ink of a random horizontal span covering `keep_fraction` of the ink's width (signatures are written
    left to right, so a span is a part of the name); the ink outside it becomes paper. A blank image is returned as is."""
    _check_image(image)
    columns = np.flatnonzero(ink_mask(image).any(axis=0))
    result = image.copy()
    if len(columns) == 0:
        return result
    first, last = int(columns[0]), int(columns[-1])
    span = max(1, round((last - first + 1) * keep_fraction))
    start = int(rng.integers(first, last - span + 2))
    result[:, :start] = PAPER
    result[:, start + span:] = PAPER
    return result


def add_speckle_noise(image: np.ndarray, rng: np.random.Generator, amount: float) -> np.ndarray:
    """Set a random `amount` (fraction) of the pixels to ink or paper (half each): scanner dust and dropped pixels."""
    _check_image(image)
    result = image.copy()
    chosen = rng.random(image.shape) < amount
    result[chosen] = np.where(rng.random(int(chosen.sum())) < 0.5, INK, PAPER).astype(np.uint8)
    return result


def _ink_amount(image: np.ndarray) -> float:
    return float((PAPER - image.astype(np.float64)).sum())


def augment(image: np.ndarray, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """One random combination of the augmentations, each drawn within its largest change times `strength` (0: the image
    unchanged, 1: the largest changes above): crop of part of the ink, stroke width, affine, elastic warp, noise."""
    _check_image(image)
    if not 0.0 <= strength <= 1.0:
        raise ConfigError(f"augment: strength {strength}: expected a value from 0 to 1")
    side = min(image.shape)
    result = image
    if rng.random() < CROP_PROBABILITY * strength:
        result = crop_ink(result, rng, rng.uniform(1.0 - (1.0 - MIN_CROP_KEEP_FRACTION) * strength, 1.0))
    if rng.random() < STROKE_CHANGE_PROBABILITY * strength:
        pixels = int(rng.choice([-1, 1])) * max(1, round(side / 100))
        changed = change_stroke_width(result, pixels)
        # Thinning erases the strokes of a small image altogether: keep the strokes if it would.
        if pixels > 0 or _ink_amount(changed) >= MIN_INK_KEPT_BY_THINNING * _ink_amount(result):
            result = changed
    result = affine(result,
                    rotation_degrees=rng.uniform(-1, 1) * MAX_ROTATION_DEGREES * strength,
                    shear=rng.uniform(-1, 1) * MAX_SHEAR * strength,
                    scale=float(np.exp(rng.uniform(-1, 1) * MAX_LOG_SCALE * strength)),
                    shift_fraction_xy=tuple(rng.uniform(-1, 1, size=2) * MAX_SHIFT_FRACTION * strength))
    if rng.random() < ELASTIC_PROBABILITY * strength:
        result = elastic_warp(result, rng, MAX_ELASTIC_AMPLITUDE_FRACTION * side * strength,
                              ELASTIC_SMOOTHNESS_FRACTION * side)
    return add_speckle_noise(result, rng, rng.uniform(0.0, MAX_NOISE_AMOUNT * strength))


def augment_batch(images: np.ndarray, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """`augment` of each image of a uint8 N×H×W batch, in order, drawing from one generator."""
    if images.dtype != np.uint8 or images.ndim != 3:
        raise ConfigError(f"augment_batch: expected a uint8 N×H×W batch, got {images.dtype} {images.shape}")
    return np.stack([augment(image, rng, strength) for image in images]) if len(images) else images.copy()


def batch_rng(seed: int, epoch: int, batch_number: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, AUGMENT_STREAM, batch_number])


def batch_augmenter(seed: int, epoch: int, strength: float) -> Callable[[np.ndarray, int], np.ndarray]:
    """(uint8 batch, batch number) → the augmented batch, drawn from (seed, epoch, batch number) alone."""
    def augment_numbered_batch(images: np.ndarray, batch_number: int) -> np.ndarray:
        return augment_batch(images, batch_rng(seed, epoch, batch_number), strength)

    return augment_numbered_batch


def view_pair_augmenter(seed: int, epoch: int, strength: float
                        ) -> Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]:
    """(uint8 batch, batch number) → two independently augmented views of the batch (SimCLR, MoCo), drawn from
    (seed, epoch, batch number) alone."""
    def two_views(images: np.ndarray, batch_number: int) -> tuple[np.ndarray, np.ndarray]:
        rng = batch_rng(seed, epoch, batch_number)
        return augment_batch(images, rng, strength), augment_batch(images, rng, strength)

    return two_views
