"""Decoding image files of any mode into one grey uint8 channel, with errors that name the file.

Every dataset image goes through `read_grey`, so that a model never sees how a file was stored (on CEDAR
genuine files are 8-bit grey, forgeries palette, three writers RGBA: the file format alone leaks the label).
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from sigverify.errors import DataError

IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp", ".pgm", ".pbm", ".ppm"}
)
EXPECTED_IMAGE = "an image file Pillow can decode (PNG, JPEG, TIFF, BMP, ...)"

# Pillow's modes for 16-bit grey; "I" (32-bit) is what older Pillow versions use for 16-bit PNGs.
SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})

# What Pillow raises on a damaged file: truncated data, broken chunks, bad compressed streams.
_DECODE_ERRORS = (
    OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error, Image.DecompressionBombError
)


def has_image_extension(path: str | os.PathLike) -> bool:
    """True when the file name ends with an extension of an image format (case-insensitive)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


@contextmanager
def _open_image(path: str | os.PathLike) -> Iterator[Image.Image]:
    """Open an image (header only), turning every way it can fail into a DataError naming the file."""
    path = Path(path)
    try:
        size_bytes = path.stat().st_size
    except FileNotFoundError:
        raise DataError(f"{path}: file not found; expected {EXPECTED_IMAGE}") from None
    except OSError as err:
        raise DataError(f"{path}: cannot be read ({err.strerror}); expected {EXPECTED_IMAGE}") from err
    if path.is_dir():
        raise DataError(f"{path}: is a folder, not a file; expected {EXPECTED_IMAGE}")
    if size_bytes == 0:
        raise DataError(f"{path}: is empty (0 bytes); expected {EXPECTED_IMAGE}")
    try:
        image = Image.open(path)
    except PermissionError as err:
        raise DataError(f"{path}: cannot be read (permission denied); expected {EXPECTED_IMAGE}") from err
    except UnidentifiedImageError as err:
        raise DataError(
            f"{path}: is not an image Pillow can identify (unknown format or damaged header); expected {EXPECTED_IMAGE}"
        ) from err
    except _DECODE_ERRORS as err:
        raise DataError(f"{path}: is corrupt or truncated ({err}); expected {EXPECTED_IMAGE}") from err
    with image:
        yield image


def image_info(path: str | os.PathLike) -> tuple[str, int, int]:
    """Return (Pillow mode, width, height) from the file's header, without decoding the pixels.

    A header can be intact in a file whose pixel data is damaged: only `read_grey` proves a file decodes.
    """
    with _open_image(path) as image:
        return image.mode, image.width, image.height


def read_grey(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file into an H×W uint8 array, one grey channel, 0 = black, 255 = white.

    Colour is reduced to luma (ITU-R 601-2), transparency is composited over white paper, 16-bit grey is
    scaled to 8 bits, 1-bit images become 0/255. Raises DataError naming the file when it cannot be decoded.
    """
    with _open_image(path) as image:
        try:
            image.load()
            return _to_grey(image, path)
        except _DECODE_ERRORS as err:
            raise DataError(f"{path}: is corrupt or truncated ({err}); expected {EXPECTED_IMAGE}") from err


def _to_grey(image: Image.Image, path: str | os.PathLike) -> np.ndarray:
    if image.mode in SIXTEEN_BIT_MODES:
        values = np.asarray(image).astype(np.int64)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise DataError(
                f"{path}: mode {image.mode} holds values {values.min()}..{values.max()}; "
                "expected 16-bit grey 0..65535"
            )
        return ((values * 255 + 32767) // 65535).astype(np.uint8)
    if image.mode == "F":
        raise DataError(
            f"{path}: holds floating-point pixels (mode F) of no defined range; expected 8- or 16-bit pixels"
        )
    if image.has_transparency_data:
        grey_alpha = np.asarray(image.convert("LA")).astype(np.uint32)
        grey, alpha = grey_alpha[..., 0], grey_alpha[..., 1]
        return ((grey * alpha + 255 * (255 - alpha) + 127) // 255).astype(np.uint8)
    return np.array(image.convert("L"), dtype=np.uint8)
