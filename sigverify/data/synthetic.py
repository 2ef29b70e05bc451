"""Synthetic offline signatures in the CEDAR layout: per writer, genuine samples and skilled forgeries.

Each writer gets a cursive name built from letter-like pen paths (centripetal Catmull-Rom splines through
control points), varied per sample the way one person's signatures vary; forgeries copy that shape with a
forger's traits (tremor, hesitation blobs, pen lifts, blunt strokes, proportions and slant a little off).
The output is byte-identical for the same arguments: every random draw comes from a generator seeded with
(seed, writer, ...), so writer w's images do not depend on how many writers or samples are generated.
"""

import functools
import json
import pathlib
import shutil
from dataclasses import dataclass

import cv2
import numpy as np
from tqdm import tqdm

from sigverify.errors import ConfigError

GENERATOR_VERSION = "synthetic-signatures/1"

# CEDAR's image size range in pixels.
MIN_WIDTH, MAX_WIDTH = 264, 888
MIN_HEIGHT, MAX_HEIGHT = 145, 816
_MIN_ASPECT_RATIO = 1.1  # width / height: signatures are wider than tall

# Control points (x, y) of letter-like pen paths, y in x-heights (baseline 0, x-height 1, ascenders up to
# about 2.4, descenders down to about -1.4). A glyph starts at (0, 0) and ends at its exit point, where
# the next letter's path joins.
_LOWERCASE_GLYPHS = {
    "a": [(0, 0), (0.55, 0.85), (0.3, 1.0), (0.05, 0.55), (0.2, 0.05), (0.5, 0.3), (0.62, 0.95), (0.6, 0.15),
          (0.8, 0.0), (0.95, 0.15)],
    "b": [(0, 0), (0.4, 1.5), (0.45, 2.3), (0.25, 2.3), (0.2, 1.5), (0.18, 0.05), (0.45, 0.2), (0.5, 0.75),
          (0.3, 0.7), (0.65, 0.8)],
    "c": [(0, 0), (0.5, 0.8), (0.35, 0.95), (0.08, 0.55), (0.25, 0.05), (0.7, 0.25)],
    "d": [(0, 0), (0.55, 0.85), (0.3, 1.0), (0.05, 0.55), (0.2, 0.05), (0.5, 0.3), (0.7, 2.1), (0.62, 0.2),
          (0.85, 0.0), (1.0, 0.2)],
    "e": [(0, 0), (0.45, 0.4), (0.55, 0.7), (0.35, 0.85), (0.18, 0.5), (0.3, 0.05), (0.7, 0.2)],
    "f": [(0, 0), (0.4, 1.5), (0.45, 2.3), (0.25, 2.3), (0.2, 1.2), (0.2, -1.2), (0.1, -1.3), (0.2, -0.5),
          (0.55, 0.1), (0.7, 0.2)],
    "g": [(0, 0), (0.55, 0.85), (0.3, 1.0), (0.05, 0.55), (0.2, 0.05), (0.5, 0.3), (0.62, 0.95), (0.55, -1.1),
          (0.3, -1.4), (0.15, -1.0), (0.55, -0.3), (0.85, 0.2)],
    "h": [(0, 0), (0.4, 1.5), (0.45, 2.3), (0.25, 2.3), (0.2, 1.5), (0.18, 0.0), (0.35, 0.75), (0.55, 0.9),
          (0.62, 0.1), (0.85, 0.15)],
    "i": [(0, 0), (0.22, 0.95), (0.22, 0.1), (0.45, 0.15)],
    "k": [(0, 0), (0.4, 1.5), (0.45, 2.3), (0.25, 2.3), (0.2, 1.5), (0.18, 0.0), (0.3, 0.7), (0.6, 0.9),
          (0.45, 0.5), (0.25, 0.45), (0.6, 0.05), (0.85, 0.15)],
    "l": [(0, 0), (0.4, 1.5), (0.45, 2.3), (0.25, 2.3), (0.2, 1.5), (0.22, 0.1), (0.5, 0.15)],
    "m": [(0, 0), (0.1, 0.85), (0.18, 0.0), (0.3, 0.8), (0.45, 0.9), (0.5, 0.0), (0.62, 0.8), (0.78, 0.9),
          (0.85, 0.05), (1.05, 0.15)],
    "n": [(0, 0), (0.12, 0.85), (0.2, 0.0), (0.35, 0.8), (0.55, 0.9), (0.62, 0.05), (0.8, 0.15)],
    "o": [(0, 0), (0.5, 0.8), (0.3, 0.98), (0.08, 0.55), (0.25, 0.05), (0.55, 0.4), (0.5, 0.9), (0.75, 0.8)],
    "r": [(0, 0), (0.2, 0.9), (0.35, 0.75), (0.5, 0.85), (0.5, 0.05), (0.7, 0.15)],
    "s": [(0, 0), (0.35, 0.95), (0.5, 0.45), (0.45, 0.05), (0.2, 0.1), (0.55, 0.05), (0.7, 0.15)],
    "t": [(0, 0), (0.3, 1.9), (0.22, 0.2), (0.45, 0.0), (0.6, 0.2)],
    "u": [(0, 0), (0.12, 0.9), (0.15, 0.15), (0.3, 0.0), (0.5, 0.9), (0.52, 0.1), (0.72, 0.15)],
    "v": [(0, 0), (0.12, 0.9), (0.25, 0.0), (0.45, 0.9), (0.55, 0.85), (0.7, 0.8)],
    "y": [(0, 0), (0.12, 0.9), (0.15, 0.15), (0.3, 0.0), (0.5, 0.9), (0.45, -1.1), (0.3, -1.4), (0.15, -1.0),
          (0.55, -0.3), (0.8, 0.2)],
}
_LOWERCASE_FREQUENCY = {
    "a": 8, "b": 2, "c": 3, "d": 3, "e": 10, "f": 1, "g": 2, "h": 4, "i": 7, "k": 1, "l": 5, "m": 3, "n": 7,
    "o": 7, "r": 6, "s": 6, "t": 7, "u": 3, "v": 1, "y": 2,
}
_CAPITAL_GLYPHS = {
    "A": [(0, 0), (0.45, 2.8), (0.62, 0.5), (0.75, 0.0), (0.35, 1.1), (0.1, 1.0), (0.5, 0.6), (0.9, 0.15)],
    "B": [(0.1, 2.6), (0.15, 0.0), (0.2, 2.4), (0.7, 2.6), (0.65, 1.5), (0.25, 1.3), (0.85, 0.9), (0.6, 0.0),
          (0.15, 0.1), (1.0, 0.2)],
    "C": [(0.95, 2.4), (0.7, 2.8), (0.3, 2.4), (0.05, 1.2), (0.3, 0.05), (0.75, 0.15), (0.95, 0.25)],
    "D": [(0.25, 2.5), (0.2, 0.05), (0.0, 0.2), (0.35, 0.0), (0.9, 0.9), (0.85, 2.2), (0.35, 2.7), (0.05, 2.4),
          (0.6, 2.2), (1.0, 0.3)],
    "E": [(0.8, 2.6), (0.4, 2.8), (0.2, 2.3), (0.55, 1.5), (0.1, 1.3), (0.05, 0.3), (0.5, 0.0), (0.95, 0.25)],
    "G": [(0.9, 2.4), (0.6, 2.8), (0.2, 2.3), (0.05, 1.0), (0.3, 0.0), (0.75, 0.4), (0.8, 1.2), (0.45, 1.1),
          (0.85, 0.9), (0.75, -1.0), (0.5, -1.2), (0.4, -0.8), (1.0, 0.1)],
    "H": [(0.1, 2.6), (0.15, 0.0), (0.25, 1.2), (0.75, 1.4), (0.8, 2.6), (0.75, 0.0), (0.95, 0.2)],
    "J": [(0.3, 2.2), (0.8, 2.8), (1.0, 2.6), (0.65, 0.8), (0.3, -0.9), (0.0, -1.1), (0.05, -0.5), (0.7, 0.05),
          (1.0, 0.2)],
    "L": [(0.55, 2.3), (0.8, 2.8), (0.5, 2.75), (0.3, 1.2), (0.05, 0.05), (0.25, -0.1), (0.2, 0.25), (0.6, 0.0),
          (0.95, 0.15)],
    "M": [(0, 0), (0.2, 2.6), (0.4, 0.5), (0.62, 2.6), (0.8, 0.0), (1.0, 0.2)],
    "P": [(0.15, 0.0), (0.2, 2.6), (0.75, 2.5), (0.7, 1.5), (0.2, 1.3), (0.6, 0.6), (0.95, 0.2)],
    "R": [(0.1, 0.0), (0.15, 2.6), (0.7, 2.5), (0.65, 1.6), (0.2, 1.4), (0.8, 0.05), (1.0, 0.2)],
    "S": [(0.9, 2.5), (0.55, 2.85), (0.2, 2.4), (0.55, 1.5), (0.75, 0.7), (0.45, 0.0), (0.05, 0.3), (0.5, 0.25),
          (1.0, 0.2)],
    "T": [(0.0, 2.3), (0.5, 2.7), (1.1, 2.6), (0.6, 2.5), (0.45, 1.2), (0.35, 0.0), (0.7, 0.15)],
    "W": [(0.0, 2.5), (0.2, 0.0), (0.4, 1.6), (0.6, 0.0), (0.85, 2.5), (0.95, 2.0)],
}

_SUPERSAMPLING = 3
_FIXED_POINT_BITS = 4  # sub-pixel precision of OpenCV drawing coordinates
_SPLINE_POINTS_PER_SEGMENT = 24
_NOISE_TILE_SIZE = 1024


@dataclass(frozen=True)
class _Word:
    """One pen-down stroke of a signature: a capital and lowercase letters, as the writer forms them."""

    glyphs: tuple[np.ndarray, ...]
    gap_before: float  # x-heights of blank space before the word


@dataclass(frozen=True)
class _WriterStyle:
    """What stays the same across one writer's genuine signatures."""

    words: tuple[_Word, ...]
    flourish: str  # "none", "underline" (a separate stroke) or "tail" (the last word loops back under the name)
    flourish_depth: float
    slant: float  # shear of x by y
    rotation_deg: float
    x_stretch: float
    x_height_px: float
    consistency: float  # std of sample-to-sample control point jitter, x-heights
    elastic_amplitude: float  # x-heights
    stroke_width_px: float
    downstroke_pressure: float  # relative extra width on strokes drawn downwards
    pressure_variation: float
    taper_px: float  # length over which a fast stroke thins out at its start and end
    ink_level: float  # grey level of full ink, 0 black
    page_margins: np.ndarray  # left, right, top, bottom blank space as fractions of the ink's width or height
    n_forgers: int


@dataclass(frozen=True)
class _ForgerTraits:
    """How one forger misreproduces a writer: systematic for all of that forger's forgeries of the writer."""

    glyph_offsets: tuple[tuple[np.ndarray, ...], ...]  # per word, per glyph: control point misplacement
    letter_width_factors: tuple[np.ndarray, ...]  # per word
    lowercase_height_factor: float
    x_stretch_factor: float
    slant_offset: float
    rotation_offset_deg: float
    size_factor: float
    tremor_px: float
    tremor_correlation_px: float
    wobble_px: float  # slower, larger drift of a hesitant hand
    blob_rate: float  # expected hesitation blobs along the path, besides stroke starts
    pen_lift_rate: float  # expected pen lifts per signature
    width_factor: float
    ink_level: float
    page_margins: np.ndarray  # the forger's own sheet and scan


def generate_synthetic_dataset(out_dir, n_writers: int = 55, n_samples: int = 24, seed: int = 0,
                               progress: bool = True) -> pathlib.Path:
    """Write a synthetic CEDAR-layout dataset into out_dir and return its path.

    Images go to `full_org/original_{w}_{n}.png` and `full_forg/forgeries_{w}_{n}.png` (w = 1..n_writers,
    n = 1..n_samples), with `SYNTHETIC.json` holding the arguments and generator version. The folder is
    built beside out_dir under a `.partial` name and renamed into place at the end, so an interrupted run
    never leaves a folder that looks complete.
    """
    out_dir = pathlib.Path(out_dir)
    for name, value, minimum in (("n_writers", n_writers, 1), ("n_samples", n_samples, 1), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
            raise ConfigError(f"synthetic data: {name} must be an integer >= {minimum}, got {value!r}")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ConfigError(f"{out_dir}: already exists and is not an empty folder; "
                          "choose another --out or remove it to regenerate the synthetic dataset")

    partial_dir = out_dir.with_name(out_dir.name + ".partial")
    if partial_dir.exists():
        shutil.rmtree(partial_dir)  # left over from an interrupted run of this generator
    (partial_dir / "full_org").mkdir(parents=True)
    (partial_dir / "full_forg").mkdir()

    for writer in tqdm(range(1, n_writers + 1), desc="synthetic writers", disable=not progress):
        pages = writer_signature_pages(writer, n_samples, seed)
        for sample in range(1, n_samples + 1):
            _write_png(partial_dir / "full_org" / f"original_{writer}_{sample}.png", pages[sample - 1])
            _write_png(partial_dir / "full_forg" / f"forgeries_{writer}_{sample}.png", pages[n_samples + sample - 1])

    description = {"generator": "sigverify.data.synthetic", "generator_version": GENERATOR_VERSION,
                   "n_writers": int(n_writers), "n_samples": int(n_samples), "seed": int(seed)}
    (partial_dir / "SYNTHETIC.json").write_text(json.dumps(description, indent=2, sort_keys=True) + "\n")
    if out_dir.exists():
        out_dir.rmdir()  # empty, checked above
    partial_dir.rename(out_dir)
    return out_dir


def writer_signature_pages(writer: int, n_samples: int, seed: int) -> list[np.ndarray]:
    """Writer `writer`'s (from 1) `n_samples` genuine signatures, then as many skilled forgeries of them: grey pages,
    drawn from (seed, writer) alone."""
    noise_tile = _noise_tile(seed)
    style = _writer_style(np.random.default_rng([seed, writer]))
    forgers = [_forger_traits(style, np.random.default_rng([seed, writer, 1, forger]))
               for forger in range(style.n_forgers)]
    genuine = [_genuine_signature(style, np.random.default_rng([seed, writer, 2, sample]), noise_tile)
               for sample in range(1, n_samples + 1)]
    forged = [_forged_signature(style, forgers[(sample - 1) % style.n_forgers],
                                np.random.default_rng([seed, writer, 3, sample]), noise_tile)
              for sample in range(1, n_samples + 1)]
    return genuine + forged


@functools.cache
def _noise_tile(seed: int) -> np.ndarray:
    tile = np.random.default_rng([seed, 0]).standard_normal((_NOISE_TILE_SIZE, _NOISE_TILE_SIZE), dtype=np.float32)
    tile.flags.writeable = False
    return tile


def _write_png(path: pathlib.Path, image: np.ndarray) -> None:
    if not cv2.imwrite(str(path), image):
        raise OSError(f"{path}: could not write the PNG image")


# ----------------------------------------------------------------------------- writers and forgers


def _writer_style(rng: np.random.Generator) -> _WriterStyle:
    letters = list(_LOWERCASE_FREQUENCY)
    letter_probability = np.array(list(_LOWERCASE_FREQUENCY.values()), dtype=np.float64)
    letter_probability /= letter_probability.sum()
    capitals = list(_CAPITAL_GLYPHS)

    letter_width = rng.uniform(0.9, 1.45)
    lowercase_height = rng.uniform(0.55, 1.05)  # low values: a flattened, barely legible scrawl
    ascender = rng.uniform(0.7, 1.15)
    capital_size = rng.uniform(0.8, 1.2)
    own_glyphs: dict[str, np.ndarray] = {}

    def glyph_as_written(name: str) -> np.ndarray:
        # A writer forms each letter their own way, the same way every time.
        if name not in own_glyphs:
            if name in _CAPITAL_GLYPHS:
                glyph = np.asarray(_CAPITAL_GLYPHS[name], dtype=np.float64) * capital_size
                glyph[:, 0] *= letter_width
            else:
                glyph = np.asarray(_LOWERCASE_GLYPHS[name], dtype=np.float64)
                heights = np.where(glyph[:, 1] > 1.0, 1.0 + (glyph[:, 1] - 1.0) * ascender, glyph[:, 1])
                glyph = np.column_stack([glyph[:, 0] * letter_width, heights * lowercase_height])
            own_glyphs[name] = glyph + rng.normal(0.0, 0.075, glyph.shape)
        return own_glyphs[name]

    def word(n_letters: int, gap_before: float) -> _Word:
        names = [capitals[rng.integers(len(capitals))]]
        names += [letters[i] for i in rng.choice(len(letters), n_letters, p=letter_probability)]
        return _Word(tuple(glyph_as_written(name) for name in names), gap_before)

    layout = rng.choice(["first and last name", "initial and last name", "one name"], p=[0.45, 0.3, 0.25])
    if layout == "first and last name":
        words = (word(int(rng.integers(3, 7)), 0.0), word(int(rng.integers(4, 8)), rng.uniform(0.5, 1.4)))
    elif layout == "initial and last name":
        words = (word(0, 0.0), word(int(rng.integers(4, 9)), rng.uniform(0.3, 1.0)))
    else:
        words = (word(int(rng.integers(5, 10)), 0.0),)
    flourish = str(rng.choice(["none", "underline", "tail"], p=[0.4, 0.3, 0.3]))

    n_letters = sum(len(w.glyphs) for w in words)
    name_width = n_letters * 0.75 * letter_width
    return _WriterStyle(
        words=words,
        flourish=flourish,
        flourish_depth=rng.uniform(0.4, 1.2),
        slant=rng.uniform(-0.15, 0.55),
        rotation_deg=rng.normal(0.0, 2.0),
        x_stretch=rng.uniform(0.85, 1.2),
        x_height_px=rng.uniform(280.0, 560.0) / name_width,
        consistency=rng.uniform(0.02, 0.04),
        elastic_amplitude=rng.uniform(0.02, 0.05),
        stroke_width_px=rng.uniform(1.6, 3.8),
        downstroke_pressure=rng.uniform(0.0, 0.45),
        pressure_variation=rng.uniform(0.05, 0.2),
        taper_px=rng.uniform(6.0, 22.0),
        ink_level=rng.uniform(15.0, 110.0),
        page_margins=_page_margins(rng),
        n_forgers=int(rng.integers(2, 5)),
    )


def _page_margins(rng: np.random.Generator) -> np.ndarray:
    """How one person places a signature on the sheet (and one scan crops it): fractions of the ink extent."""
    return np.concatenate([rng.uniform(0.015, 0.06, 2), rng.uniform(0.1, 0.45, 2)])


def _forger_traits(style: _WriterStyle, rng: np.random.Generator) -> _ForgerTraits:
    shape_error = rng.uniform(0.06, 0.15)
    return _ForgerTraits(
        glyph_offsets=tuple(tuple(rng.normal(0.0, shape_error, glyph.shape) for glyph in word.glyphs)
                            for word in style.words),
        letter_width_factors=tuple(rng.normal(1.0, 0.15, len(word.glyphs)).clip(0.65, 1.35) for word in style.words),
        lowercase_height_factor=float(np.clip(rng.normal(1.0, 0.15), 0.7, 1.3)),
        x_stretch_factor=float(np.clip(rng.normal(1.0, 0.07), 0.8, 1.2)),
        slant_offset=rng.normal(0.0, 0.12),
        rotation_offset_deg=rng.normal(0.0, 2.5),
        size_factor=float(np.clip(rng.normal(1.0, 0.07), 0.8, 1.2)),
        tremor_px=rng.uniform(0.3, 1.0),
        tremor_correlation_px=rng.uniform(2.0, 5.0),
        wobble_px=rng.uniform(0.3, 1.1),
        blob_rate=rng.uniform(1.0, 4.0),
        pen_lift_rate=rng.uniform(0.5, 2.5),
        width_factor=rng.uniform(0.7, 1.25),
        ink_level=float(np.clip(style.ink_level + rng.normal(0.0, 25.0), 15.0, 120.0)),
        page_margins=_page_margins(rng),
    )


# ----------------------------------------------------------------------------- pen paths


def _compose_strokes(style: _WriterStyle, rng: np.random.Generator, jitter: float,
                     forger: _ForgerTraits | None) -> list[np.ndarray]:
    """Control points of each pen-down stroke, letters laid left to right, with per-sample jitter."""
    strokes = []
    cursor = 0.0
    for word_index, word in enumerate(style.words):
        cursor += word.gap_before * rng.normal(1.0, 0.1)
        width_factors = rng.normal(1.0, 0.04, len(word.glyphs))
        if forger is not None:
            width_factors = width_factors * forger.letter_width_factors[word_index]
        points = []
        for glyph_index, glyph in enumerate(word.glyphs):
            glyph = glyph.copy()
            if forger is not None:
                glyph += forger.glyph_offsets[word_index][glyph_index]
                if glyph_index > 0:
                    glyph[:, 1] *= forger.lowercase_height_factor
            # Start the letter where the previous one ended, so the word is one connected stroke.
            origin = cursor - glyph[0, 0] * width_factors[glyph_index] if glyph_index == 0 else cursor
            placed = np.column_stack([origin + glyph[:, 0] * width_factors[glyph_index], glyph[:, 1]])
            points.append(placed if glyph_index == 0 else placed[1:])
            cursor = placed[-1, 0]
        stroke = np.concatenate(points)
        strokes.append(stroke + rng.normal(0.0, jitter, stroke.shape))

    left = min(stroke[:, 0].min() for stroke in strokes)
    bottom = min(stroke[:, 1].min() for stroke in strokes)
    depth = bottom - style.flourish_depth * rng.normal(1.0, 0.08)
    if style.flourish == "underline":
        xs = np.linspace(left - 0.3, cursor + 0.4, 5)
        ys = depth + np.array([0.25, -0.05, 0.0, 0.05, 0.3]) * rng.normal(1.0, 0.15)
        strokes.append(np.column_stack([xs, ys]) + rng.normal(0.0, jitter, (5, 2)))
    elif style.flourish == "tail":
        tail = np.array([[cursor + 0.4, 0.5], [cursor + 0.6, depth + 0.4], [0.5 * (left + cursor), depth],
                         [left + 0.2, depth + 0.3]])
        strokes[-1] = np.concatenate([strokes[-1], tail + rng.normal(0.0, jitter, tail.shape)])
    return strokes


def _catmull_rom(control_points: np.ndarray) -> np.ndarray:
    """Dense points of the centripetal Catmull-Rom spline through control_points.

    The centripetal variant, unlike the uniform one, makes no spurious cusps or loops where control
    points are unevenly spaced.
    """
    padded = np.vstack([2 * control_points[0] - control_points[1], control_points,
                        2 * control_points[-1] - control_points[-2]])
    knot_steps = np.maximum(np.sqrt(np.hypot(*np.diff(padded, axis=0).T)), 1e-3)
    knots = np.concatenate([[0.0], np.cumsum(knot_steps)])
    n_segments = len(control_points) - 1
    index = np.arange(n_segments)
    t0, t1, t2, t3 = (knots[index + k][:, None, None] for k in range(4))
    p0, p1, p2, p3 = (padded[index + k][:, None, :] for k in range(4))
    fraction = np.linspace(0.0, 1.0, _SPLINE_POINTS_PER_SEGMENT, endpoint=False)[None, :, None]
    t = t1 + (t2 - t1) * fraction
    # Barry-Goldman pyramidal formulation.
    a1 = ((t1 - t) * p0 + (t - t0) * p1) / (t1 - t0)
    a2 = ((t2 - t) * p1 + (t - t1) * p2) / (t2 - t1)
    a3 = ((t3 - t) * p2 + (t - t2) * p3) / (t3 - t2)
    b1 = ((t2 - t) * a1 + (t - t0) * a2) / (t2 - t0)
    b2 = ((t3 - t) * a2 + (t - t1) * a3) / (t3 - t1)
    curve = ((t2 - t) * b1 + (t - t1) * b2) / (t2 - t1)
    return np.vstack([curve.reshape(-1, 2), control_points[-1:]])


def _deform(paths: list[np.ndarray], rng: np.random.Generator, elastic_amplitude: float, slant: float,
            rotation_deg: float, x_scale: float, y_scale: float) -> list[np.ndarray]:
    """Smooth elastic warp, baseline bow, slant, rotation and scaling of paths in x-height units."""
    all_points = np.concatenate(paths)
    center = 0.5 * (all_points.min(axis=0) + all_points.max(axis=0))
    half_width = max(0.5 * np.ptp(all_points[:, 0]), 1.0)
    wavelengths = rng.uniform(1.5, 5.0, (2, 3))
    directions = rng.uniform(0.0, 2 * np.pi, (2, 3))
    phases = rng.uniform(0.0, 2 * np.pi, (2, 3))
    amplitudes = rng.normal(0.0, elastic_amplitude, (2, 3))
    bow = rng.normal(0.0, 0.12)
    angle = np.deg2rad(rotation_deg)
    cos_angle, sin_angle = np.cos(angle), np.sin(angle)

    deformed = []
    for path in paths:
        x, y = path[:, 0] - center[0], path[:, 1] - center[1]
        shifts = []
        for axis in range(2):
            along = (x[:, None] * np.cos(directions[axis]) + y[:, None] * np.sin(directions[axis]))
            shifts.append(np.sum(amplitudes[axis] * np.sin(2 * np.pi * along / wavelengths[axis] + phases[axis]),
                                 axis=1))
        x = x + shifts[0]
        y = y + shifts[1] + bow * (x / half_width) ** 2
        x = x + slant * y
        x, y = cos_angle * x - sin_angle * y, sin_angle * x + cos_angle * y
        deformed.append(np.column_stack([x * x_scale, y * y_scale]))
    return deformed


def _resample(path: np.ndarray, spacing_px: float = 1.0) -> np.ndarray:
    """Points evenly spaced along the path, so that noise and pressure profiles are in pixel units."""
    arc = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(path, axis=0).T))])
    n_points = max(int(np.ceil(arc[-1] / spacing_px)) + 1, 2)
    positions = np.linspace(0.0, arc[-1], n_points)
    return np.column_stack([np.interp(positions, arc, path[:, 0]), np.interp(positions, arc, path[:, 1])])


def _smooth_noise(rng: np.random.Generator, length: int, correlation: float) -> np.ndarray:
    """Gaussian-filtered white noise with unit standard deviation."""
    radius = int(np.ceil(3 * correlation))
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / correlation) ** 2)
    white = rng.standard_normal(length + 2 * radius)
    return np.convolve(white, kernel / np.sqrt(np.sum(kernel ** 2)), mode="valid")


def _unit_tangents(path: np.ndarray) -> np.ndarray:
    tangents = np.gradient(path, axis=0)
    return tangents / np.maximum(np.hypot(tangents[:, 0], tangents[:, 1]), 1e-9)[:, None]


def _taper(length: int, taper_px: float) -> np.ndarray:
    """Width factor that rises from thin to full over taper_px at both ends of a stroke."""
    position = np.arange(length, dtype=np.float64)
    ramp = np.clip(np.minimum(position, length - 1 - position) / max(taper_px, 1e-6), 0.0, 1.0)
    return 0.3 + 0.7 * ramp * ramp * (3 - 2 * ramp)


# ----------------------------------------------------------------------------- signatures


def _fit_to_page(paths: list[np.ndarray], scale_px: float, page_margins: np.ndarray, rng: np.random.Generator,
                 margin_px: float) -> tuple[list[np.ndarray], tuple[int, int]]:
    """Paths in image pixels (y down) with CEDAR-like margins, and the page size (height, width).

    page_margins are fractions of the ink's extent; margin_px is added on every side so that thick
    strokes and blobs stay on the page.
    """
    all_points = np.concatenate(paths)
    extent = np.ptp(all_points, axis=0)
    fractions = np.maximum(page_margins + rng.normal(0.0, 1.0, 4) * (0.015, 0.015, 0.08, 0.08), 0.0)
    max_height = min(MAX_HEIGHT, MAX_WIDTH / _MIN_ASPECT_RATIO)  # room to widen a tall page
    scale_px = min(scale_px, (MAX_WIDTH - 2 * margin_px) / ((1 + fractions[0] + fractions[1]) * extent[0]),
                   (max_height - 2 * margin_px) / ((1 + fractions[2] + fractions[3]) * extent[1]))
    ink_width, ink_height = extent * scale_px
    left, right, top, bottom = fractions * (ink_width, ink_width, ink_height, ink_height) + margin_px
    width = ink_width + left + right
    height = ink_height + top + bottom
    if height < MIN_HEIGHT:
        extra = MIN_HEIGHT - height
        top, height = top + extra * rng.uniform(0.3, 0.7), MIN_HEIGHT
    min_width = max(MIN_WIDTH, _MIN_ASPECT_RATIO * height)
    if width < min_width:
        extra = min_width - width
        left, width = left + extra * rng.uniform(0.3, 0.7), min_width
    origin = np.array([all_points[:, 0].min(), all_points[:, 1].max()])
    placed = [np.column_stack([left + (path[:, 0] - origin[0]) * scale_px, top + (origin[1] - path[:, 1]) * scale_px])
              for path in paths]
    return placed, (min(int(np.ceil(height)), MAX_HEIGHT), min(int(np.ceil(width)), MAX_WIDTH))


def _signature_paths(style: _WriterStyle, forger: _ForgerTraits | None, rng: np.random.Generator,
                     margin_px: float) -> tuple[list[np.ndarray], tuple[int, int]]:
    """Pen paths of one signature in page pixels, and the page size (height, width).

    The same writer varies from sample to sample in control points, elastic warp, slant, rotation and
    scale; a forger adds misplaced control points, letter widths and heights, slant, rotation and size.
    """
    jitter, slant, rotation_deg = style.consistency, style.slant, style.rotation_deg
    x_stretch, size, page_margins = style.x_stretch, style.x_height_px, style.page_margins
    if forger is not None:
        jitter *= 1.2
        slant += forger.slant_offset
        rotation_deg += forger.rotation_offset_deg
        x_stretch *= forger.x_stretch_factor
        size *= forger.size_factor
        page_margins = forger.page_margins
    control = _compose_strokes(style, rng, jitter, forger)
    paths = _deform([_catmull_rom(points) for points in control], rng, style.elastic_amplitude,
                    slant=slant + rng.normal(0.0, 0.03),
                    rotation_deg=float(np.clip(rotation_deg + rng.normal(0.0, 1.5), -6.0, 6.0)),
                    x_scale=x_stretch * rng.normal(1.0, 0.03), y_scale=rng.normal(1.0, 0.03))
    return _fit_to_page(paths, size * rng.normal(1.0, 0.05), page_margins, rng, margin_px)


def _genuine_signature(style: _WriterStyle, rng: np.random.Generator, noise_tile: np.ndarray) -> np.ndarray:
    width_px = style.stroke_width_px * rng.uniform(0.85, 1.15)
    paths, page_size = _signature_paths(style, None, rng, margin_px=width_px + 2)

    pen_strokes = []
    for path in paths:
        path = _resample(path)
        tangents = _unit_tangents(path)
        path = path + rng.normal(0.0, 0.1) * np.column_stack([-tangents[:, 1], tangents[:, 0]])
        widths = (width_px * (1 + style.downstroke_pressure * tangents[:, 1])
                  * (1 + style.pressure_variation * _smooth_noise(rng, len(path), 25.0))
                  * _taper(len(path), style.taper_px * rng.uniform(0.8, 1.2)))
        pen_strokes.append((path, widths))
    return _render(pen_strokes, [], page_size, style.ink_level + rng.normal(0.0, 10.0), rng, noise_tile)


def _forged_signature(style: _WriterStyle, forger: _ForgerTraits, rng: np.random.Generator,
                      noise_tile: np.ndarray) -> np.ndarray:
    width_px = style.stroke_width_px * forger.width_factor * rng.uniform(0.85, 1.15)
    paths, page_size = _signature_paths(style, forger, rng, margin_px=2 * width_px + 3)

    pen_strokes, blobs = [], []
    for path in paths:
        path = _resample(path)
        tangents = _unit_tangents(path)
        normals = np.column_stack([-tangents[:, 1], tangents[:, 0]])
        # Slow, careful copying: a shaky line, flatter pressure, blunt ends.
        tremor = forger.tremor_px * rng.uniform(0.7, 1.3) * _smooth_noise(rng, len(path),
                                                                          forger.tremor_correlation_px)
        wobble = forger.wobble_px * _smooth_noise(rng, len(path), 15.0)
        path = path + (tremor + wobble)[:, None] * normals
        widths = (width_px * (1 + 0.3 * style.downstroke_pressure * tangents[:, 1])
                  * (1 + 0.5 * style.pressure_variation * _smooth_noise(rng, len(path), 12.0))
                  * _taper(len(path), 2.0))
        n_lifts = rng.poisson(forger.pen_lift_rate * len(path) / 1500.0) if len(path) > 60 else 0
        lift_points = np.unique(rng.integers(20, len(path) - 20, n_lifts))
        for piece_index, piece in enumerate(np.split(np.arange(len(path)), lift_points)):
            gap = int(rng.integers(2, 7)) if piece_index > 0 else 0
            piece = piece[gap:]
            if len(piece) < 2:
                continue
            offset = rng.normal(0.0, 0.6, 2) if piece_index > 0 else np.zeros(2)
            pen_strokes.append((path[piece] + offset, widths[piece]))
            if piece_index == 0 or rng.random() < 0.6:
                blobs.append((path[piece[0]] + offset, widths[piece[0]] * rng.uniform(0.55, 0.9)))
        if rng.random() < 0.5:
            blobs.append((path[-1], widths[-1] * rng.uniform(0.5, 0.8)))
        for index in rng.integers(0, len(path), rng.poisson(forger.blob_rate * len(path) / 2500.0)):
            blobs.append((path[index], widths[index] * rng.uniform(0.55, 0.85)))
    return _render(pen_strokes, blobs, page_size, forger.ink_level + rng.normal(0.0, 5.0), rng, noise_tile)


# ----------------------------------------------------------------------------- rendering


def _render(pen_strokes: list[tuple[np.ndarray, np.ndarray]], blobs: list[tuple[np.ndarray, float]],
            page_size: tuple[int, int], ink_level: float, rng: np.random.Generator,
            noise_tile: np.ndarray) -> np.ndarray:
    """Grey 8-bit page: antialiased variable-width strokes and ink blobs on shaded, slightly noisy paper."""
    height, width = page_size
    # Aliased drawing at 3x resolution, averaged down, is antialiasing that is several times faster than
    # OpenCV's LINE_AA for thick lines, and gives stroke widths in steps of a third of a pixel.
    coverage = np.zeros((height * _SUPERSAMPLING, width * _SUPERSAMPLING), dtype=np.uint8)
    to_fixed_point = _SUPERSAMPLING * (1 << _FIXED_POINT_BITS)
    for path, widths in pen_strokes:
        points = np.round(path * to_fixed_point).astype(np.int32)
        thickness = np.maximum(np.round(widths * _SUPERSAMPLING), 1).astype(np.int64)
        # OpenCV draws one thickness per call: draw runs of equal thickness, each overlapping the next by a point.
        run_starts = np.concatenate([[0], np.flatnonzero(np.diff(thickness)) + 1])
        run_ends = np.append(run_starts[1:], len(points) - 1)
        for start, end in zip(run_starts, run_ends):
            cv2.polylines(coverage, [points[start:end + 1]], False, 255, int(thickness[start]), cv2.LINE_8,
                          _FIXED_POINT_BITS)
    for center, radius in blobs:
        cv2.circle(coverage, tuple(int(v) for v in np.round(center * to_fixed_point)),
                   round(radius * to_fixed_point), 255, -1, cv2.LINE_8, _FIXED_POINT_BITS)
    for _ in range(rng.poisson(3.0)):  # dust and scanner specks
        center = rng.uniform((0, 0), (width, height)) * to_fixed_point
        cv2.circle(coverage, tuple(int(v) for v in np.round(center)),
                   round(rng.uniform(0.4, 1.2) * to_fixed_point), int(rng.integers(60, 200)), -1,
                   cv2.LINE_8, _FIXED_POINT_BITS)
    ink = cv2.resize(coverage, (width, height), interpolation=cv2.INTER_AREA).astype(np.float32) / np.float32(255)

    # Paper: a shade, a gentle gradient and fibres (all smooth, drawn at low resolution), plus fine grain.
    low_height, low_width = height // 12 + 2, width // 12 + 2
    gradient_x, gradient_y = rng.uniform(-6.0, 6.0, 2)
    smooth_paper = (rng.uniform(212.0, 250.0)
                    + gradient_x * np.linspace(-0.5, 0.5, low_width)[None, :]
                    + gradient_y * np.linspace(-0.5, 0.5, low_height)[:, None]
                    + rng.uniform(0.5, 2.0) * rng.standard_normal((low_height, low_width)))
    paper = cv2.resize(smooth_paper.astype(np.float32), (width, height), interpolation=cv2.INTER_CUBIC)
    row, column = rng.integers(0, _NOISE_TILE_SIZE - height + 1), rng.integers(0, _NOISE_TILE_SIZE - width + 1)
    paper += np.float32(rng.uniform(0.3, 0.9)) * noise_tile[row:row + height, column:column + width]
    page = paper - ink * (paper - np.float32(max(ink_level, 0.0)))
    return cv2.convertScaleAbs(page)  # rounds and saturates to 0..255
