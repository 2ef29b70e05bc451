"""Describing a dataset by decoding every image: counts, image modes and sizes, and the files that cannot be read.

It finds each bad file before a training run would; `sigverify data describe` prints its result.
"""

from __future__ import annotations

import logging
import os
from collections import Counter

from tqdm import tqdm

from sigverify.data.images import image_info, read_grey
from sigverify.data.index import read_index
from sigverify.errors import DataError

logger = logging.getLogger(__name__)


def describe_dataset(
    data_dir: str | os.PathLike,
    layout: str = "auto",
    skip_bad_images: bool = False,
    progress: bool = True,
    genuine_pattern: str | None = None,
    forgery_pattern: str | None = None,
) -> dict:
    """Index and decode every image of a dataset folder; return a JSON-able summary.

    Keys: data_dir, layout, writers, genuine, forgeries (counts of readable images), per_writer
    ({"genuine": {"min", "max"}, "forgeries": {...}}), modes ({Pillow mode: count}), size_range
    ({"width": [min, max], "height": [min, max]} in pixels), skipped ([{"path", "reason"}]: non-image files, and
    with skip_bad_images the images that cannot be decoded or whose names do not parse).
    A bad image raises DataError naming the file unless skip_bad_images.
    """
    data_dir = os.path.abspath(data_dir)
    index = read_index(data_dir, layout, genuine_pattern, forgery_pattern, skip_bad=skip_bad_images)
    skipped = list(index.attrs["skipped"])
    readable = []
    modes: Counter[str] = Counter()
    widths, heights = [], []
    for row in tqdm(index.itertuples(index=False), total=len(index), desc="Decoding images", unit="image",
                    disable=not progress):
        try:
            mode = image_info(row.path)[0]
            height, width = read_grey(row.path).shape
        except DataError as err:
            if not skip_bad_images:
                raise
            reason = str(err).removeprefix(f"{row.path}: ")
            logger.warning("skipping %s: %s", row.path, reason)
            skipped.append((row.path, reason))
            continue
        readable.append(row)
        modes[mode] += 1
        widths.append(width)
        heights.append(height)
    if not readable:
        raise DataError(f"{data_dir}: none of the {len(index)} indexed images can be "
                        "decoded; expected image files Pillow can read")

    writers = sorted({row.writer for row in readable})
    per_kind = {"genuine": Counter(), "forgeries": Counter()}
    for row in readable:
        per_kind["genuine" if row.genuine else "forgeries"][row.writer] += 1
    return {
        "data_dir": data_dir,
        "layout": index.attrs["layout"],
        "writers": len(writers),
        "genuine": sum(per_kind["genuine"].values()),
        "forgeries": sum(per_kind["forgeries"].values()),
        "per_writer": {
            kind: {"min": min(counts[w] for w in writers), "max": max(counts[w] for w in writers)}
            for kind, counts in per_kind.items()
        },
        "modes": dict(sorted(modes.items())),
        "size_range": {"width": [min(widths), max(widths)], "height": [min(heights), max(heights)]},
        "skipped": [{"path": path, "reason": reason} for path, reason in skipped],
    }


def format_description(description: dict) -> str:
    """The human-readable form of `describe_dataset`'s result."""
    per_writer = description["per_writer"]
    sizes = description["size_range"]
    lines = [
        f"Dataset:    {description['data_dir']} (layout {description['layout']})",
        f"Writers:    {description['writers']}",
        f"Images:     {description['genuine']} genuine, {description['forgeries']} forgeries",
        f"Per writer: genuine {_span(per_writer['genuine'])}, forgeries {_span(per_writer['forgeries'])}",
        "Modes:      " + ", ".join(f"{mode} {count}" for mode, count in description["modes"].items()),
        f"Size (px):  width {sizes['width'][0]}..{sizes['width'][1]}, height {sizes['height'][0]}..{sizes['height'][1]}",
        f"Skipped:    {len(description['skipped'])}",
    ]
    lines += [f"  {entry['path']}: {entry['reason']}" for entry in description["skipped"]]
    return "\n".join(lines)


def _span(counts: dict) -> str:
    return str(counts["min"]) if counts["min"] == counts["max"] else f"{counts['min']}..{counts['max']}"
