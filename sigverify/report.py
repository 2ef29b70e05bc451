"""report.md of a run: what ran (data, model, weights, schedule), the metrics beside the post's figures, the figures."""

from __future__ import annotations

from sigverify.config import ExperimentConfig
from sigverify.runs import RunFolder, write_text

# The post's figures on skilled forgeries (max accuracy, EER), from SPEC "Results reported"; ImageNet-initialised.
POST_FIGURES = {
    ("resnet50", "conv4_block6_add", True): ("Small ResNet50 + skip", 0.818, 0.184),
    ("resnet50", "conv4_block6_3_conv", True): ("Small ResNet50 (no skip)", 0.766, 0.236),
    ("resnet50", "conv5_block3_out", True): ("ResNet50", 0.764, 0.242),
    ("resnet50", "conv3_block4_add", True): ("Smaller ResNet50 + skip", 0.761, 0.24),
    ("vgg16", "block3_conv1", True): ("Small VGG16", 0.721, None),
    ("vgg16", "block5_pool", True): ("VGG16", 0.674, 0.328),
    ("contrastive", None, True): ("Siamese contrastive baseline", 0.728, None),
}

FIGURE_CAPTIONS = [
    ("umap.png", "UMAP of the test writers' embeddings (colour = writer, marker = genuine / forgery)"),
    ("density_hard.png", "Distances of genuine pairs vs skilled-forgery pairs (threshold marked)"),
    ("density_easy.png", "Distances of genuine pairs vs random-forgery pairs (threshold marked)"),
    ("roc.png", "ROC on skilled forgeries, and FAR/FRR against the threshold (EER marked)"),
    ("history.png", "Training and validation loss, learning rate"),
    ("gradcam.png", "GradCAM: the embedding's gradient w.r.t. the last conv layers' feature maps"),
    ("embedding_3d.png", "Embeddings of three writers in 3-D (PCA): genuine circles, forgeries diamonds"),
]


def post_figure(config: ExperimentConfig):
    key = ("contrastive", None, True) if config.experiment == "contrastive" else (
        config.model.backbone, config.model.cut_layer, config.model.normalize)
    return POST_FIGURES.get(key)


def _fmt(value, digits=3):
    return "—" if value is None else f"{value:.{digits}f}"


def write_report(run: RunFolder, config: ExperimentConfig, metrics: dict, figures) -> None:
    names = {getattr(f, "name", str(f)) for f in figures}
    post = post_figure(config)
    lines = [f"# {config.experiment} run `{run.path.name}`", ""]
    lines += [
        f"- dataset: {metrics['dataset']} (layout {metrics['layout']}); {metrics['n_train_writers']} training writers, "
        f"{len(metrics['test_writers'])} test writers {metrics['test_writers']}",
        f"- profile: `{config.profile}`; image {config.image.image_size}×{config.image.image_size}, "
        f"Otsu binarization {'on' if config.image.binarize else 'off'}",
        f"- model: {metrics.get('model_description', config.model.backbone)}; {metrics.get('params', 0):,} parameters",
        f"- **weights: {metrics.get('weights', 'unknown')}**",
        f"- training: {config.train.epochs} epochs, batch {config.train.batch_size} ({config.train.sampler} sampler), "
        f"loss {metrics.get('loss_description', config.train.loss)}, Adam {config.train.learning_rate:g} with "
        f"{metrics.get('schedule_description', config.train.schedule)}; {metrics.get('train_seconds', 0):.0f} s on "
        f"{metrics.get('strategy', 'the default device')}",
        f"- distance at test time: {metrics['distance']}; pairs: {metrics['n_pairs']['hard']} hard "
        f"(genuine vs skilled), {metrics['n_pairs']['easy']} easy (genuine vs random)",
        "",
        "## Metrics",
        "",
        "| pairs | max accuracy | EER (authors') | EER (interpolated) | AUC | accuracy at training-writer threshold |",
        "|---|---|---|---|---|---|",
    ]
    for name, label in (("hard", "skilled forgeries"), ("easy", "random forgeries")):
        values = metrics.get(name)
        if values:
            lines.append(f"| {label} | {_fmt(values['max_accuracy'])} | {_fmt(values['eer'])} | "
                         f"{_fmt(values['eer_interpolated'])} | {_fmt(values['auc'])} | "
                         f"{_fmt(values['accuracy_at_train_threshold'])} |")
    references = metrics.get("reference_points")
    if references:
        lines += ["", "Reference points on the same test pairs (max accuracy, skilled / random forgeries): "
                  + "; ".join(f"{name.replace('_', ' ')} {_fmt(v.get('hard'))} / {_fmt(v.get('easy'))}"
                              for name, v in references.items()) + "."]
    if post:
        lines += ["", f"The post reports for **{post[0]}** on skilled forgeries: max accuracy {post[1]:.3f}"
                  + (f", EER {post[2]:.3f}" if post[2] is not None else "")
                  + " (ImageNet weights, CEDAR). This run: max accuracy "
                  + _fmt((metrics.get("hard") or {}).get("max_accuracy"))
                  + ", EER " + _fmt((metrics.get("hard") or {}).get("eer")) + "."]
        if "imagenet" not in str(metrics.get("weights", "")).lower() or "random" in str(metrics.get("weights", "")):
            lines.append("This run did not start from ImageNet weights, so the post's figure is not a like-for-like target.")
    lines += ["", "Max accuracy and EER use the oracle threshold chosen on the test pairs themselves, as the post did; "
              "the last column applies the threshold chosen on the training writers' pairs (an honest figure).", ""]
    for notes in metrics.get("notes", []):
        lines.append(f"- {notes}")
    lines += ["", "## Figures", ""]
    for file_name, caption in FIGURE_CAPTIONS:
        if file_name in names:
            lines += [f"### {caption}", "", f"![{caption}]({file_name})", ""]
    write_text(run.file("report.md"), "\n".join(lines) + "\n")
