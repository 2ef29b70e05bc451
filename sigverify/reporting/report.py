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


def _metrics_table(metrics: dict, honest_key: str, honest_column: str) -> list[str]:
    """The metrics of both pair sets as a Markdown table, the last column the accuracy at a threshold not chosen on
    these pairs (`honest_key` of each set)."""
    lines = [f"| pairs | max accuracy | EER (authors') | EER (interpolated) | AUC | {honest_column} |",
             "|---|---|---|---|---|---|"]
    for name, label in (("hard", "skilled forgeries"), ("easy", "random forgeries")):
        values = metrics.get(name)
        if values:
            lines.append(f"| {label} | {_fmt(values['max_accuracy'])} | {_fmt(values['eer'])} | "
                         f"{_fmt(values['eer_interpolated'])} | {_fmt(values['auc'])} | "
                         f"{_fmt(values.get(honest_key))} |")
    return lines


def _figure_lines(figures) -> list[str]:
    names = set(figures)
    lines = ["", "## Figures", ""]
    for file_name, caption in FIGURE_CAPTIONS:
        if file_name in names:
            lines += [f"### {caption}", "", f"![{caption}]({file_name})", ""]
    return lines


def write_report(run: RunFolder, metrics: dict, figures) -> None:
    """report.md from `metrics` (what metrics.json holds: the settings summary, facts and metrics); `figures` are the
    file names in the run folder, of which the known figures are shown."""
    settings = metrics["settings"]
    post = metrics.get("post_figure")
    lines = [f"# {settings['experiment']} run `{run.path.name}`", ""]
    pairs_line = (f"- distance at test time: {metrics['distance']}; test pairs: {metrics['n_pairs']['hard']} hard "
                  f"(genuine vs skilled), {metrics['n_pairs']['easy']} easy (genuine vs random)")
    if "n_train_pairs" in metrics:
        pairs_line += f"; {metrics['n_train_pairs']:,} training pairs ({metrics['training_path']})"
    lines += [
        (f"- dataset: {metrics['dataset']} (layout {metrics['layout']}); {metrics['n_train_writers']} training "
         f"writers, {len(metrics['test_writers'])} test writers {metrics['test_writers']}"
         + (f" (**{metrics['validation_fold']}**)" if metrics.get("validation_fold") else "")),
        (f"- profile: `{settings['profile']}`; image {settings['image_size']}×{settings['image_size']}, "
         f"Otsu binarization {'on' if settings['binarize'] else 'off'}"),
        f"- model: {metrics.get('model_description', 'unknown')}; {metrics.get('params', 0):,} parameters",
        f"- **weights: {metrics.get('weights', 'unknown')}**",
        (f"- training: {settings['epochs']} epochs, batch {settings['batch_size']} ({settings['sampler']} sampler), "
         f"loss {metrics.get('loss_description', settings['loss'])}, Adam {settings['learning_rate']:g}"
         + (f" ({metrics['backbone_rate']})" if metrics.get("backbone_rate") else "") + " with "
         f"{settings['schedule']} schedule; {metrics.get('train_seconds', 0):.0f} s on "
         f"{metrics.get('strategy', 'the default device')}, precision {metrics.get('precision', 'float32')}"),
        pairs_line,
        "",
        "## Metrics",
        "",
        *_metrics_table(metrics, "accuracy_at_train_threshold", "accuracy at training-writer threshold"),
    ]
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
    lines += _figure_lines(figures)
    write_text(run.file("report.md"), "\n".join(lines) + "\n")


def write_evaluation_report(run: RunFolder, metrics: dict, figures) -> None:
    """report.md of `sigverify evaluate`: a trained run's model on another dataset, every writer a test writer."""
    source = metrics["source_run"]
    lines = [f"# Evaluation `{run.path.name}`: run `{source['path']}` on another dataset", "",
             (f"- dataset: {metrics['dataset']} (layout {metrics['layout']}); {len(metrics['test_writers'])} writers, "
              f"all test writers; {metrics['n_test_images']} images"
              + (f" ({metrics['duplicates_dropped']} byte-identical duplicate file(s) inside a writer counted once)"
                 if metrics.get("duplicates_dropped") else "")),
             (f"- model: {source.get('model_description', 'unknown')} from a `{source['experiment']}` run on "
              f"{source['dataset']}; weights {source.get('weights', 'unknown')}; model.keras sha256 "
              f"{source['model_sha256'][:16]}…"),
             f"- preprocessing: image {source['image_size']}×{source['image_size']}, as the run trained",
             (f"- distance: {metrics['distance']}; pairs: {metrics['n_pairs']['hard']} hard (genuine vs skilled), "
              f"{metrics['n_pairs']['easy']} easy (genuine vs random)"), "", "## Metrics", "",
             *_metrics_table(metrics, "accuracy_at_run_threshold", "accuracy at the run's training-writer threshold")]
    lines += _protocol_lines(metrics)
    raw = metrics.get("raw_pixels") or {}
    if raw:
        lines += ["", (f"Raw pixels on the same pairs (cosine, max accuracy): skilled {_fmt(raw.get('hard'))}, random "
                       f"{_fmt(raw.get('easy'))}.")]
    calibrated = metrics.get("calibrated_operating_points")
    if calibrated:
        lines += ["", ("The run's calibrated thresholds (K = 1 reference) applied to these pairs: what FAR and FRR they "
                  "give here against what calibration measured:"), "",
                  "| forgeries | operating point | threshold | FAR calibrated | FAR here | FRR calibrated | FRR here |",
                  "|---|---|---|---|---|---|---|"]
        for row in calibrated:
            lines.append(f"| {row['forgeries']} | {row['target']} | {row['threshold']:.4g} | {_fmt(row['far_calibrated'])} "
                         f"| {_fmt(row['far_here'])} | {_fmt(row['frr_calibrated'])} | {_fmt(row['frr_here'])} |")
    elif "calibrated_operating_points" in metrics:
        lines += ["", "The run has no calibration.json (`sigverify calibrate`): no calibrated threshold was applied."]
    dependent = metrics.get("writer_dependent")
    if dependent:
        lines += ["", (f"Writer-dependent protocol (per writer a linear SVM on {dependent['references']} genuine "
                       f"references against other writers' genuine signatures; {dependent['n_writers']} writers; "
                       f"{dependent['svm']}):"), "", "| forgeries | EER, global threshold | EER, per-writer thresholds |",
                  "|---|---|---|"]
        for kind in ("skilled", "random"):
            figures_of_kind = dependent.get(kind) or {}
            lines.append(f"| {kind} | {_fmt(figures_of_kind.get('eer_global_threshold'))} | "
                         f"{_fmt(figures_of_kind.get('eer_user_thresholds'))} |")
    lines += ["", ("Max accuracy and EER use the threshold that is best on these pairs; the last column applies the "
                   "threshold the run chose on its own training writers, the figure a deployment would see."), ""]
    lines += _figure_lines(figures)
    write_text(run.file("report.md"), "\n".join(lines) + "\n")
