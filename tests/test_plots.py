"""Every plot writes a PNG that reads back with the expected shape, without touching pyplot or the backend."""

import sys

import matplotlib
import numpy as np
import pytest
from matplotlib.image import imread

from sigverify.errors import DataError
from sigverify.reporting import plots


@pytest.fixture(autouse=True)
def leaves_matplotlib_state_alone():
    backend = matplotlib.get_backend()
    pyplot_loaded = "matplotlib.pyplot" in sys.modules
    open_figures = sys.modules["matplotlib.pyplot"].get_fignums() if pyplot_loaded else []
    yield
    assert matplotlib.get_backend() == backend
    assert ("matplotlib.pyplot" in sys.modules) == pyplot_loaded
    if pyplot_loaded:
        assert sys.modules["matplotlib.pyplot"].get_fignums() == open_figures


def read_png(path) -> np.ndarray:
    assert path.stat().st_size > 1000
    pixels = imread(path)
    assert pixels.ndim == 3 and pixels.shape[2] in (3, 4)
    assert pixels[..., :3].std() > 0.01  # something was drawn
    return pixels


def width_over_height(pixels: np.ndarray) -> float:
    return pixels.shape[1] / pixels.shape[0]


def fake_embeddings(n_writers: int, per_writer: int, dim: int = 16, seed: int = 0):
    rng = np.random.default_rng(seed)
    writers = np.repeat(np.arange(1, n_writers + 1), per_writer)
    genuine = np.tile(np.arange(per_writer) < per_writer // 2, n_writers)
    embeddings = rng.normal(size=(n_writers, dim))[writers - 1] + 0.3 * rng.normal(size=(len(writers), dim))
    return embeddings.astype(np.float32), writers, genuine


def fake_pair_distances(n: int = 60, seed: int = 0):
    rng = np.random.default_rng(seed)
    same = np.repeat([1, 0], n // 2)
    return np.abs(rng.normal(0.5 - 0.2 * same, 0.1)), same


def test_umap_on_40_points(tmp_path):
    embeddings, writers, genuine = fake_embeddings(4, 10)
    pixels = read_png(plots.plot_umap(embeddings, writers, genuine, tmp_path / "umap.png"))
    assert 1.0 < width_over_height(pixels) < 2.0


def test_umap_falls_back_to_pca_below_ten_points(tmp_path):
    embeddings, writers, genuine = fake_embeddings(2, 3)
    read_png(plots.plot_umap(embeddings, writers, genuine, tmp_path / "nested" / "umap.png"))


def test_umap_refuses_mismatched_inputs(tmp_path):
    embeddings, writers, genuine = fake_embeddings(2, 3)
    with pytest.raises(DataError):
        plots.plot_umap(embeddings, writers[:-1], genuine, tmp_path / "umap.png")


@pytest.mark.parametrize("threshold", [None, 0.4])
def test_distance_density(tmp_path, threshold):
    distances, same = fake_pair_distances()
    pixels = read_png(plots.plot_distance_density(distances, same, tmp_path / "density.png", threshold=threshold))
    assert width_over_height(pixels) > 1.3


def test_distance_density_with_degenerate_classes(tmp_path):
    # one genuine pair and identical negatives: no KDE is defined, histograms are drawn instead
    read_png(plots.plot_distance_density([0.1, 0.5, 0.5, 0.5], [1, 0, 0, 0], tmp_path / "density.png"))


def test_distance_density_overlay(tmp_path):
    curves = {"model A": fake_pair_distances(seed=1), "model B": fake_pair_distances(seed=2)}
    read_png(plots.plot_distance_density_overlay(curves, tmp_path / "overlay.png"))


def test_roc_has_two_panels(tmp_path):
    from sigverify.evaluation.metrics import verification_metrics

    metrics = verification_metrics(*fake_pair_distances())
    roc = metrics["roc"]
    pixels = read_png(plots.plot_roc(roc["fpr"], roc["tpr"], roc["thresholds"], tmp_path / "roc.png", eer=metrics["eer"]))
    assert width_over_height(pixels) > 1.8


@pytest.mark.parametrize("as_table", [False, True])
def test_history(tmp_path, as_table):
    history = {"loss": [1.0, 0.7, 0.5], "val_loss": [1.1, 0.9, 0.8], "learning_rate": [1e-3, 7e-4, 4.9e-4]}
    if as_table:
        import pandas as pd

        history = pd.DataFrame(history).assign(epoch=[0, 1, 2])
    read_png(plots.plot_history(history, tmp_path / "history.png"))


def test_history_without_a_loss_is_refused(tmp_path):
    with pytest.raises(DataError, match="loss"):
        plots.plot_history({"accuracy": [0.5, 0.6]}, tmp_path / "history.png")


def test_gradcam_grid(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(2, 40, 80), dtype=np.uint8)
    heatmaps = [[rng.random((5, 5)), rng.random((10, 20)), np.zeros((3, 3))] for _ in images]
    pixels = read_png(plots.plot_gradcam(images, heatmaps, ["layer a", "layer b", "layer c"], tmp_path / "cam.png"))
    assert width_over_height(pixels) > 2.0  # 2 rows of 4 wide cells


def test_gradcam_refuses_missing_maps(tmp_path):
    images = np.zeros((2, 8, 8), dtype=np.uint8)
    with pytest.raises(DataError):
        plots.plot_gradcam(images, [[np.ones((2, 2))]], ["layer"], tmp_path / "cam.png")


def test_embedding_3d(tmp_path):
    embeddings, writers, genuine = fake_embeddings(4, 6)
    read_png(plots.plot_embedding_3d(embeddings, writers, genuine, tmp_path / "3d.png"))
    read_png(plots.plot_embedding_3d(embeddings[:2, :2], writers[:2], genuine[:2], tmp_path / "tiny.png"))


def test_accuracy_vs_size(tmp_path):
    pixels = read_png(
        plots.plot_accuracy_vs_size(["a", "b", "c"], [1.3e6, 9.3e6, 2.5e7], [0.7, 0.82, 0.76], tmp_path / "size.png")
    )
    assert width_over_height(pixels) > 1.3
