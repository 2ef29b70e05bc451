"""report.md of a run, from its metrics.json alone: what ran (data, model, weights, schedule), the metrics beside the
post's figures, the figures."""

from __future__ import annotations

from sigverify.runs import RunFolder, write_text

FIGURE_CAPTIONS = [
    ("umap.png", "UMAP of the test writers' embeddings (colour = writer, marker = genuine / forgery)"),
    ("density_hard.png", "Distances of genuine pairs vs skilled-forgery pairs (threshold marked)"),
    ("density_easy.png", "Distances of genuine pairs vs random-forgery pairs (threshold marked)"),
    ("roc.png", "ROC on skilled forgeries, and FAR/FRR against the threshold (EER marked)"),
    ("history.png", "Training and validation loss, learning rate"),
    ("gradcam.png", "GradCAM: the embedding's gradient w.r.t. the last conv layers' feature maps"),
    ("embedding_3d.png", "Embeddings of three writers in 3-D (PCA): genuine circles, forgeries diamonds"),
]


def _fmt(value, digits=3):
    return "—" if value is None else f"{value:.{digits}f}"


def _eer(reference_k: dict, rule: str, pair_set: str):
    """The EER of one reference-K cell, None ("—") where that pair set had no pairs."""
    return ((reference_k.get(rule) or {}).get(pair_set) or {}).get("eer")


def _protocol_lines(metrics: dict) -> list[str]:
    """Confidence intervals, verification against K enrolled references, and writer identification."""
    lines = []
    intervals = metrics.get("confidence_intervals") or {}
    hard_interval = (intervals.get("hard") or {}).get("max_accuracy")
    if hard_interval:
        lines += ["", (f"95% bootstrap interval over test writers of the skilled-forgery max accuracy: "
                       f"[{hard_interval[0]:.3f}, {hard_interval[1]:.3f}].")]
    reference_k = {k: v for k, v in (metrics.get("reference_k") or {}).items() if v}
    if reference_k:
        lines += ["", "Verification against K enrolled genuine signatures (EER, skilled / random forgeries):", "",
                  "| K | mean distance | min distance |", "|---|---|---|"]
        for k, values in reference_k.items():
            cells = [f"{_fmt(_eer(values, rule, 'hard'))} / {_fmt(_eer(values, rule, 'easy'))}" for rule in ("mean", "min")]
            lines.append(f"| {k} | {cells[0]} | {cells[1]} |")
    identification = metrics.get("identification")
    if identification:
        lines += ["", (f"Writer identification (gallery of the test writers' genuine signatures): precision@1 "
                       f"{_fmt(identification['precision_at_1'])}, MAP@R {_fmt(identification['map_at_r'])}.")]
    return lines


def write_report(run: RunFolder, metrics: dict, figures) -> None:
    """report.md from `metrics` (what metrics.json holds: the settings summary, facts and metrics); `figures` are the
    file names in the run folder, of which the known figures are shown."""
    names = set(figures)
    settings = metrics["settings"]
    post = metrics.get("post_figure")
    lines = [f"# {settings['experiment']} run `{run.path.name}`", ""]
    pairs_line = (f"- distance at test time: {metrics['distance']}; test pairs: {metrics['n_pairs']['hard']} hard "
                  f"(genuine vs skilled), {metrics['n_pairs']['easy']} easy (genuine vs random)")
    if "n_train_pairs" in metrics:
        pairs_line += f"; {metrics['n_train_pairs']:,} training pairs ({metrics['training_path']})"
    lines += [
        (f"- dataset: {metrics['dataset']} (layout {metrics['layout']}); {metrics['n_train_writers']} training "
         f"writers, {len(metrics['test_writers'])} test writers {metrics['test_writers']}"),
        (f"- profile: `{settings['profile']}`; image {settings['image_size']}×{settings['image_size']}, "
         f"Otsu binarization {'on' if settings['binarize'] else 'off'}"),
        f"- model: {metrics.get('model_description', 'unknown')}; {metrics.get('params', 0):,} parameters",
        f"- **weights: {metrics.get('weights', 'unknown')}**",
        (f"- training: {settings['epochs']} epochs, batch {settings['batch_size']} ({settings['sampler']} sampler), "
         f"loss {metrics.get('loss_description', settings['loss'])}, Adam {settings['learning_rate']:g} with "
         f"{settings['schedule']} schedule; {metrics.get('train_seconds', 0):.0f} s on "
         f"{metrics.get('strategy', 'the default device')}"),
        pairs_line,
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
    lines += _protocol_lines(metrics)
    references = metrics.get("reference_points")
    if references:
        lines += ["", "Reference points on the same test pairs (max accuracy, skilled / random forgeries): "
                  + "; ".join(f"{name.replace('_', ' ')} {_fmt(v.get('hard'))} / {_fmt(v.get('easy'))}"
                              for name, v in references.items()) + "."]
    if post:
        hard = metrics.get("hard") or {}
        post_eer = f", EER {post['eer']:.3f}" if post["eer"] is not None else ""
        lines += ["", (f"The post reports for **{post['model']}** on skilled forgeries: max accuracy "
                       f"{post['max_accuracy']:.3f}{post_eer} "
                       f"(ImageNet weights, CEDAR). This run: max accuracy {_fmt(hard.get('max_accuracy'))}, "
                       f"EER {_fmt(hard.get('eer'))}.")]
        if not str(metrics.get("weights", "")).startswith("ImageNet"):
            lines.append("This run did not start from ImageNet weights, so the post's figure is not a like-for-like "
                         "target.")
    lines += ["", ("Max accuracy and EER use the oracle threshold chosen on the test pairs themselves, as the post did; "
                   "the last column applies the threshold chosen on the training writers' pairs (an honest figure)."),
              ""]
    lines += ["", "## Figures", ""]
    for file_name, caption in FIGURE_CAPTIONS:
        if file_name in names:
            lines += [f"### {caption}", "", f"![{caption}]({file_name})", ""]
    write_text(run.file("report.md"), "\n".join(lines) + "\n")
