"""Tests of the synthetic signature generator (layout, determinism, safety, realism) and the raw-pixel hardness measure."""

import itertools
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from sigverify.data import synthetic
from sigverify.data.preprocess import PreprocessConfig, preprocess_file
from sigverify.data.synthetic import generate_synthetic_dataset
from sigverify.errors import ConfigError
from sigverify.evaluation.baselines import raw_pixel_baseline, raw_pixel_embeddings

N_WRITERS, N_SAMPLES = 3, 4


def expected_files(n_writers: int, n_samples: int) -> set[str]:
    return ({f"full_org/original_{w}_{n}.png" for w in range(1, n_writers + 1) for n in range(1, n_samples + 1)}
            | {f"full_forg/forgeries_{w}_{n}.png" for w in range(1, n_writers + 1) for n in range(1, n_samples + 1)})


def files_under(folder: Path) -> dict[str, bytes]:
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in folder.rglob("*") if path.is_file()}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return generate_synthetic_dataset(tmp_path_factory.mktemp("synthetic") / "data", N_WRITERS, N_SAMPLES, seed=0,
                                      progress=False)


def test_writes_cedar_layout_and_description(dataset):
    assert set(files_under(dataset)) == expected_files(N_WRITERS, N_SAMPLES) | {"SYNTHETIC.json"}
    description = json.loads((dataset / "SYNTHETIC.json").read_text())
    assert description["generator_version"] == synthetic.GENERATOR_VERSION
    assert (description["n_writers"], description["n_samples"], description["seed"]) == (N_WRITERS, N_SAMPLES, 0)
    assert not dataset.with_name(dataset.name + ".partial").exists()


def test_images_are_grey_8bit_pngs_of_cedar_sizes(dataset):
    for name in expected_files(N_WRITERS, N_SAMPLES):
        with Image.open(dataset / name) as image:
            assert (image.format, image.mode) == ("PNG", "L"), name
            width, height = image.size
            pixels = np.asarray(image)
        assert synthetic.MIN_WIDTH <= width <= synthetic.MAX_WIDTH, name
        assert synthetic.MIN_HEIGHT <= height <= synthetic.MAX_HEIGHT, name
        assert width > height, name
        # Ink on paper: dark strokes on a light background, not a blank page.
        assert np.median(pixels) > 190 and pixels.min() < 130, name


def test_same_arguments_give_identical_bytes_and_another_seed_differs(dataset, tmp_path):
    again = generate_synthetic_dataset(tmp_path / "again", N_WRITERS, N_SAMPLES, seed=0, progress=False)
    assert files_under(again) == files_under(dataset)

    other_seed = files_under(generate_synthetic_dataset(tmp_path / "other", N_WRITERS, N_SAMPLES, seed=1,
                                                        progress=False))
    original = files_under(dataset)
    assert all(other_seed[name] != original[name] for name in expected_files(N_WRITERS, N_SAMPLES))


def test_a_writer_does_not_depend_on_how_many_writers_and_samples_are_made(dataset, tmp_path):
    smaller = files_under(generate_synthetic_dataset(tmp_path / "smaller", 2, 3, seed=0, progress=False))
    original = files_under(dataset)
    for name in expected_files(2, 3):
        assert smaller[name] == original[name], name


def test_refuses_to_overwrite_a_non_empty_folder(dataset):
    before = files_under(dataset)
    with pytest.raises(ConfigError, match=str(dataset)):
        generate_synthetic_dataset(dataset, 1, 2, progress=False)
    assert files_under(dataset) == before


def test_fills_an_existing_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    out = generate_synthetic_dataset(tmp_path / "empty", 1, 2, progress=False)
    assert set(files_under(out)) == expected_files(1, 2) | {"SYNTHETIC.json"}


@pytest.mark.parametrize("arguments", [{"n_writers": 0}, {"n_samples": 0}, {"seed": -1}, {"n_writers": 2.5}])
def test_rejects_bad_arguments(tmp_path, arguments):
    with pytest.raises(ConfigError, match=next(iter(arguments))):
        generate_synthetic_dataset(tmp_path / "data", **{"n_writers": 1, "n_samples": 2, **arguments}, progress=False)
    assert not (tmp_path / "data").exists()


def test_an_interrupted_run_leaves_no_complete_looking_folder(tmp_path, monkeypatch):
    write_png = synthetic._write_png
    written = []

    def fail_after_five(path, image):
        if len(written) == 5:
            raise KeyboardInterrupt
        written.append(path)
        write_png(path, image)

    monkeypatch.setattr(synthetic, "_write_png", fail_after_five)
    with pytest.raises(KeyboardInterrupt):
        generate_synthetic_dataset(tmp_path / "data", 2, 3, progress=False)
    assert not (tmp_path / "data").exists()

    monkeypatch.setattr(synthetic, "_write_png", write_png)
    out = generate_synthetic_dataset(tmp_path / "data", 2, 3, progress=False)
    assert set(files_under(out)) == expected_files(2, 3) | {"SYNTHETIC.json"}
    assert not (tmp_path / "data.partial").exists()


def mean_cosine_distance(first: list[np.ndarray], second: list[np.ndarray]) -> float:
    distances = [1 - a @ b / (np.linalg.norm(a) * np.linalg.norm(b)) for a, b in itertools.product(first, second)
                 if a is not b]
    return float(np.mean(distances))


def raw_pixel_features(path: Path, image_size: int) -> np.ndarray:
    return raw_pixel_embeddings(preprocess_file(path, PreprocessConfig((image_size, image_size)))[None])[0]


@pytest.fixture(scope="module")
def pixel_features(dataset):
    """Raw-pixel ink vectors (Otsu, 64x64) per (writer, "genuine"/"forgery")."""
    features = {}
    for writer in range(1, N_WRITERS + 1):
        features[writer, "genuine"] = [raw_pixel_features(dataset / f"full_org/original_{writer}_{n}.png", 64)
                                       for n in range(1, N_SAMPLES + 1)]
        features[writer, "forgery"] = [raw_pixel_features(dataset / f"full_forg/forgeries_{writer}_{n}.png", 64)
                                       for n in range(1, N_SAMPLES + 1)]
    return features


def test_genuine_signatures_of_one_writer_are_more_alike_than_those_of_different_writers(pixel_features):
    writers = range(1, N_WRITERS + 1)
    same_writer = np.mean([mean_cosine_distance(pixel_features[w, "genuine"], pixel_features[w, "genuine"])
                           for w in writers])
    other_writers = np.mean([mean_cosine_distance(pixel_features[w, "genuine"], pixel_features[v, "genuine"])
                             for w, v in itertools.permutations(writers, 2)])
    assert same_writer < other_writers - 0.05


def test_forgeries_copy_their_writer_but_are_not_genuine(pixel_features):
    writers = range(1, N_WRITERS + 1)
    to_own_writer = np.mean([mean_cosine_distance(pixel_features[w, "forgery"], pixel_features[w, "genuine"])
                             for w in writers])
    to_other_writers = np.mean([mean_cosine_distance(pixel_features[w, "forgery"], pixel_features[v, "genuine"])
                                for w, v in itertools.permutations(writers, 2)])
    genuine_to_genuine = np.mean([mean_cosine_distance(pixel_features[w, "genuine"], pixel_features[w, "genuine"])
                                  for w in writers])
    assert to_own_writer < to_other_writers - 0.05
    assert genuine_to_genuine < to_own_writer


def write_cedar_like(folder: Path, genuine_paper: int, forgery_paper: int) -> Path:
    """Two writers whose genuine and forged images hold the same strokes on paper of the given shades."""
    (folder / "full_org").mkdir(parents=True)
    (folder / "full_forg").mkdir()
    for writer in (1, 2):
        for sample in (1, 2, 3):
            for subfolder, name, paper in (("full_org", "original", genuine_paper),
                                           ("full_forg", "forgeries", forgery_paper)):
                page = np.full((60, 100), paper, np.uint8)
                cv2.line(page, (10, 10 * writer), (90, 50), 20, 3)
                cv2.imwrite(str(folder / subfolder / f"{name}_{writer}_{sample}.png"), page)
    (folder / "full_org" / "Thumbs.db").write_bytes(b"not an image")
    return folder


def test_raw_pixel_baseline_sees_a_background_leak_only_without_binarization(tmp_path):
    folder = write_cedar_like(tmp_path / "leaky", genuine_paper=200, forgery_paper=250)
    leaky = raw_pixel_baseline(folder, image_size=32, binarize=False, test_writers_only=False, cache_dir=tmp_path / "c")
    binarized = raw_pixel_baseline(folder, image_size=32, binarize=True, test_writers_only=False, cache_dir=tmp_path / "c")
    assert leaky["hard_max_accuracy"] == pytest.approx(1.0)
    assert binarized["hard_max_accuracy"] == pytest.approx(0.5)


def test_raw_pixel_baseline_on_synthetic_data_is_between_chance_and_perfect(dataset, tmp_path):
    result = raw_pixel_baseline(dataset, image_size=64, test_writers_only=False, cache_dir=tmp_path)
    assert 0.5 < result["hard_max_accuracy"] < 1.0
