"""Reading datasets: decoding every image mode to grey, indexing both layouts, and naming each bad file."""

import json
import logging
import os
import time

import numpy as np
import pytest
from PIL import Image

from sigverify.data.describe import describe_dataset, format_description
from sigverify.data.images import image_info, read_grey
from sigverify.data.index import detect_layout, read_index
from sigverify.errors import ConfigError, DataError

GREY = np.array([[0, 60, 128], [200, 255, 17]], dtype=np.uint8)


def save_grey_as(grey: np.ndarray, path, mode: str) -> None:
    """Save the same grey content in a given Pillow mode (L, P, RGB, RGBA, LA, I;16)."""
    if mode == "I;16":
        Image.fromarray(grey.astype(np.uint16) * 257).save(path)
    elif mode == "P":
        Image.fromarray(grey).convert("RGB").quantize(256, method=Image.Quantize.MAXCOVERAGE).save(path)
    else:
        Image.fromarray(grey).convert(mode).save(path)


def tiny_png(path, mode: str = "L", seed: int = 0, size_wh=(24, 16)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    grey = np.random.default_rng(seed).integers(0, 256, size_wh[::-1], dtype=np.uint8)
    save_grey_as(grey, path, mode)


def make_cedar(root, writers=(1, 2, 10), samples=(1, 2)):
    """A CEDAR-like folder: genuine L, forgeries P, the last writer RGBA for both (as writers 29/39/55), Thumbs.db."""
    for writer in writers:
        rgba = writer == writers[-1]
        for sample in samples:
            tiny_png(root / "full_org" / f"original_{writer}_{sample}.png", "RGBA" if rgba else "L", writer * 100 + sample)
            tiny_png(root / "full_forg" / f"forgeries_{writer}_{sample}.png", "RGBA" if rgba else "P", writer + sample)
    (root / "full_org" / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0 not an image")
    return root


def make_writer_folders(root, names_by_folder):
    for folder, names in names_by_folder.items():
        for i, name in enumerate(names):
            if name.endswith(".txt"):
                (root / folder / name).write_text("not an image")
            else:
                tiny_png(root / folder / name, seed=i)
    return root


# --- decoding -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["L", "P", "RGB", "RGBA", "LA", "I;16"])
def test_every_mode_decodes_to_the_same_grey(tmp_path, mode):
    path = tmp_path / "x.png"
    save_grey_as(GREY, path, mode)
    assert Image.open(path).mode == mode
    grey = read_grey(path)
    assert grey.dtype == np.uint8 and grey.shape == GREY.shape
    np.testing.assert_array_equal(grey, GREY)


def test_16_bit_grey_is_scaled_not_clipped(tmp_path):
    path = tmp_path / "x.tif"
    Image.fromarray(np.array([[0, 257 * 100, 65535, 300]], dtype=np.uint16)).save(path)
    np.testing.assert_array_equal(read_grey(path), [[0, 100, 255, 1]])


def test_transparency_is_composited_over_white_paper(tmp_path):
    rgba = np.array([[[0, 0, 0, 0], [0, 0, 0, 255], [0, 0, 0, 128], [100, 100, 100, 255]]], dtype=np.uint8)
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(read_grey(tmp_path / "rgba.png"), [[255, 0, 127, 100]])

    palette = Image.new("P", (2, 1))
    palette.putpalette([0, 0, 0, 90, 90, 90])
    palette.putdata([0, 1])
    palette.save(tmp_path / "p.png", transparency=0)
    np.testing.assert_array_equal(read_grey(tmp_path / "p.png"), [[255, 90]])


def test_colour_and_one_bit_images(tmp_path):
    Image.fromarray(np.array([[[255, 0, 0], [0, 0, 255]]], dtype=np.uint8)).save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(read_grey(tmp_path / "rgb.png"), [[76, 29]])  # ITU-R 601-2 luma
    Image.fromarray(np.array([[0, 255, 0]], dtype=np.uint8)).convert("1").save(tmp_path / "bw.png")
    assert Image.open(tmp_path / "bw.png").mode == "1"
    np.testing.assert_array_equal(read_grey(tmp_path / "bw.png"), [[0, 255, 0]])
    Image.fromarray(GREY).save(tmp_path / "x.jpg", quality=100)
    assert np.abs(read_grey(tmp_path / "x.jpg").astype(int) - GREY).max() <= 3


def test_image_info_reads_the_header(tmp_path):
    tiny_png(tmp_path / "x.png", "P", size_wh=(30, 12))
    assert image_info(tmp_path / "x.png") == ("P", 30, 12)


def bad_file(tmp_path, kind: str):
    """Write one kind of bad image file; return its path."""
    path = tmp_path / f"{kind}.png"
    if kind == "missing":
        return path
    if kind == "folder":
        path.mkdir()
        return path
    tiny_png(tmp_path / "valid.png", "L", size_wh=(64, 64))
    valid = (tmp_path / "valid.png").read_bytes()
    if kind == "truncated":
        path.write_bytes(valid[: len(valid) // 2])
    elif kind == "corrupt":
        data = valid.index(b"IDAT") + 20
        path.write_bytes(valid[:data] + bytes(byte ^ 0xFF for byte in valid[data : data + 40]) + valid[data + 40 :])
    elif kind == "damaged-header":
        path.write_bytes(valid[:8] + bytes(200))
    elif kind == "zero-byte":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("not an image\n")
    elif kind == "unreadable":
        path.write_bytes(valid)
        path.chmod(0)
    return path


BAD_KINDS = ["truncated", "corrupt", "damaged-header", "zero-byte", "text", "missing", "folder", "unreadable"]


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_image_raises_data_error_naming_the_file(tmp_path, kind):
    if kind == "unreadable" and os.geteuid() == 0:
        pytest.skip("running as root: chmod 000 does not stop root reading (the 'folder' case covers unreadable paths)")
    path = bad_file(tmp_path, kind)
    with pytest.raises(DataError) as raised:
        read_grey(path)
    assert str(path) in str(raised.value) and "expected" in str(raised.value)


def test_permission_denied_is_named(tmp_path, monkeypatch):
    """What chmod 000 does for a user other than root, simulated so that it also runs as root."""
    path = tmp_path / "x.png"
    tiny_png(path)

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(Image, "open", refuse)
    with pytest.raises(DataError, match="x.png: cannot be read \\(permission denied\\)"):
        read_grey(path)


def test_image_info_names_the_file_too(tmp_path):
    path = bad_file(tmp_path, "text")
    with pytest.raises(DataError, match="text.png"):
        image_info(path)


# --- CEDAR layout ---------------------------------------------------------------------------------------------------

def test_cedar_layout_index(tmp_path, caplog):
    root = make_cedar(tmp_path / "cedar")
    with caplog.at_level(logging.INFO, logger="sigverify.data.index"):
        index = read_index(root)
    assert list(index.columns) == ["path", "writer", "genuine", "sample", "label"]
    assert index["writer"].dtype == np.int64 and index["sample"].dtype == np.int64
    assert index["label"].dtype == np.int64 and index["genuine"].dtype == bool
    assert all(isinstance(path, str) and os.path.isabs(path) and os.path.isfile(path) for path in index["path"])
    assert len(index) == 12 and index.attrs["layout"] == "cedar"
    # sorted by writer (numerically: 10 after 2), genuine first, then sample
    expected_order = [(w, g, s) for w in (1, 2, 10) for g in (True, False) for s in (1, 2)]
    assert list(index[["writer", "genuine", "sample"]].itertuples(index=False, name=None)) == expected_order
    genuine, forged = index[index["genuine"]], index[~index["genuine"]]
    assert (genuine["label"] == genuine["writer"]).all()
    assert (forged["label"] == forged["writer"] + 10).all()
    assert all("original_" in p for p in genuine["path"]) and all("forgeries_" in p for p in forged["path"])
    assert [os.path.basename(p) for p, _ in index.attrs["skipped"]] == ["Thumbs.db"]
    assert "layout cedar detected" in caplog.text and "Thumbs.db" in caplog.text


def test_detect_layout(tmp_path):
    assert detect_layout(make_cedar(tmp_path / "cedar")) == "cedar"
    folders = make_writer_folders(tmp_path / "bhsig", {"1": ["B-S-1-G-01.tif", "B-S-1-F-01.tif"]})
    assert detect_layout(folders) == "writer-folders"


@pytest.mark.parametrize("contents", ["empty", "text-only", "nested-too-deep"])
def test_unrecognised_folder_says_what_it_found_and_what_is_accepted(tmp_path, contents):
    root = tmp_path / "data"
    root.mkdir()
    if contents == "text-only":
        (root / "notes.txt").write_text("hello")
    elif contents == "nested-too-deep":
        tiny_png(root / "Bengali" / "1" / "B-S-1-G-01.png")
    with pytest.raises(DataError) as raised:
        read_index(root)
    message = str(raised.value)
    assert str(root) in message and "cedar" in message and "writer-folders" in message
    assert {"empty": "empty folder", "text-only": "notes.txt", "nested-too-deep": "Bengali"}[contents] in message


def test_missing_dataset_folder(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_index(tmp_path / "nowhere")


@pytest.mark.parametrize("missing", ["full_forg", "full_org"])
def test_cedar_missing_folder_is_named(tmp_path, missing):
    root = make_cedar(tmp_path / "cedar")
    for path in (root / missing).iterdir():
        path.unlink()
    (root / missing).rmdir()
    with pytest.raises(DataError, match=f"{missing}/ is missing.*original_.*forgeries_"):
        read_index(root)


def test_unparseable_name_raises_or_is_skipped(tmp_path):
    root = make_cedar(tmp_path / "cedar")
    odd = root / "full_org" / "original_1_copy.png"
    tiny_png(odd)
    misplaced = root / "full_org" / "forgeries_2_9.png"
    tiny_png(misplaced)
    with pytest.raises(DataError) as raised:
        read_index(root)
    assert str(misplaced) in str(raised.value) and "original_{W}_{N}.png" in str(raised.value)
    assert "1 more" in str(raised.value)

    index = read_index(root, skip_bad=True)
    assert len(index) == 12
    skipped = dict(index.attrs["skipped"])
    assert set(skipped) == {str(odd), str(misplaced), str(root / "full_org" / "Thumbs.db")}
    assert "named like a forgery" in skipped[str(misplaced)]
    assert "original_{W}_{N}.png" in skipped[str(odd)]


def test_duplicate_sample_is_a_bad_entry(tmp_path):
    root = make_cedar(tmp_path / "cedar")
    tiny_png(root / "full_org" / "original_1_01.png")
    with pytest.raises(DataError, match="original_1_1.png.*one file per sample"):
        read_index(root)


def test_cedar_patterns_can_be_replaced(tmp_path):
    root = tmp_path / "cedar"
    tiny_png(root / "full_org" / "orig-3-1.png")
    tiny_png(root / "full_forg" / "forg-3-1.png")
    index = read_index(root, "cedar", r"orig-(?P<writer>\d+)-(?P<sample>\d+)\.png",
                       r"forg-(?P<writer>\d+)-(?P<sample>\d+)\.png")
    assert index["label"].tolist() == [3, 6]
    with pytest.raises(ConfigError, match="writer"):
        read_index(root, "cedar", r"orig-(?P<sample>\d+)\.png")
    with pytest.raises(ConfigError, match="regular expression"):
        read_index(root, "cedar", r"orig-(?P<sample>\d+")
    with pytest.raises(ConfigError, match="layout 'iam'"):
        read_index(root, "iam")


# --- writer-folders layout ------------------------------------------------------------------------------------------

def test_writer_folders_bhsig_names(tmp_path):
    root = make_writer_folders(tmp_path / "Bengali", {
        "1": ["B-S-1-G-01.tif", "B-S-1-G-02.tif", "B-S-1-F-01.tif", "readme.txt"],
        "12": ["B-S-12-F-02.tif", "B-S-12-G-01.tif"],
    })
    index = read_index(root)
    assert index.attrs["layout"] == "writer-folders"
    rows = list(index[["writer", "genuine", "sample", "label"]].itertuples(index=False, name=None))
    assert rows == [(1, True, 1, 1), (1, True, 2, 1), (1, False, 1, 13), (12, True, 1, 12), (12, False, 2, 24)]
    assert [os.path.basename(p) for p, _ in index.attrs["skipped"]] == ["readme.txt"]


def test_writer_folders_gpds_and_hindi_names(tmp_path):
    root = make_writer_folders(tmp_path / "data", {
        "001": ["c-001-01.jpg", "cf-001-01.jpg", "cf-001-02.jpg"],
        "002": ["H-S-2-G-01.tif", "H-S-2-F-01.TIF"],
    })
    index = read_index(root)
    assert index["writer"].tolist() == [1, 1, 1, 2, 2]
    assert index["genuine"].tolist() == [True, False, False, True, False]
    assert index["label"].tolist() == [1, 3, 3, 2, 4]


def test_writer_folders_user_pattern_takes_writer_from_folder(tmp_path):
    root = make_writer_folders(tmp_path / "data", {"0": ["g7.png", "f1.png"], "4": ["g1.png"]})
    index = read_index(root, "writer-folders", r"g(?P<sample>\d+)\.png", r"f(?P<sample>\d+)\.png")
    # writer ids start at 0: forgery labels are shifted by the largest id + 1, so they never equal a genuine label
    assert index.attrs["forgery_label_offset"] == 5
    assert list(index[["writer", "genuine", "sample", "label"]].itertuples(index=False, name=None)) == [
        (0, True, 7, 0), (0, False, 1, 5), (4, True, 1, 4)]


def test_writer_folders_bad_entries(tmp_path):
    root = make_writer_folders(tmp_path / "data", {"1": ["B-S-1-G-01.tif", "B-S-1-F-01.tif"]})
    wrong_folder = root / "1" / "B-S-2-G-01.tif"
    tiny_png(wrong_folder)
    with pytest.raises(DataError, match=r"B-S-2-G-01\.tif.*says writer 2.*folder '1'"):
        read_index(root)
    wrong_folder.unlink()
    unnamed = root / "1" / "scan.png"
    tiny_png(unnamed)
    with pytest.raises(DataError, match=r"scan\.png.*neither the genuine.*B-S-<W>-G-<NN>\.tif"):
        read_index(root)
    loose = root / "B-S-3-G-01.tif"
    tiny_png(loose)
    index = read_index(root, skip_bad=True)
    assert len(index) == 2 and {p for p, _ in index.attrs["skipped"]} == {str(unnamed), str(loose)}


# --- describe -------------------------------------------------------------------------------------------------------

def test_describe_fake_cedar(tmp_path):
    root = make_cedar(tmp_path / "cedar")
    save_grey_as(GREY, root / "full_forg" / "forgeries_1_3.png", "I;16")
    description = describe_dataset(root, progress=False)
    assert json.loads(json.dumps(description)) == description
    assert description["layout"] == "cedar" and description["writers"] == 3
    assert (description["genuine"], description["forgeries"]) == (6, 7)
    assert description["per_writer"] == {"genuine": {"min": 2, "max": 2}, "forgeries": {"min": 2, "max": 3}}
    assert description["modes"] == {"I;16": 1, "L": 4, "P": 4, "RGBA": 4}
    assert description["size_range"] == {"width": [3, 24], "height": [2, 16]}
    assert [os.path.basename(entry["path"]) for entry in description["skipped"]] == ["Thumbs.db"]
    text = format_description(description)
    assert "6 genuine, 7 forgeries" in text and "forgeries 2..3" in text and "Thumbs.db" in text


def test_describe_names_each_bad_image_or_skips_it(tmp_path):
    root = make_cedar(tmp_path / "cedar")
    bad_kinds = [kind for kind in BAD_KINDS if kind not in ("missing", "unreadable")]
    if os.geteuid() != 0:
        bad_kinds.append("unreadable")
    bad_paths = []
    (tmp_path / "bad").mkdir()
    for sample, kind in enumerate(bad_kinds, start=3):
        path = bad_file(tmp_path / "bad", kind)
        path.rename(root / "full_org" / f"original_1_{sample}.png")
        bad_paths.append(str(root / "full_org" / f"original_1_{sample}.png"))
    with pytest.raises(DataError) as raised:
        describe_dataset(root, progress=False)
    assert bad_paths[0] in str(raised.value)

    description = describe_dataset(root, skip_bad_images=True, progress=False)
    skipped = {entry["path"]: entry["reason"] for entry in description["skipped"]}
    assert set(bad_paths) <= set(skipped) and len(skipped) == len(bad_paths) + 1
    assert all("expected" in skipped[path] for path in bad_paths)
    assert description["genuine"] == 6 and description["per_writer"]["genuine"] == {"min": 2, "max": 2}


# --- the real CEDAR -------------------------------------------------------------------------------------------------

def test_cedar_index(cedar_dir):
    index = read_index(cedar_dir)
    assert index.attrs["layout"] == "cedar" and index.attrs["forgery_label_offset"] == 55
    assert index["writer"].nunique() == 55
    assert index["genuine"].sum() == 1320 and (~index["genuine"]).sum() == 1320
    assert sorted(index["label"].unique()) == list(range(1, 111))
    counts = index.groupby(["writer", "genuine"]).size()
    assert (counts == 24).all() and len(counts) == 110
    assert index.equals(index.sort_values(["writer", "genuine", "sample"], ascending=[True, False, True]))


def test_cedar_every_file_format_becomes_one_grey_channel(cedar_dir):
    index = read_index(cedar_dir)
    chosen = index[index["writer"].isin([1, 2, 29, 39, 55]) & index["sample"].isin([1, 24])]
    modes = {}
    for row in chosen.itertuples():
        mode = image_info(row.path)[0]
        modes.setdefault((mode, row.genuine), 0)
        modes[(mode, row.genuine)] += 1
        grey = read_grey(row.path)
        assert grey.dtype == np.uint8 and grey.ndim == 2
        assert 264 <= grey.shape[1] <= 888 and 145 <= grey.shape[0] <= 816
        with Image.open(row.path) as image:
            if image.mode == "RGBA":  # opaque grey stored as RGBA: the grey is the red channel
                np.testing.assert_array_equal(grey, np.asarray(image)[..., 0])
    assert set(modes) == {("L", True), ("P", False), ("RGBA", True), ("RGBA", False)}


def test_cedar_describe(cedar_dir):
    start = time.perf_counter()
    description = describe_dataset(cedar_dir, progress=False)
    seconds = time.perf_counter() - start
    assert (description["writers"], description["genuine"], description["forgeries"]) == (55, 1320, 1320)
    assert description["per_writer"] == {"genuine": {"min": 24, "max": 24}, "forgeries": {"min": 24, "max": 24}}
    assert description["modes"] == {"L": 1248, "P": 1248, "RGBA": 144}
    assert description["size_range"] == {"width": [264, 888], "height": [145, 816]}
    assert description["skipped"] == []
    assert seconds < 60, f"describe on CEDAR took {seconds:.1f} s"
