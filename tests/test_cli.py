"""The `sigverify` command as a user meets it: data describe / synthetic / baseline, and bad input as one line with
exit code 2 and no traceback."""

import json

import pytest

from sigverify.cli import main


def test_describe_cedar_json(cedar_dir, capsys):
    assert main(["data", "describe", "--data", str(cedar_dir), "--json"]) == 0
    description = json.loads(capsys.readouterr().out)
    assert description["layout"] == "cedar" and description["writers"] == 55
    assert description["genuine"] == 1320 and description["forgeries"] == 1320
    for key in ("layout", "writers", "genuine", "forgeries", "skipped"):
        assert key in description


def test_synthetic_is_byte_identical_for_the_same_arguments(tmp_path, capsys):
    for name in ("a", "b"):
        assert main(["data", "synthetic", "--out", str(tmp_path / name), "--writers", "3", "--samples", "3",
                     "--seed", "5"]) == 0
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.png"))
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*.png"))
    assert files_a == files_b and len(files_a) == 18
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files_a)


def test_baseline_on_a_small_synthetic_set(tmp_path, capsys):
    main(["data", "synthetic", "--out", str(tmp_path / "s"), "--writers", "10", "--samples", "4"])
    capsys.readouterr()
    assert main(["data", "baseline", "--data", str(tmp_path / "s"), "--image-size", "32",
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert 0.0 <= result["hard_max_accuracy"] <= 1.0 and 0.0 <= result["easy_max_accuracy"] <= 1.0
    assert result["n_pairs"]["hard"] == 2 * 12 and len(result["writers"]) == 2


@pytest.mark.parametrize("make_bad, expected", [
    (lambda d: (d / "full_org" / "original_1_2.png").write_bytes(b""), "original_1_2.png"),
    (lambda d: (d / "full_org" / "original_1_2.png").write_text("hello, not an image"), "original_1_2.png"),
    (lambda d: (d / "full_org" / "original_1_2.png").write_bytes(
        (d / "full_org" / "original_1_2.png").read_bytes()[:200]), "original_1_2.png"),
    (lambda d: (d / "full_org" / "original_x_2.png").write_bytes(b"x"), "original_x_2.png"),
])
def test_describe_names_the_bad_file(tmp_path, make_bad, expected, capsys):
    main(["data", "synthetic", "--out", str(tmp_path / "s"), "--writers", "2", "--samples", "3"])
    make_bad(tmp_path / "s")
    capsys.readouterr()
    assert main(["data", "describe", "--data", str(tmp_path / "s")]) == 2
    assert expected in capsys.readouterr().err
    assert main(["data", "describe", "--data", str(tmp_path / "s"), "--skip-bad-images", "--json"]) == 0
    assert any(expected in item["path"] for item in json.loads(capsys.readouterr().out)["skipped"])


def test_missing_forgery_folder_and_empty_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["data", "describe", "--data", str(tmp_path / "empty")]) == 2
    assert "empty" in capsys.readouterr().err
    (tmp_path / "half" / "full_org").mkdir(parents=True)
    assert main(["data", "describe", "--data", str(tmp_path / "half")]) == 2
    assert "full_forg" in capsys.readouterr().err


def test_synthetic_refuses_to_overwrite(tmp_path, capsys):
    target = tmp_path / "s"
    target.mkdir()
    (target / "keep.txt").write_text("earlier work")
    assert main(["data", "synthetic", "--out", str(target), "--writers", "2", "--samples", "2"]) == 2
    assert (target / "keep.txt").read_text() == "earlier work"
    assert str(target) in capsys.readouterr().err
