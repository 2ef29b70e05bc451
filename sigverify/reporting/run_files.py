"""What a finished run writes into its folder from its evaluation: the figures, model.keras, embeddings.npz,
pair_scores.npz, metrics.json and metrics.csv, and report.md; and the record of how it trained (weights, parameters,
engine, machine) that metrics.json carries beside the metrics."""

from __future__ import annotations

import logging
import platform
from collections.abc import Callable

import keras
import numpy as np

from sigverify.data.prepare import ExperimentData, SplitData
from sigverify.evaluation.metrics import PAIR_SETS
from sigverify.evaluation.model import Evaluation
from sigverify.models.zoo import reported_figure
from sigverify.reporting import plots
from sigverify.reporting.report import write_report
from sigverify.reporting.tables import PAIR_SCORES_FILE, write_pair_scores
from sigverify.runs import RunFolder, write_json, write_text, writing
from sigverify.settings import ExperimentConfig
from sigverify.training.engine import TrainingEngine, TrainResult

log = logging.getLogger(__name__)


def environment() -> dict:
    backend = keras.backend.backend()
    info = {"python": platform.python_version(), "keras": keras.__version__, "backend": backend,
            "machine": platform.machine(), "processor": platform.processor() or platform.machine()}
    if backend == "tensorflow":
        import tensorflow as tf

        info["tensorflow"] = tf.__version__
        info["devices"] = [d.name for d in tf.config.list_logical_devices()]
    elif backend == "jax":
        import jax

        info["jax"] = jax.__version__
        info["devices"] = [str(d) for d in jax.devices()]
    return info


def training_facts(engine: TrainingEngine, model: keras.Model, weights_description: str, model_description: str,
                   loss_description: str, result: TrainResult | None = None, references: dict | None = None) -> dict:
    """What a run records about itself in metrics.json beside the metrics (`result` None: not trained)."""
    facts = {
        "weights": weights_description,
        "params": model.count_params(),
        "model_description": model_description,
        "loss_description": loss_description,
        "train_seconds": result.train_seconds if result else 0.0,
        "strategy": engine.describe(),
        "precision": engine.precision,
        "environment": environment(),
    }
    if result is not None:
        facts.update(epochs_resumed_from=result.initial_epoch, batches_without_positives=result.batches_without_positives)
    if references is not None:
        facts["reference_points"] = references
    return facts


def settings_summary(config: ExperimentConfig) -> dict:
    """The settings report.md states, recorded in metrics.json (the report reads nothing else)."""
    return {"experiment": config.experiment, "profile": config.profile, "image_size": config.image.image_size,
            "binarize": config.image.binarize, "epochs": config.train.epochs, "batch_size": config.batches.batch_size,
            "sampler": config.batches.sampler, "loss": config.loss.loss, "learning_rate": config.optimizer.learning_rate,
            "schedule": config.optimizer.schedule}


def write_run_files(run: RunFolder, config: ExperimentConfig, model: keras.Model, data: ExperimentData,
                    evaluation: Evaluation, facts: dict, history: dict[str, list[float]],
                    extra_figures: dict[str, Callable] | None = None) -> dict:
    """Every file of a finished run; returns metrics.json's content. `extra_figures` are {file name: draw(path,
    test embeddings)} for an experiment's own figures."""
    metrics = dict(evaluation.metrics)
    metrics.update({"status": "complete", "dataset": data.dataset, "layout": data.layout, "profile": config.profile,
                    "experiment": config.experiment, "test_writers": data.test_writers,
                    "validation_fold": data.validation_fold,  # set: the "test writers" are training writers
                    "n_train_writers": len(data.train_writers), "n_test_images": len(data.test.index),
                    "n_train_images": len(data.train.index), "settings": settings_summary(config)})
    metrics.update(facts)
    post = reported_figure(config.model, config.experiment)
    if post is not None:
        metrics["post_figure"] = {"model": post[0], "max_accuracy": post[1], "eer": post[2]}

    test_embeddings, scores = evaluation.test_embeddings, evaluation.scores
    test_index = data.test.index
    writers, genuine = test_index["writer"].to_numpy(), test_index["genuine"].to_numpy()
    write_pair_scores(run.file(PAIR_SCORES_FILE), scores,
                      {name: PAIR_SETS[name](data.test.pairs) for name in scores},
                      {name: metrics[name]["train_threshold"] for name in scores})
    write_figures(run, metrics, scores, test_embeddings, writers, genuine, config.report.umap, history, extra_figures)
    if config.report.gradcam_images:
        write_gradcam(run, model, data.test, config.report.gradcam_images)

    with writing(run.file("model.keras")) as temporary:
        model.save(temporary)
    with writing(run.file("embeddings.npz")) as temporary:
        np.savez(temporary, embeddings=test_embeddings, writer=writers, genuine=genuine,
                 label=test_index["label"].to_numpy(), path=test_index["path"].to_numpy().astype(str))
    write_json(run.file("metrics.json"), metrics)
    write_text(run.file("metrics.csv"), metrics_csv(metrics))
    write_report(run, metrics, figures=[path.name for path in run.path.iterdir()])
    return metrics


def write_figures(run: RunFolder, metrics: dict, scores: dict, embeddings: np.ndarray, writers: np.ndarray,
                  genuine: np.ndarray, umap: bool = True, history: dict | None = None,
                  extra_figures: dict[str, Callable] | None = None) -> None:
    """The figures of scored pairs into the run folder: UMAP of the embeddings (`umap`), the distance densities of
    each pair set with its threshold, ROC and FAR/FRR of the skilled-forgery pairs, the training history if any."""
    distance = metrics["distance"]
    figures = {}
    if umap:
        figures["umap.png"] = lambda p: plots.plot_umap(embeddings, writers, genuine, p,
                                                        title="Test signatures: UMAP of the embeddings")
    for name, set_scores in scores.items():
        negatives = "skilled forgery" if name == "hard" else "random forgery"
        figures[f"density_{name}.png"] = lambda p, s=set_scores, n=negatives, k=name: plots.plot_distance_density(
            s.distances, s.same, p, threshold=metrics[k]["threshold"], negative_label=n,
            title=f"{distance.capitalize()} distances of test pairs: genuine vs {n}")
    if "hard" in scores:
        s = scores["hard"]
        figures["roc.png"] = lambda p: plots.plot_roc(s.fpr, s.tpr, s.thresholds, p, eer=s.eer,
                                                      title="Genuine vs skilled forgery pairs")
    if history:
        figures["history.png"] = lambda p: plots.plot_history(history, p)
    figures.update({name: (lambda p, draw=draw: draw(p, embeddings)) for name, draw in (extra_figures or {}).items()})
    for figure_name, draw in figures.items():
        with writing(run.file(figure_name)) as temporary:
            draw(temporary)


def write_gradcam(run: RunFolder, model: keras.Model, split: SplitData, n_images: int) -> None:
    from sigverify.reporting.explain import gradcam_heatmaps

    index = split.index
    chosen = np.concatenate([np.flatnonzero(index["genuine"].to_numpy())[: (n_images + 1) // 2],
                             np.flatnonzero(~index["genuine"].to_numpy())[: n_images // 2]])
    try:
        layer_names, heatmaps = gradcam_heatmaps(model, split.images[chosen])
    except NotImplementedError as error:
        log.warning("GradCAM skipped: %s", error)
        return
    with writing(run.file("gradcam.png")) as temporary:
        plots.plot_gradcam(split.images[chosen], heatmaps, layer_names, temporary)


def metrics_csv(metrics: dict) -> str:
    """One row per pair set (hard, easy) with its numbers: the table a spreadsheet opens."""
    keys = ["max_accuracy", "eer", "eer_interpolated", "auc", "threshold", "accuracy_at_train_threshold"]
    lines = ["pairs,n_pairs," + ",".join(keys)]
    for name in ("hard", "easy"):
        values = metrics.get(name) or {}
        lines.append(",".join([name, str(metrics["n_pairs"].get(name, 0))] +
                              ["" if values.get(k) is None else f"{values[k]:.6g}" for k in keys]))
    return "\n".join(lines) + "\n"
