"""The steps every experiment shares: data → splits → preprocessed images → pairs, embedding a set of images, and
evaluation with its plots, metrics and report written into the run folder.

Training runs on the Keras backend's engine: tf.distribute and our loop (`sigverify.train`) on TensorFlow, Keras `fit`
under keras.distribution (`sigverify.train_keras`) on JAX; each is imported where it is used, so that a JAX run needs
no TensorFlow.
"""

from __future__ import annotations

import hashlib
import logging
import platform
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from sigverify import plots
from sigverify.config import ExperimentConfig
from sigverify.data.index import read_index
from sigverify.data.pairs import verification_pairs
from sigverify.data.samplers import pk_batches, shuffled_batches
from sigverify.data.splits import rows_of_writers, split_writers, writer_folds
from sigverify.data.synthetic import generate_synthetic_dataset
from sigverify.distances import evaluation_metric_for
from sigverify.errors import ConfigError
from sigverify.evaluate import (
    PAIR_SETS,
    WriterPairScores,
    bootstrap_intervals,
    evaluate_embeddings,
    identification_metrics,
    raw_pixel_embeddings,
    reference_verification,
)
from sigverify.losses import (
    LOSSES,
    SELF_SUPERVISED_LOSSES,
    MarginSoftmaxLoss,
    count_positive_pairs,
    describe_loss,
    get_loss,
)
from sigverify.preprocess import PreprocessConfig, default_cache_dir, load_preprocessed_images, to_backbone_input
from sigverify.report import write_report
from sigverify.runs import RunFolder, write_json, write_text, writing
from sigverify.tables import BOOTSTRAP_RESAMPLES, PAIR_SCORES_FILE, write_pair_scores
from sigverify.train_common import TrainResult, make_optimizer

log = logging.getLogger(__name__)

DEFAULT_SYNTHETIC_DIR = Path("data") / "synthetic"


@dataclass
class SplitData:
    index: pd.DataFrame  # rows of this split's writers, positions 0..n-1
    images: np.ndarray  # uint8 n×H×W, preprocessed
    pairs: pd.DataFrame  # verification pairs, positions into `index`

    @property
    def labels(self) -> np.ndarray:
        return self.index["label"].to_numpy()


@dataclass
class ExperimentData:
    dataset: str
    layout: str
    train: SplitData
    test: SplitData
    train_writers: list[int]
    test_writers: list[int]
    skipped: list = field(default_factory=list)


def resolve_data_dir(data: str | None) -> Path:
    """The user's folder, or the embedded synthetic set (generated on first use)."""
    if data:
        path = Path(data)
        if not path.is_dir():
            raise ConfigError(f"--data {data}: no such folder; expected a dataset folder (CEDAR layout or one folder per writer)")
        return path
    if not (DEFAULT_SYNTHETIC_DIR / "full_org").is_dir():
        log.info("generating the embedded synthetic signature set in %s (first use)", DEFAULT_SYNTHETIC_DIR)
        generate_synthetic_dataset(DEFAULT_SYNTHETIC_DIR)
    return DEFAULT_SYNTHETIC_DIR


def check_enough_data(index: pd.DataFrame, data_dir: Path) -> None:
    writers = index["writer"].unique()
    if len(writers) < 2:
        raise ConfigError(f"{data_dir}: {len(writers)} writer(s) found; expected at least two writers")
    genuine_counts = index[index["genuine"]].groupby("writer").size().reindex(writers, fill_value=0)
    too_few = genuine_counts[genuine_counts < 2]
    if len(too_few):
        raise ConfigError(f"{data_dir}: writer(s) {too_few.index.tolist()[:10]} have fewer than two genuine images; "
                          "expected at least two per writer (a genuine pair)")


def _first_samples(index: pd.DataFrame, max_samples: int | None) -> pd.DataFrame:
    if not max_samples:
        return index
    rank = index.groupby(["writer", "genuine"])["sample"].rank(method="first")
    return index[rank <= max_samples]


def held_out_writers(writers, config: ExperimentConfig) -> tuple[list[int], list[int]]:
    """(train writers, test writers): the default split, or with `--folds k` the fold `--fold` (0 if unset) of k
    writer-disjoint folds (on CEDAR with k = 5, fold 0 is the post's split)."""
    if config.data.folds > 1:
        test_writers = writer_folds(writers, config.data.folds)[config.data.fold or 0]
        return [int(w) for w in sorted(set(writers)) if w not in test_writers], test_writers
    return split_writers(writers, seed=config.train.seed)


def prepare_data(config: ExperimentConfig, preprocess: PreprocessConfig) -> ExperimentData:
    data_dir = resolve_data_dir(config.data.data)
    index = read_index(data_dir, layout=config.data.layout, skip_bad=config.data.skip_bad_images)
    check_enough_data(index, data_dir)
    train_writers, test_writers = held_out_writers(index["writer"].unique(), config)
    if config.data.max_writers:
        train_writers = train_writers[: config.data.max_writers]
        test_writers = test_writers[: config.data.max_writers]
    index = _first_samples(index[index["writer"].isin(train_writers + test_writers)], config.data.max_samples)
    images, kept, skipped = load_preprocessed_images(index["path"].tolist(), preprocess, config.data.cache_dir,
                                                     skip_bad_images=config.data.skip_bad_images)
    index = index[kept].reset_index(drop=True)
    splits = {}
    for name, writers in (("train", train_writers), ("test", test_writers)):
        positions = np.flatnonzero(index["writer"].isin(writers).to_numpy())
        split_index = rows_of_writers(index, writers)
        splits[name] = SplitData(split_index, images[positions], verification_pairs(split_index))
    dataset = "synthetic (embedded default)" if config.data.data is None else str(Path(config.data.data).resolve())
    return ExperimentData(dataset=dataset, layout=index.attrs.get("layout", "unknown"), train=splits["train"],
                          test=splits["test"], train_writers=train_writers, test_writers=test_writers, skipped=skipped)


def embed(model: keras.Model, inputs: np.ndarray, backbone: str | None, batch_size: int = 64) -> np.ndarray:
    """Outputs (float32 N×D) of `model` for preprocessed uint8 images converted to `backbone` input, or for inputs
    used as they are (cached features) when `backbone` is None."""
    def prepared(chunk):
        return chunk if backbone is None else to_backbone_input(chunk, backbone)

    # A model built under a tf.distribute strategy gives every replica the whole batch and returns their outputs stacked
    # (replica-major): the first len(chunk) rows are the batch's outputs.
    chunks = [model.predict_on_batch(prepared(chunk))[: len(chunk)]
              for chunk in (inputs[i : i + batch_size] for i in range(0, len(inputs), batch_size))]
    return np.concatenate([keras.ops.convert_to_numpy(c) for c in chunks]).astype(np.float32)


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


def evaluate_and_report(run: RunFolder, config: ExperimentConfig, model: keras.Model, data: ExperimentData,
                        facts: dict, history: dict[str, list[float]], metric: str = "cosine",
                        extra_plots=(), embeddings: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
    """Embed the test (and training) writers, compute the metrics, write plots, model, metrics and report.

    `facts` are the run's own records (weights used, train_seconds, params, strategy...) merged into metrics.json.
    `extra_plots` are (file name, draw(path, test_embeddings)) for experiment-specific figures. `embeddings` (test,
    train) skips embedding the images when the experiment already has them.
    """
    backbone = config.model.backbone
    if embeddings is None:
        embeddings = embed(model, data.test.images, backbone), embed(model, data.train.images, backbone)
    test_embeddings, train_embeddings = embeddings
    metrics, scores = evaluate_embeddings(test_embeddings, data.test.pairs, metric=metric,
                                          train_embeddings=train_embeddings, train_pairs=data.train.pairs)
    metrics.update({"status": "complete", "dataset": data.dataset, "layout": data.layout, "profile": config.profile,
                    "experiment": config.experiment, "test_writers": data.test_writers,
                    "n_train_writers": len(data.train_writers), "n_test_images": len(data.test.index),
                    "n_train_images": len(data.train.index), "distance": metric})
    metrics.update(facts)

    test_index = data.test.index
    writers, genuine = test_index["writer"].to_numpy(), test_index["genuine"].to_numpy()
    metrics.update(protocol_metrics(run, test_embeddings, writers, genuine, data.test.pairs, metrics, scores, metric))
    figures = {}
    if config.report.umap:
        figures["umap.png"] = lambda p: plots.plot_umap(test_embeddings, writers, genuine, p,
                                                        title="Test signatures: UMAP of the embeddings")
    for name, set_scores in scores.items():
        negatives = "skilled forgery" if name == "hard" else "random forgery"
        figures[f"density_{name}.png"] = lambda p, s=set_scores, n=negatives, k=name: plots.plot_distance_density(
            s.distances, s.same, p, threshold=metrics[k]["threshold"], negative_label=n,
            title=f"{metric.capitalize()} distances of test pairs: genuine vs {n}")
    if "hard" in scores:
        s = scores["hard"]
        figures["roc.png"] = lambda p: plots.plot_roc(s.fpr, s.tpr, s.thresholds, p, eer=s.eer,
                                                      title="Genuine vs skilled forgery pairs")
    if history:
        figures["history.png"] = lambda p: plots.plot_history(history, p)
    figures.update({name: (lambda p, draw=draw: draw(p, test_embeddings)) for name, draw in extra_plots})
    for figure_name, draw in figures.items():
        with writing(run.file(figure_name)) as temporary:
            draw(temporary)

    if config.report.gradcam_images:
        write_gradcam(run, model, data.test, backbone, config.report.gradcam_images)

    with writing(run.file("model.keras")) as temporary:
        model.save(temporary)
    with writing(run.file("embeddings.npz")) as temporary:
        np.savez(temporary, embeddings=test_embeddings, writer=writers, genuine=genuine,
                 label=test_index["label"].to_numpy(), path=test_index["path"].to_numpy().astype(str))
    write_json(run.file("metrics.json"), metrics)
    write_text(run.file("metrics.csv"), metrics_csv(metrics))
    write_report(run, config, metrics, figures=[name for name in run.path.iterdir()])
    return metrics


def protocol_metrics(run: RunFolder, test_embeddings: np.ndarray, writers: np.ndarray, genuine: np.ndarray,
                     test_pairs: pd.DataFrame, metrics: dict, scores: dict, metric: str) -> dict:
    """The honest protocol's figures beside the post's: verification against K = 1, 5, 12 enrolled references
    (`reference_k`), writer identification (`identification`) and bootstrap intervals over test writers
    (`confidence_intervals`, 95%); also writes pair_scores.npz, which tables over several runs resample."""
    pairs_by_set = {name: PAIR_SETS[name](test_pairs) for name in scores}
    thresholds = {name: metrics[name]["train_threshold"] for name in scores}
    write_pair_scores(run.file(PAIR_SCORES_FILE), scores, pairs_by_set, thresholds)
    intervals = {name: bootstrap_intervals([WriterPairScores(s.distances, s.same, pairs_by_set[name]["writer"].to_numpy(),
                                                             thresholds[name])], n_resamples=BOOTSTRAP_RESAMPLES)
                 for name, s in scores.items()}
    return {
        "reference_k": reference_verification(test_embeddings, writers, genuine, (1, 5, 12), metric),
        "identification": identification_metrics(test_embeddings, writers, genuine, metric),
        "confidence_intervals": {"level": 0.95, "resamples": BOOTSTRAP_RESAMPLES, "over": "test writers", **intervals},
    }


def write_gradcam(run: RunFolder, model: keras.Model, split: SplitData, backbone: str, n_images: int) -> None:
    from sigverify.explain import gradcam_heatmaps

    index = split.index
    chosen = np.concatenate([np.flatnonzero(index["genuine"].to_numpy())[: (n_images + 1) // 2],
                             np.flatnonzero(~index["genuine"].to_numpy())[: n_images // 2]])
    try:
        layer_names, heatmaps = gradcam_heatmaps(model, to_backbone_input(split.images[chosen], backbone))
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


def training_batches(labels: np.ndarray, config: ExperimentConfig, epoch: int) -> np.ndarray:
    """The sampler of the config: the original shuffled batches, or class-balanced P×K batches."""
    train = config.train
    if train.sampler == "pk":
        return pk_batches(labels, train.classes_per_batch, train.images_per_class, train.seed, epoch)
    return shuffled_batches(len(labels), train.batch_size, train.seed, epoch)


def fit_on_labelled_images(run: RunFolder, config: ExperimentConfig, strategy, data: ExperimentData, model, loss_fn,
                           optimizer, batch_has_signal=None) -> TrainResult:
    """Online-mining training (triplet-style losses on labels): batches of training images, validation loss on the
    test writers' images in fixed P×K-style batches (for the history plot and the best checkpoint only). The same
    samplers feed tf.data on TensorFlow and a Keras PyDataset on JAX."""
    backbone = config.model.backbone
    train_labels, test_labels = data.train.labels, data.test.labels
    validation = shuffled_batches(len(test_labels), min(config.train.batch_size, len(test_labels)), config.train.seed, 0)
    # A margin-softmax loss has no class weights for the test writers' classes: it has no validation loss.
    validates = not isinstance(loss_fn, MarginSoftmaxLoss)
    if keras.backend.backend() != "tensorflow":
        from sigverify.train_keras import LabelledImageBatches, fit_keras

        train_data = LabelledImageBatches(data.train.images, train_labels, backbone,
                                          lambda epoch: training_batches(train_labels, config, epoch))
        validation_data = (LabelledImageBatches(data.test.images, test_labels, backbone, lambda epoch: validation)
                           if validates else None)
        return fit_keras(model, loss_fn, optimizer, strategy, run.path, train_data, config.train.epochs,
                         validation_data, batch_has_signal=batch_has_signal)
    from sigverify.data.feed import image_batches
    from sigverify.distribute import is_chief
    from sigverify.train import Trainer

    steps = len(training_batches(train_labels, config, 0))
    trainer = Trainer(model, loss_fn, optimizer, strategy, run.path, write_files=is_chief(strategy),
                      batch_has_signal=batch_has_signal, jit=config.train.jit)

    def augmenter(epoch):
        from sigverify.augment import FINE_TUNING_STRENGTH, batch_augmenter

        return batch_augmenter(config.train.seed, epoch, FINE_TUNING_STRENGTH) if config.train.augment else None

    return trainer.fit(
        lambda epoch: image_batches(data.train.images, train_labels, training_batches(train_labels, config, epoch), backbone,
                                    augment=augmenter(epoch)),
        epochs=config.train.epochs, steps_per_epoch=steps,
        validation_batches=((lambda epoch: image_batches(data.test.images, test_labels, validation, backbone))
                            if validates else None),
    )


def reference_points(model: keras.Model, data: ExperimentData, backbone: str) -> dict:
    """What a trained model must beat on the test pairs: raw pixels at the run's preprocessing, and the same model
    before training."""
    points = {}
    for name, embeddings, metric in (
        ("raw_pixels", raw_pixel_embeddings(data.test.images), "cosine"),
        ("untrained_model", embed(model, data.test.images, backbone), "cosine"),
    ):
        metrics, _ = evaluate_embeddings(embeddings, data.test.pairs, metric=metric)
        points[name] = {k: metrics[k]["max_accuracy"] for k in ("hard", "easy") if metrics.get(k)}
    return points


def cached_features(feature_model: keras.Model, images: np.ndarray, backbone: str, cache_dir=None) -> np.ndarray:
    """`feature_model` outputs for preprocessed images, computed once and kept on disk: keyed by the images' bytes and
    the model's weights, so a frozen backbone's features are never computed twice for the same data."""
    digest = hashlib.sha1(images.tobytes())
    for weight in feature_model.weights:
        digest.update(keras.ops.convert_to_numpy(weight).tobytes())
    cache_root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    entry = cache_root / "features" / f"{feature_model.name}-{digest.hexdigest()[:20]}.npy"
    if entry.exists():
        return np.load(entry)
    features = embed(feature_model, images, backbone)
    entry.parent.mkdir(parents=True, exist_ok=True)
    with writing(entry) as temporary:
        np.save(temporary, features)
    return features


@dataclass
class Prepared:
    """What an experiment has before its run folder exists: the strategy (a tf.distribute strategy on TensorFlow;
    on JAX, `sigverify.train_keras.make_distribution`'s DataParallel or OneDevice), the precision policy and the data."""

    strategy: object
    precision: str
    data: ExperimentData


def prepare_experiment(config: ExperimentConfig, check_settings=None) -> Prepared:
    """Strategy first (logical CPU devices must be set before TensorFlow starts), precision, the experiment's own
    settings check (`check_settings()`, raising ConfigError), then data and preprocessing: all before any run folder."""
    if keras.backend.backend() == "tensorflow":
        from sigverify.distribute import make_strategy, set_precision

        strategy = make_strategy(config.train.strategy, config.train.cpu_devices)
    else:
        from sigverify.train_keras import make_distribution, set_precision

        strategy = make_distribution(config.train.strategy, config.train.cpu_devices)
    precision = set_precision(config.train.mixed_precision)
    if config.train.augment and keras.backend.backend() != "tensorflow":
        raise ConfigError(f"--augment: augmentation feeds the TensorFlow loop only; on the {keras.backend.backend()} "
                          "backend leave it out (or run with KERAS_BACKEND=tensorflow)")
    if check_settings is not None:
        check_settings()
    image = config.image
    preprocess = PreprocessConfig((image.image_size, image.image_size), image.binarize, image.keep_aspect)
    return Prepared(strategy, precision, prepare_data(config, preprocess))


def describe_placement(strategy) -> str:
    """'<kind> over <n> replica(s)/device(s): <devices>' for a tf.distribute strategy or a keras.distribution."""
    if keras.backend.backend() == "tensorflow":
        from sigverify.distribute import describe_strategy

        return describe_strategy(strategy)
    from sigverify.train_keras import describe_distribution

    return describe_distribution(strategy)


def configured_embedding_model(config: ExperimentConfig) -> tuple[keras.Model, str, str]:
    """(model, weights description, model description) of the triplet experiment's settings: the backbone cut at
    `--cut-layer`, the conv head, L2 normalization unless `--no-normalize`."""
    from sigverify.models import build_embedding_model, resolve_weights

    model, size = config.model, config.image.image_size
    weights, weights_description = resolve_weights(model.weights, model.backbone)
    embedding = build_embedding_model(model.backbone, model.cut_layer, (size, size, 3), weights=weights,
                                      normalize=model.normalize, embedding_dim=model.embedding_dim)
    description = (f"{model.backbone} cut at {model.cut_layer} + conv head"
                   + ("" if model.normalize else " (no L2 normalization)"))
    return embedding, weights_description, description


def check_embedding_model_settings(config: ExperimentConfig) -> None:
    from sigverify.models import validate_model_settings

    validate_model_settings(config.model.backbone, config.model.cut_layer, config.image.image_size)


def configured_loss(config: ExperimentConfig, class_labels) -> keras.losses.Loss:
    """The loss `--loss` names, with its settings: margin and distance metric (triplet and quadruplet losses), margin2
    (quadruplet), scale and softmax margin (margin-softmax losses, whose classes are `class_labels`, the training
    labels, and whose embedding size is the model's). The contrastive loss trains on pairs: not here."""
    train = config.train
    if train.loss == "contrastive":
        raise ConfigError("--loss contrastive: a pair loss, trained on verification pairs by make exp-contrastive (or "
                          f"in make exp-losses); expected a loss on labelled batches: {', '.join(labelled_losses())}")
    if train.loss not in LOSSES:
        raise ConfigError(f"--loss {train.loss}: not known; expected one of {', '.join(labelled_losses())}")
    if train.loss in SELF_SUPERVISED_LOSSES:
        raise ConfigError(f"--loss {train.loss}: a self-supervised pretraining loss on two views of unlabelled images "
                          f"(make exp-pretrain); expected a loss on labelled batches: {', '.join(labelled_losses())}")
    if issubclass(LOSSES[train.loss], MarginSoftmaxLoss):
        params = {"embedding_dim": config.model.embedding_dim, "class_labels": sorted(set(np.ravel(class_labels).tolist())),
                  "scale": train.scale, "margin": train.softmax_margin}
        return get_loss(train.loss, **{key: value for key, value in params.items() if value is not None})
    params = {"margin": train.margin, "distance_metric": train.distance_metric}
    if train.loss == "quadruplet":
        params["margin2"] = train.margin2
    return get_loss(train.loss, **params)


def labelled_losses() -> list[str]:
    return [name for name in LOSSES if name != "contrastive" and name not in SELF_SUPERVISED_LOSSES]


def check_loss_settings(config: ExperimentConfig) -> None:
    """Refuse a bad `--loss` or loss setting before any work: the loss is built once with two placeholder classes."""
    configured_loss(config, class_labels=[0, 1])


def training_facts(prepared: Prepared, model: keras.Model, weights_description: str, model_description: str,
                   loss_description: str, result: TrainResult, references: dict) -> dict:
    """What a trained run records about itself in metrics.json, beside the metrics."""
    return {
        "weights": weights_description,
        "params": model.count_params(),
        "model_description": model_description,
        "loss_description": loss_description,
        "train_seconds": result.train_seconds,
        "epochs_resumed_from": result.initial_epoch,
        "batches_without_positives": result.batches_without_positives,
        "strategy": describe_placement(prepared.strategy),
        "precision": prepared.precision,
        "environment": environment(),
        "reference_points": references,
    }


def train_and_report(run: RunFolder, config: ExperimentConfig, prepared: Prepared, build_model, build_loss=None,
                     loss_description: str | None = None) -> dict:
    """Online-mining training of an embedding model on labelled images, then evaluation and report.

    `build_model()` → (model, weights description, model description) and `build_loss()` → loss are called inside the
    strategy's scope (a loss may own variables); without `build_loss`, the loss of `--loss` (`configured_loss`). The
    loss description defaults to the loss's class and settings."""
    strategy, data = prepared.strategy, prepared.data
    with strategy.scope():
        model, weights_description, model_description = build_model()
        loss = build_loss() if build_loss is not None else configured_loss(config, data.train.labels)
        optimizer = make_optimizer(config.train, steps_per_epoch=len(training_batches(data.train.labels, config, 0)))
    references = reference_points(model, data, config.model.backbone)
    classifies = isinstance(loss, MarginSoftmaxLoss)  # every batch teaches it: no positive pair is needed
    result = fit_on_labelled_images(run, config, strategy, data, model, loss, optimizer,
                                    batch_has_signal=None if classifies else lambda labels: count_positive_pairs(labels) > 0)
    facts = training_facts(prepared, model, weights_description, model_description,
                           loss_description or describe_loss(loss), result, references)
    # Margin-softmax losses train angles (cosines to class weights): they are scored by cosine distance.
    metric = "cosine" if classifies else evaluation_metric_for(config.train.distance_metric,
                                                               l2_normalized=config.model.normalize)
    return evaluate_and_report(run, config, model, data, facts, result.history, metric=metric)
