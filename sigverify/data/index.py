"""Reading a dataset folder into an index: a DataFrame with a row per image (path, writer, genuine, sample, label).

The index comes from file names alone and decodes no image, so it is cheap; `describe_dataset` and the preprocessing
cache decode the files (with `read_grey`) and find the damaged ones.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from sigverify.data.images import has_image_extension
from sigverify.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

LAYOUTS = ("cedar", "writer-folders")
INDEX_COLUMNS = ("path", "writer", "genuine", "sample", "label")

CEDAR_GENUINE_FOLDER = "full_org"
CEDAR_FORGERY_FOLDER = "full_forg"
CEDAR_GENUINE_PATTERN = r"original_(?P<writer>\d+)_(?P<sample>\d+)\.png"
CEDAR_FORGERY_PATTERN = r"forgeries_(?P<writer>\d+)_(?P<sample>\d+)\.png"

_WRITER_FOLDERS_EXTENSION = r"\.(?i:tiff?|jpe?g|png|bmp)"
# BHSig260 (B- Bengali, H- Hindi): <W>/B-S-<W>-G-<NN>.tif; GPDS: <W>/c-<WWW>-<NN>.jpg, forgeries cf-.
WRITER_FOLDERS_GENUINE_PATTERNS = (
    r"[BH]-S-(?P<writer>\d+)-G-(?P<sample>\d+)" + _WRITER_FOLDERS_EXTENSION,
    r"c-(?P<writer>\d+)-(?P<sample>\d+)" + _WRITER_FOLDERS_EXTENSION,
)
WRITER_FOLDERS_FORGERY_PATTERNS = (
    r"[BH]-S-(?P<writer>\d+)-F-(?P<sample>\d+)" + _WRITER_FOLDERS_EXTENSION,
    r"cf-(?P<writer>\d+)-(?P<sample>\d+)" + _WRITER_FOLDERS_EXTENSION,
)

ACCEPTED_LAYOUTS = (
    "cedar: full_org/original_{W}_{N}.png (genuine) and full_forg/forgeries_{W}_{N}.png (forgeries); "
    "writer-folders: one folder per writer holding its genuine and forged images, named like "
    "B-S-1-G-01.tif / B-S-1-F-01.tif (BHSig260, H-S- for Hindi) or c-001-01.jpg / cf-001-01.jpg (GPDS), "
    "or as the genuine/forgery file-name patterns given"
)


@dataclass(frozen=True)
class _NamePatterns:
    """The file-name regexes of one kind of image (genuine or forgery) and how to describe them in an error."""

    kind: str
    regexes: tuple[re.Pattern, ...]
    description: str

    def match(self, file_name: str) -> dict | None:
        for regex in self.regexes:
            found = regex.fullmatch(file_name)
            if found:
                return found.groupdict()
        return None


def detect_layout(data_dir: str | os.PathLike) -> str:
    """Name the layout of a dataset folder ("cedar" or "writer-folders"), logging which one was found and why."""
    data_dir = _existing_folder(data_dir)
    entries = _list_folder(data_dir)
    names = {entry.name for entry in entries}
    if CEDAR_GENUINE_FOLDER in names or CEDAR_FORGERY_FOLDER in names:
        logger.info("%s: layout cedar detected (%s/ or %s/ found)", data_dir, CEDAR_GENUINE_FOLDER, CEDAR_FORGERY_FOLDER)
        return "cedar"
    writer_folders = [entry for entry in entries if _is_visible_folder(entry) and _holds_image_files(entry)]
    if writer_folders:
        logger.info("%s: layout writer-folders detected (%d folders holding image files)", data_dir, len(writer_folders))
        return "writer-folders"
    raise DataError(f"{data_dir}: no dataset layout recognised; found {_describe_contents(entries)}. "
                    f"Accepted layouts: {ACCEPTED_LAYOUTS}")


def read_index(
    data_dir: str | os.PathLike,
    layout: str = "auto",
    genuine_pattern: str | None = None,
    forgery_pattern: str | None = None,
    skip_bad: bool = False,
) -> pd.DataFrame:
    """Index every image of a dataset folder, sorted by (writer, genuine first, sample).

    Columns: path (absolute), writer, genuine, sample, label; label is the writer id for a genuine image and writer id
    + the largest writer id for a forgery (w + 55 on CEDAR; + the largest id + 1 when an id is 0, so labels stay apart).
    `genuine_pattern` / `forgery_pattern` replace the layout's file-name regexes (named groups `sample`, and `writer`,
    which is optional in writer-folders where the folder name gives it). Non-image files (Thumbs.db) are skipped with a
    log note; an image whose name does not parse raises DataError, or with skip_bad=True is skipped.
    `df.attrs`: "layout", "skipped" (list of (path, reason)), "forgery_label_offset".
    """
    data_dir = _existing_folder(data_dir)
    if layout == "auto":
        layout = detect_layout(data_dir)
    elif layout not in LAYOUTS:
        raise ConfigError(f"layout {layout!r} is not known; expected one of: auto, {', '.join(LAYOUTS)}")
    else:
        logger.info("%s: reading as layout %s", data_dir, layout)

    notes: list[tuple[str, str]] = []
    bad: list[tuple[str, str]] = []
    if layout == "cedar":
        genuine = _patterns("genuine", genuine_pattern, (CEDAR_GENUINE_PATTERN,), "original_{W}_{N}.png", True)
        forgery = _patterns("forgery", forgery_pattern, (CEDAR_FORGERY_PATTERN,), "forgeries_{W}_{N}.png", True)
        rows = _read_cedar(data_dir, genuine, forgery, notes, bad)
    else:
        genuine = _patterns("genuine", genuine_pattern, WRITER_FOLDERS_GENUINE_PATTERNS,
                            "<W>/B-S-<W>-G-<NN>.tif, <W>/H-S-<W>-G-<NN>.tif or <W>/c-<WWW>-<NN>.jpg", False)
        forgery = _patterns("forgery", forgery_pattern, WRITER_FOLDERS_FORGERY_PATTERNS,
                            "<W>/B-S-<W>-F-<NN>.tif, <W>/H-S-<W>-F-<NN>.tif or <W>/cf-<WWW>-<NN>.jpg", False)
        rows = _read_writer_folders(data_dir, genuine, forgery, notes, bad)
    rows = _drop_duplicates(rows, bad)

    for path, reason in notes:
        logger.info("skipping %s: %s", path, reason)
    if bad and not skip_bad:
        first_path, first_reason = bad[0]
        more = f" ({len(bad) - 1} more files with problems)" if len(bad) > 1 else ""
        raise DataError(f"{first_path}: {first_reason}{more}")
    for path, reason in bad:
        logger.warning("skipping %s: %s", path, reason)
    if not rows:
        raise DataError(f"{data_dir}: no images found for layout {layout}; expected {ACCEPTED_LAYOUTS}")
    return _index_frame(rows, layout, skipped=notes + bad)


def _existing_folder(data_dir: str | os.PathLike) -> Path:
    data_dir = Path(os.path.abspath(data_dir))
    if not data_dir.exists():
        raise DataError(f"{data_dir}: dataset folder not found; expected a folder with one of the layouts: "
                        f"{ACCEPTED_LAYOUTS}")
    if not data_dir.is_dir():
        raise DataError(f"{data_dir}: is a file; expected a dataset folder")
    return data_dir


def _list_folder(folder: Path) -> list[Path]:
    try:
        return sorted(folder.iterdir())
    except OSError as err:
        raise DataError(f"{folder}: cannot list the folder ({err.strerror}); expected a readable folder") from err


def _is_visible_folder(entry: Path) -> bool:
    return entry.is_dir() and not entry.name.startswith(".")


def _holds_image_files(folder: Path) -> bool:
    return any(entry.is_file() and has_image_extension(entry) for entry in _list_folder(folder))


def _describe_contents(entries: list[Path]) -> str:
    if not entries:
        return "an empty folder"
    files = [entry.name for entry in entries if not entry.is_dir()]
    folders = [entry.name for entry in entries if entry.is_dir()]
    parts = []
    if files:
        parts.append(f"{len(files)} files ({_first_names(files)})")
    if folders:
        parts.append(f"{len(folders)} folders ({_first_names(folders)}) with no image files directly inside")
    return " and ".join(parts)


def _first_names(names: list[str], shown: int = 5) -> str:
    return ", ".join(names[:shown]) + (", ..." if len(names) > shown else "")


def _patterns(kind: str, user_pattern: str | None, defaults: tuple[str, ...], default_description: str,
              writer_required: bool) -> _NamePatterns:
    option = f"{kind}_pattern"
    if user_pattern is None:
        return _NamePatterns(kind, tuple(re.compile(pattern) for pattern in defaults), default_description)
    try:
        regex = re.compile(user_pattern)
    except re.error as err:
        raise ConfigError(f"{option} {user_pattern!r} is not a valid regular expression ({err})") from err
    required = ("writer", "sample") if writer_required else ("sample",)
    missing = [group for group in required if group not in regex.groupindex]
    if missing:
        groups = " and ".join(f"(?P<{group}>...)" for group in missing)
        raise ConfigError(f"{option} {user_pattern!r} has no named group {groups}; expected a regex whose named "
                          f"groups give the {' and '.join(required)} number")
    return _NamePatterns(kind, (regex,), f"the regex {user_pattern!r}")


def _image_entries(folder: Path, notes: list[tuple[str, str]]) -> list[Path]:
    """The entries of a folder named like images; everything else goes into `notes` with the reason."""
    images = []
    for entry in _list_folder(folder):
        if entry.name.startswith("."):
            notes.append((str(entry), "hidden file, not a dataset image"))
        elif not has_image_extension(entry):
            reason = "a folder, not read" if entry.is_dir() else f"not an image file (extension {entry.suffix or 'none'})"
            notes.append((str(entry), reason))
        else:
            images.append(entry)
    return images


def _read_cedar(data_dir: Path, genuine: _NamePatterns, forgery: _NamePatterns,
                notes: list[tuple[str, str]], bad: list[tuple[str, str]]) -> list[dict]:
    for folder_name in (CEDAR_GENUINE_FOLDER, CEDAR_FORGERY_FOLDER):
        if not (data_dir / folder_name).is_dir():
            raise DataError(f"{data_dir}: folder {folder_name}/ is missing; the cedar layout expects "
                            f"{CEDAR_GENUINE_FOLDER}/original_{{W}}_{{N}}.png and "
                            f"{CEDAR_FORGERY_FOLDER}/forgeries_{{W}}_{{N}}.png")
    rows = []
    for folder_name, own, other in ((CEDAR_GENUINE_FOLDER, genuine, forgery), (CEDAR_FORGERY_FOLDER, forgery, genuine)):
        for entry in _image_entries(data_dir / folder_name, notes):
            groups = own.match(entry.name)
            if groups is None:
                hint = f" (it is named like a {other.kind} image)" if other.match(entry.name) else ""
                reason = f"file name does not match {own.description}, expected for {own.kind} images in {folder_name}/"
                bad.append((str(entry), reason + hint))
                continue
            rows.append(_row(entry, int(groups["writer"]), own.kind == "genuine", int(groups["sample"])))
    return rows


def _read_writer_folders(data_dir: Path, genuine: _NamePatterns, forgery: _NamePatterns,
                         notes: list[tuple[str, str]], bad: list[tuple[str, str]]) -> list[dict]:
    rows = []
    for entry in _list_folder(data_dir):
        if entry.name.startswith("."):
            notes.append((str(entry), "hidden, not read"))
        elif entry.is_dir():
            rows.extend(_read_writer_folder(entry, genuine, forgery, notes, bad))
        elif has_image_extension(entry):
            bad.append((str(entry), "image outside a writer folder; the writer-folders layout expects <writer>/<file>"))
        else:
            notes.append((str(entry), f"not an image file (extension {entry.suffix or 'none'})"))
    return rows


def _read_writer_folder(folder: Path, genuine: _NamePatterns, forgery: _NamePatterns,
                        notes: list[tuple[str, str]], bad: list[tuple[str, str]]) -> list[dict]:
    folder_writer = int(folder.name) if re.fullmatch(r"[0-9]+", folder.name) else None
    rows = []
    for entry in _image_entries(folder, notes):
        genuine_groups, forgery_groups = genuine.match(entry.name), forgery.match(entry.name)
        if genuine_groups and forgery_groups:
            reason = (f"file name matches both the genuine ({genuine.description}) and the forgery "
                      f"({forgery.description}) patterns; expected exactly one")
            bad.append((str(entry), reason))
            continue
        groups = genuine_groups or forgery_groups
        if groups is None:
            reason = (f"file name matches neither the genuine ({genuine.description}) nor the forgery "
                      f"({forgery.description}) pattern")
            bad.append((str(entry), reason))
            continue
        name_writer = int(groups["writer"]) if groups.get("writer") is not None else None
        if name_writer is None and folder_writer is None:
            reason = (f"cannot tell the writer: folder name {folder.name!r} is not a number and the file-name "
                      "pattern has no (?P<writer>...) group")
            bad.append((str(entry), reason))
            continue
        if name_writer is not None and folder_writer is not None and name_writer != folder_writer:
            reason = f"file name says writer {name_writer} but the file lies in folder {folder.name!r}"
            bad.append((str(entry), reason + "; expected the writer's own folder"))
            continue
        writer = name_writer if name_writer is not None else folder_writer
        rows.append(_row(entry, writer, genuine_groups is not None, int(groups["sample"])))
    return rows


def _row(path: Path, writer: int, genuine: bool, sample: int) -> dict:
    return {"path": str(path), "writer": writer, "genuine": genuine, "sample": sample}


def _drop_duplicates(rows: list[dict], bad: list[tuple[str, str]]) -> list[dict]:
    """Keep the first file of each (writer, genuine, sample); a second one is a bad entry (e.g. x_1_1 and x_1_01)."""
    first_path: dict[tuple, str] = {}
    kept = []
    for row in rows:
        key = (row["writer"], row["genuine"], row["sample"])
        if key in first_path:
            kind = "genuine" if row["genuine"] else "forgery"
            reason = f"same writer {key[0]}, {kind} sample {key[2]} as {first_path[key]}"
            bad.append((row["path"], reason + "; expected one file per sample"))
        else:
            first_path[key] = row["path"]
            kept.append(row)
    return kept


def _index_frame(rows: list[dict], layout: str, skipped: list[tuple[str, str]]) -> pd.DataFrame:
    index = pd.DataFrame(rows, columns=["path", "writer", "genuine", "sample"])
    index = index.astype({"writer": "int64", "genuine": bool, "sample": "int64"})
    largest_writer = int(index["writer"].max())
    forgery_label_offset = largest_writer + 1 if int(index["writer"].min()) == 0 else largest_writer
    index["label"] = index["writer"].where(index["genuine"], index["writer"] + forgery_label_offset).astype("int64")
    index = index.sort_values(["writer", "genuine", "sample"], ascending=[True, False, True], kind="stable")
    index = index.reset_index(drop=True)[list(INDEX_COLUMNS)]
    index.attrs["layout"] = layout
    index.attrs["skipped"] = list(skipped)
    index.attrs["forgery_label_offset"] = forgery_label_offset
    return index
