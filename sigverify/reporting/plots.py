"""Figures of a run as PNG files: embedding maps (UMAP, 3-D PCA), pair-distance densities, ROC with FAR/FRR, training
history, Grad-CAM grids and accuracy against model size.

Each function takes arrays and an output path, writes the file and returns the path. Figures are built on
`matplotlib.figure.Figure` with the Agg canvas, never through pyplot, so the caller's backend and open figures are
left alone and nothing stays in memory after the call.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import EngFormatter, LogLocator, PercentFormatter
from scipy.stats import gaussian_kde
from sklearn.decomposition import PCA

from sigverify.errors import DataError

DPI = 120
MIN_POINTS_FOR_UMAP = 10
MAX_WRITERS_IN_LEGEND = 20
GENUINE_MARKER = "o"
FORGERY_MARKER = "X"
POSITIVE_COLOR = "tab:blue"
NEGATIVE_COLOR = "tab:red"


def _new_figure(width_in: float, height_in: float) -> Figure:
    figure = Figure(figsize=(width_in, height_in), dpi=DPI)
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=DPI, bbox_inches="tight")
    figure.clear()
    return path


def _writer_colors(writers: np.ndarray) -> dict:
    unique_writers = np.unique(writers)
    palette = colormaps["tab20" if len(unique_writers) > 10 else "tab10"].colors
    return {writer: palette[i % len(palette)] for i, writer in enumerate(unique_writers)}


def _scatter_by_writer(axes, points: np.ndarray, writers: np.ndarray, genuine: np.ndarray, **scatter_kwargs) -> None:
    """One colour per writer, circles for genuine signatures and crosses for forgeries, with a legend for both."""
    colors = _writer_colors(writers)
    for writer, color in colors.items():
        for is_genuine, marker in ((True, GENUINE_MARKER), (False, FORGERY_MARKER)):
            chosen = (writers == writer) & (genuine == is_genuine)
            if chosen.any():
                axes.scatter(*points[chosen].T, color=color, marker=marker, edgecolors="none", **scatter_kwargs)
    kind_handles = [
        Line2D([], [], color="grey", marker=GENUINE_MARKER, linestyle="", label="genuine"),
        Line2D([], [], color="grey", marker=FORGERY_MARKER, linestyle="", label="forgery"),
    ]
    writer_handles = []
    if len(colors) <= MAX_WRITERS_IN_LEGEND:
        writer_handles = [
            Line2D([], [], color=color, marker="s", linestyle="", label=f"writer {writer}")
            for writer, color in colors.items()
        ]
    axes.legend(handles=kind_handles + writer_handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")


def _checked_points(embeddings, writers, genuine) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    embeddings = np.asarray(embeddings, dtype=np.float64)
    writers = np.asarray(writers).ravel()
    genuine = np.asarray(genuine).ravel().astype(bool)
    if embeddings.ndim != 2 or not (len(embeddings) == len(writers) == len(genuine)):
        raise DataError(
            f"embeddings {embeddings.shape}, writers ({len(writers)},) and genuine ({len(genuine)},) do not match: "
            "expected an N×D array and N writers and N genuine flags"
        )
    return embeddings, writers, genuine


def _pca(embeddings: np.ndarray, n_components: int) -> np.ndarray:
    """PCA coordinates, padded with zeros when there are fewer points or dimensions than components."""
    fitted_components = max(1, min(n_components, *embeddings.shape))
    points = PCA(n_components=fitted_components).fit_transform(embeddings)
    return np.pad(points, ((0, 0), (0, n_components - fitted_components)))


def plot_umap(
    embeddings, writers, genuine, path, title: str = "UMAP of signature embeddings", random_state: int = 42
) -> Path:
    """2-D UMAP map of the embeddings (cosine metric): colour = writer, circle = genuine, cross = forgery.

    Below 10 points UMAP is not meaningful and PCA is drawn instead, which the title says.
    """
    embeddings, writers, genuine = _checked_points(embeddings, writers, genuine)
    if len(embeddings) < MIN_POINTS_FOR_UMAP:
        points = _pca(embeddings, 2)
        title = f"{title}\n(PCA: too few points for UMAP, {len(embeddings)} < {MIN_POINTS_FOR_UMAP})"
        axis_name = "PCA"
    else:
        import umap  # imported here: umap-learn takes many seconds to import and compile

        reducer = umap.UMAP(
            n_components=2,
            n_neighbors=min(15, len(embeddings) - 1),
            metric="cosine",
            random_state=random_state,
        )
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*n_jobs value.*overridden.*")
            points = reducer.fit_transform(embeddings)
        axis_name = "UMAP"
    figure = _new_figure(8.5, 6.5)
    axes = figure.add_subplot()
    _scatter_by_writer(axes, points, writers, genuine, s=28, alpha=0.8)
    axes.set_title(title)
    axes.set_xlabel(f"{axis_name} 1")
    axes.set_ylabel(f"{axis_name} 2")
    return _save(figure, path)


def _density_curve(values: np.ndarray, grid: np.ndarray) -> np.ndarray | None:
    """Gaussian KDE of `values` on `grid`, or None where a KDE is undefined (under two points, or all equal)."""
    if len(values) < 2 or np.ptp(values) == 0:
        return None
    return gaussian_kde(values)(grid)


def _distance_grid(distances: np.ndarray) -> np.ndarray:
    low, high = float(distances.min()), float(distances.max())
    margin = 0.1 * (high - low) if high > low else 0.05
    # distances are rarely negative: the curves then start at 0 instead of leaking KDE mass below it
    start = max(low - margin, 0.0) if low >= 0 else low - margin
    return np.linspace(start, high + margin, 400)


def _draw_density(axes, values: np.ndarray, grid: np.ndarray, color, label: str, linestyle: str = "-") -> None:
    curve = _density_curve(values, grid)
    if curve is None:
        axes.hist(values, bins=20, range=(grid[0], grid[-1]), density=True, color=color, alpha=0.4, label=label)
        return
    axes.plot(grid, curve, color=color, linestyle=linestyle, label=label)
    if linestyle == "-":
        axes.fill_between(grid, curve, color=color, alpha=0.15)


def _split_by_label(distances, same) -> tuple[np.ndarray, np.ndarray]:
    distances = np.asarray(distances, dtype=np.float64).ravel()
    same = np.asarray(same).ravel()
    if distances.shape != same.shape:
        raise DataError(f"got {distances.size} distances but {same.size} pair labels: expected one label per distance")
    return distances[same == 1], distances[same == 0]


def plot_distance_density(
    distances,
    same,
    path,
    threshold: float | None = None,
    title: str = "Distances between embeddings of signature pairs",
    negative_label: str = "skilled forgery",
) -> Path:
    """Density of pair distances, genuine–genuine pairs against negative pairs, with the decision threshold."""
    positive, negative = _split_by_label(distances, same)
    grid = _distance_grid(np.concatenate([positive, negative]))
    figure = _new_figure(8, 4.5)
    axes = figure.add_subplot()
    _draw_density(axes, positive, grid, POSITIVE_COLOR, f"genuine – genuine ({len(positive)} pairs)")
    _draw_density(axes, negative, grid, NEGATIVE_COLOR, f"genuine – {negative_label} ({len(negative)} pairs)")
    if threshold is not None:
        axes.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.3f} (same writer if ≤)")
    axes.set_title(title)
    axes.set_xlabel("distance between the two embeddings of a pair")
    axes.set_ylabel("density")
    axes.set_ylim(bottom=0)
    axes.legend()
    return _save(figure, path)


def plot_distance_density_overlay(
    curves: dict, path, title: str = "Pair distances by model", negative_label: str = "negative"
) -> Path:
    """Densities of several models' pair distances on one axis: `curves` maps a model name to (distances, same).

    Each model has one colour; genuine–genuine pairs are solid, negative pairs dashed.
    """
    if not curves:
        raise DataError("no model to plot: expected a dict of model name -> (distances, same)")
    split = {name: _split_by_label(distances, same) for name, (distances, same) in curves.items()}
    grid = _distance_grid(np.concatenate([np.concatenate(pair) for pair in split.values()]))
    colors = colormaps["tab10"].colors
    figure = _new_figure(9, 5)
    axes = figure.add_subplot()
    for i, (name, (positive, negative)) in enumerate(split.items()):
        color = colors[i % len(colors)]
        _draw_density(axes, positive, grid, color, f"{name}: genuine – genuine", linestyle="-")
        _draw_density(axes, negative, grid, color, f"{name}: genuine – {negative_label}", linestyle="--")
    axes.set_title(f"{title}\n(solid: genuine – genuine pairs, dashed: genuine – {negative_label} pairs)")
    axes.set_xlabel("distance between the two embeddings of a pair")
    axes.set_ylabel("density")
    axes.set_ylim(bottom=0)
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    return _save(figure, path)


def plot_roc(
    fpr,
    tpr,
    thresholds,
    path,
    eer: float | None = None,
    title: str = "Verification of signature pairs",
) -> Path:
    """ROC on the left; FAR and FRR against the distance threshold on the right, with the EER marked on both.

    Arrays as `evaluate.verification_metrics` returns them: `fpr` = FAR (negative pairs accepted), `tpr` = genuine
    pairs accepted, `thresholds` = ascending distance thresholds (accepted when distance <= threshold).
    """
    fpr, tpr, thresholds = (np.asarray(values, dtype=np.float64).ravel() for values in (fpr, tpr, thresholds))
    if not (fpr.shape == tpr.shape == thresholds.shape):
        raise DataError(f"fpr {fpr.shape}, tpr {tpr.shape} and thresholds {thresholds.shape}: expected equal lengths")
    frr = 1.0 - tpr
    figure = _new_figure(12, 5)
    roc_axes, rates_axes = figure.subplots(1, 2)

    roc_axes.plot(fpr, tpr, color=POSITIVE_COLOR, label="ROC")
    roc_axes.plot([0, 1], [0, 1], color="grey", linestyle=":", label="chance")
    roc_axes.set_xlabel("false acceptance rate (negative pairs accepted)")
    roc_axes.set_ylabel("true acceptance rate (genuine pairs accepted)")
    roc_axes.set_xlim(0, 1)
    roc_axes.set_ylim(0, 1.01)
    roc_axes.set_aspect("equal")
    roc_axes.set_title("ROC")

    finite = np.isfinite(thresholds)
    rates_axes.plot(thresholds[finite], fpr[finite], color=NEGATIVE_COLOR, label="FAR: negative pairs accepted")
    rates_axes.plot(thresholds[finite], frr[finite], color=POSITIVE_COLOR, label="FRR: genuine pairs rejected")
    rates_axes.set_xlabel("distance threshold (a pair is accepted when its distance ≤ threshold)")
    rates_axes.set_ylabel("error rate")
    rates_axes.set_ylim(0, 1.01)
    rates_axes.set_title("Error rates against the threshold")

    if eer is not None:
        roc_axes.plot([eer], [1 - eer], "ko", label=f"EER = {eer:.3f}")
        rates_axes.axhline(eer, color="black", linestyle="--", linewidth=1, label=f"EER = {eer:.3f}")
    roc_axes.legend(loc="lower right")
    rates_axes.legend(loc="center right")
    figure.suptitle(title)
    return _save(figure, path)


def plot_history(history, path, title: str = "Training history") -> Path:
    """Loss per epoch (every column or key ending in "loss") and the learning rate on a log-scale right axis.

    `history` is a dict of lists (Keras `History.history`) or a DataFrame (Keras `CSVLogger`), optionally with an
    `epoch` column (Keras counts from 0; the plot counts from 1); the rate is read from `learning_rate` or `lr`.
    """
    table = pd.DataFrame(history)
    loss_columns = [column for column in table.columns if str(column).endswith("loss")]
    if table.empty or not loss_columns:
        raise DataError(f"history has columns {list(table.columns)}: expected at least one loss column such as 'loss'")
    epochs = table["epoch"].to_numpy() + 1 if "epoch" in table else np.arange(1, len(table) + 1)
    figure = _new_figure(9, 5)
    loss_axes = figure.add_subplot()
    for column in loss_columns:
        label = "validation loss" if column == "val_loss" else ("training loss" if column == "loss" else column)
        loss_axes.plot(epochs, table[column], marker="o", markersize=3, label=label)
    loss_axes.set_xlabel("epoch")
    loss_axes.set_ylabel("loss")
    handles, labels = loss_axes.get_legend_handles_labels()
    rate_column = next((column for column in ("learning_rate", "lr") if column in table), None)
    if rate_column is not None:
        rate_axes = loss_axes.twinx()
        rate_axes.plot(epochs, table[rate_column], color="grey", linestyle="--", label="learning rate (right axis)")
        if (table[rate_column] > 0).all():
            rate_axes.set_yscale("log")
        rate_axes.set_ylabel("learning rate")
        rate_handles, rate_labels = rate_axes.get_legend_handles_labels()
        handles, labels = handles + rate_handles, labels + rate_labels
    loss_axes.legend(handles, labels, loc="upper right")
    loss_axes.set_title(title)
    return _save(figure, path)


def _unit_range(heatmap: np.ndarray) -> np.ndarray:
    heatmap = np.asarray(heatmap, dtype=np.float64)
    span = np.ptp(heatmap)
    return (heatmap - heatmap.min()) / span if span > 0 else np.zeros_like(heatmap)


def plot_gradcam(images, heatmaps, layer_names, path, title: str = "Grad-CAM of the embedding per layer") -> Path:
    """Grid of N rows × (1 + layers) columns: each signature, then its Grad-CAM heat map of every layer over it.

    `images` is N×H×W or N×H×W×1 (grey, uint8 or float); `heatmaps[i][j]` is an h×w map of image i at layer j, any size (it is
    stretched over the image); each map is rescaled to 0..1 for display.
    """
    images = np.asarray(images)
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if images.ndim != 3:
        raise DataError(f"images have shape {images.shape}: expected N×H×W (or N×H×W×1) grey images")
    if len(heatmaps) != len(images) or any(len(row) != len(layer_names) for row in heatmaps):
        raise DataError(
            f"heatmaps must be a list of {len(images)} lists (one per image) of {len(layer_names)} maps (one per layer)"
        )
    n_rows, n_columns = len(images), 1 + len(layer_names)
    height, width = images.shape[1:]
    cell_width = 2.6
    cell_height = max(1.0, cell_width * height / width)
    figure = _new_figure(cell_width * n_columns, cell_height * n_rows + 0.6)
    grid = figure.subplots(n_rows, n_columns, squeeze=False)
    extent = (0, width, height, 0)
    for row, (image, image_heatmaps) in enumerate(zip(images, heatmaps)):
        grid[row, 0].imshow(image, cmap="gray", extent=extent)
        for column, heatmap in enumerate(image_heatmaps, start=1):
            grid[row, column].imshow(image, cmap="gray", extent=extent)
            grid[row, column].imshow(
                _unit_range(heatmap), cmap="jet", alpha=0.45, extent=extent, interpolation="bilinear", vmin=0, vmax=1
            )
    for axes in grid.ravel():
        axes.set_xticks([])
        axes.set_yticks([])
    grid[0, 0].set_title("signature")
    for column, layer_name in enumerate(layer_names, start=1):
        grid[0, column].set_title(layer_name, fontsize="small")
    figure.suptitle(f"{title} (red: most influence)")
    return _save(figure, path)


def plot_embedding_3d(
    embeddings,
    writers,
    genuine,
    path,
    writers_to_show=None,
    title: str = "Embeddings of three writers (PCA, 3 dimensions)",
) -> Path:
    """3-D PCA of the embeddings of a few writers (default: the first three), genuine as circles, forgeries as
    diamonds, one colour per writer. The PCA is fitted on the points shown."""
    embeddings, writers, genuine = _checked_points(embeddings, writers, genuine)
    writers_to_show = list(np.unique(writers)[:3] if writers_to_show is None else writers_to_show)
    shown = np.isin(writers, writers_to_show)
    if not shown.any():
        raise DataError(f"none of the writers {writers_to_show} is in the embeddings: expected some of their writers")
    points = _pca(embeddings[shown], 3)
    colors = _writer_colors(writers[shown])
    figure = _new_figure(8, 7)
    axes = figure.add_subplot(projection="3d")
    for writer, color in colors.items():
        for is_genuine, marker, kind in ((True, "o", "genuine"), (False, "D", "forgery")):
            chosen = (writers[shown] == writer) & (genuine[shown] == is_genuine)
            if chosen.any():
                axes.scatter(*points[chosen].T, color=color, marker=marker, s=30, label=f"writer {writer}, {kind}")
    axes.set_xlabel("PC 1")
    axes.set_ylabel("PC 2")
    axes.set_zlabel("PC 3")
    axes.set_title(title)
    axes.legend(loc="upper left", fontsize="small")
    return _save(figure, path)


def plot_accuracy_vs_size(
    names,
    params,
    accuracies,
    path,
    title: str = "Max accuracy on skilled forgeries against model size",
) -> Path:
    """Labelled scatter of accuracy (fractions 0..1, shown in percent) against parameter count on a log axis."""
    names = [str(name) for name in names]
    params = np.asarray(params, dtype=np.float64)
    accuracies = np.asarray(accuracies, dtype=np.float64)
    if not (len(names) == len(params) == len(accuracies)):
        raise DataError(f"{len(names)} names, {len(params)} sizes, {len(accuracies)} accuracies: expected equal counts")
    if (params <= 0).any():
        raise DataError("parameter counts must be positive for a log-scale axis")
    figure = _new_figure(9, 5.5)
    axes = figure.add_subplot()
    axes.scatter(params, accuracies, color=POSITIVE_COLOR, s=40, zorder=3)
    for name, size, accuracy in zip(names, params, accuracies):
        axes.annotate(name, (size, accuracy), xytext=(6, 4), textcoords="offset points", fontsize="small")
    axes.set_xscale("log")
    axes.xaxis.set_major_formatter(EngFormatter())
    axes.xaxis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))
    axes.xaxis.set_minor_formatter(EngFormatter())
    axes.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    axes.set_xlim(params.min() / 2, params.max() * 3)
    axes.set_xlabel("parameters (log scale)")
    axes.set_ylabel("max accuracy")
    axes.grid(True, which="major", alpha=0.3)
    axes.set_title(title)
    return _save(figure, path)


def plot_accuracy_by_start(summary, frozen: dict[str, float], start_names: dict[str, str], post_best: float, path,
                           title: str) -> Path:
    """Bars: max accuracy on skilled forgeries after fine-tuning per start (mean ± std over runs); diamonds: the same
    pretrained backbone's frozen features before fine-tuning; dashed line: the post's Small ResNet50 with ImageNet."""
    starts = summary["start"].tolist()
    means = summary["hard_max_accuracy_mean"].to_numpy(dtype=float)
    stds = np.nan_to_num(summary["hard_max_accuracy_std"].to_numpy(dtype=float))
    positions = np.arange(len(starts))
    figure = _new_figure(max(5.0, 1.4 * len(starts) + 2), 4.5)
    axes = figure.add_subplot()
    axes.bar(positions, means, yerr=stds, capsize=5, color="tab:blue", alpha=0.8, label="fine-tuned (triplet)")
    frozen_positions = [p for p, start in zip(positions, starts) if start in frozen]
    if frozen_positions:
        axes.scatter(frozen_positions, [frozen[starts[p]] for p in frozen_positions], marker="D", color="tab:orange",
                     zorder=3, label="frozen pretrained features")
    axes.axhline(post_best, color="tab:red", linestyle="--",
                 label=f"post: Small ResNet50, ImageNet ({post_best:.3f})")
    axes.axhline(0.5, color="grey", linewidth=0.8)
    axes.set_xticks(positions, [start_names[start] for start in starts], rotation=15, ha="right")
    axes.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    axes.set_ylim(0.4, 1.0)
    axes.set_ylabel("max accuracy, skilled forgeries")
    axes.set_title(title)
    axes.legend(loc="upper left", fontsize="small")
    return _save(figure, path)


DET_TICKS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 0.6)


def plot_det(curves: dict[str, tuple[np.ndarray, np.ndarray]], path, title: str = "DET curves") -> Path:
    """Detection error trade-off: FRR against FAR on normal-deviate axes (straight lines for Gaussian scores), one
    curve per entry of `curves` {label: (far, frr)}; rates of 0 or 1 are drawn at the axes' ends (0.05 %, 60 %)."""
    from scipy.stats import norm

    lowest, highest = 0.0005, DET_TICKS[-1]
    figure = _new_figure(7, 6)
    axes = figure.subplots()
    for label, (far, frr) in curves.items():
        far, frr = (np.clip(np.asarray(rates, dtype=np.float64), lowest, highest) for rates in (far, frr))
        axes.plot(norm.ppf(far), norm.ppf(frr), label=label)
    ticks = norm.ppf(DET_TICKS)
    labels = [f"{100 * tick:g}%" for tick in DET_TICKS]
    for set_ticks, set_labels, set_limits in ((axes.set_xticks, axes.set_xticklabels, axes.set_xlim),
                                              (axes.set_yticks, axes.set_yticklabels, axes.set_ylim)):
        set_ticks(ticks)
        set_labels(labels)
        set_limits(norm.ppf(lowest), norm.ppf(highest))
    axes.plot([norm.ppf(lowest), norm.ppf(highest)], [norm.ppf(lowest), norm.ppf(highest)], color="grey",
              linestyle=":", label="FAR = FRR")
    axes.set_xlabel("false acceptance rate (forgeries accepted)")
    axes.set_ylabel("false rejection rate (genuine signatures rejected)")
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize="small", loc="lower left")
    axes.set_title(title, fontsize="medium")
    return _save(figure, path)
