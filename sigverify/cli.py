"""The `sigverify` command: dataset tools (`data describe`, `data synthetic`, `data baseline`), and what a trained run
is used for: `verify` a pair or questioned signatures against an enrolled writer, `gallery` / `enroll` / `identify`
(a SQLite gallery of writers), `calibrate` operating points, `score` a CSV of pairs, `evaluate` on another dataset;
`weights list` / `weights install` the shipped signature-pretrained backbones.
Errors in the user's input print one line and exit 2, without a traceback; Ctrl-C exits 130 having changed nothing."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from sigverify.errors import ConfigError, SigverifyError

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


def _describe(args) -> int:
    from sigverify.data.describe import describe_dataset, format_description

    description = describe_dataset(args.data, layout=args.layout, skip_bad_images=args.skip_bad_images,
                                   progress=not args.json)
    print(json.dumps(description, indent=2) if args.json else format_description(description))
    return 0


def _synthetic(args) -> int:
    from sigverify.data.synthetic import generate_synthetic_dataset

    out = generate_synthetic_dataset(Path(args.out), n_writers=args.writers, n_samples=args.samples, seed=args.seed)
    print(f"wrote {args.writers} writers × {args.samples} genuine + {args.samples} forged signatures to {out}")
    return 0


def _baseline(args) -> int:
    from sigverify.evaluation.baselines import raw_pixel_baseline

    result = raw_pixel_baseline(args.data, args.image_size, args.binarize, test_writers_only=not args.all_writers,
                                cache_dir=args.cache_dir)
    print(json.dumps(result, indent=2))
    return 0


def _print_json_or(lines: list[str], payload, as_json: bool) -> None:
    print(json.dumps(payload, indent=2) if as_json else "\n".join(lines))


def _verify(args) -> int:
    from sigverify.verification.decisions import open_gallery, verify_pair, verify_questioned

    if args.db is None:
        if args.run is None or len(args.images) != 2 or args.writer is not None:
            raise ConfigError("verify: expected --run RUN REFERENCE QUESTIONED (a pair), or --db GALLERY --writer ID "
                              "QUESTIONED... (against an enrolled writer)")
        result = verify_pair(args.run, *args.images)
        _print_json_or([(f"distance {result['distance']:.4f} ({result['metric']}), threshold {result['threshold']:.4f} "
                        f"({result['threshold_source']}): {result['decision']}")], result, args.json)
        return 0
    if args.writer is None:
        raise ConfigError("verify --db: expected --writer ID, the enrolled writer the questioned signatures claim to be")
    gallery, run = open_gallery(args.db, args.run)
    with gallery:
        results = verify_questioned(gallery, run, args.writer, args.images, args.far, args.forgeries)
    lines = []
    for result in results:
        point = result["operating_point"]
        rates = (f"calibrated FAR {point['far']:.4f}, FRR {point['frr']:.4f}"
                 + ("" if point["resolved"] else " (FAR target below the calibration's resolution)"))
        lines.append(f"{result['questioned']}: {result['rule']} distance {result['score']:.4g} to {result['references']} "
                     f"reference(s), threshold {result['threshold']:.4g} ({point['far_target']} on {point['forgeries']} "
                     f"forgeries at K = {point['calibrated_at_k']}; {rates}): {result['decision']}")
    _print_json_or(lines, results, args.json)
    return 0


def _gallery_create(args) -> int:
    from sigverify.verification.gallery import Gallery
    from sigverify.verification.trained_run import TrainedRun

    with Gallery.create(args.db, TrainedRun(args.run)) as gallery:
        print(f"created {gallery.path} for run {gallery.meta['run']} ({gallery.dim}-d embeddings, "
              f"{gallery.meta['metric']} distance)")
    return 0


def _gallery_list(args) -> int:
    from sigverify.verification.gallery import Gallery

    with Gallery(args.db) as gallery:
        writers = gallery.writers()
        payload = {"db": str(gallery.path), "run": gallery.meta["run"], "writers": [
            {"writer": writer, "references": count, "enrolled": enrolled} for writer, count, enrolled in writers]}
        lines = [(f"{gallery.path}: {len(writers)} writer(s), {sum(c for _, c, _ in writers)} reference(s); run "
                 f"{gallery.meta['run']}")] + [f"  {writer}: {count} reference(s), enrolled {enrolled}"
                                             for writer, count, enrolled in writers]
    _print_json_or(lines, payload, args.json)
    return 0


def _gallery_remove(args) -> int:
    from sigverify.verification.gallery import Gallery

    with Gallery(args.db) as gallery:
        removed = gallery.remove(args.writer)
    print(f"removed writer {args.writer} and {removed} reference(s) from {args.db}")
    return 0


def _enroll(args) -> int:
    from sigverify.verification.decisions import enrol_files, open_gallery

    if (args.data is None) == (args.writer is None):
        raise ConfigError("enroll: expected --writer ID with reference images, or --data DIR (every genuine signature "
                          "of a dataset folder, one writer each)")
    if args.data is not None:
        from sigverify.data.index import read_index

        if args.images:
            raise ConfigError("enroll --data: takes no image arguments (it enrols the folder's genuine signatures)")
        if not Path(args.data).is_dir():
            raise ConfigError(f"--data {args.data}: no such folder; expected a dataset folder")
        index = read_index(args.data, layout=args.layout)
        genuine = index[index["genuine"]]
        files_by_writer = {str(writer): rows["path"].tolist() for writer, rows in genuine.groupby("writer")}
    else:
        files_by_writer = {args.writer: args.images}
    gallery, run = open_gallery(args.db, args.run)
    with gallery:
        enrolment = enrol_files(gallery, run, files_by_writer)
    for file_name, reason in enrolment.skipped:
        print(f"skipped {file_name}: {reason}")
    print(f"enrolled {sum(enrolment.added.values())} reference(s) for {len(enrolment.added)} writer(s) in {args.db}")
    return 0


def _identify(args) -> int:
    from sigverify.verification.decisions import identify, open_gallery

    gallery, run = open_gallery(args.db, args.run)
    with gallery:
        result = identify(gallery, run, args.questioned, args.top)
    lines = [(f"{result['questioned']}: nearest writers of {result['references']} reference(s) ({result['search']}, "
             f"{result['metric']} distance)")]
    lines += [f"  {rank}. {entry['writer']}  {entry['distance']:.4f}" for rank, entry in enumerate(result["nearest"], 1)]
    _print_json_or(lines, result, args.json)
    return 0


def _calibrate(args) -> int:
    from sigverify.verification.calibration import calibrate_run
    from sigverify.verification.trained_run import TrainedRun

    calibration = calibrate_run(TrainedRun(args.run), args.data, args.layout, args.skip_bad_images)
    print(f"calibrated on {calibration['writers']} ({calibration['n_images']} images); score: {calibration['rule_reason']}")
    for count, kinds in calibration["reference_counts"].items():
        for kind, entry in kinds.items():
            cells = [f"FAR {target}: {point['threshold']:.4g} (FRR {point['frr']:.3f})"
                     for target, point in entry["far"].items()]
            print(f"  K = {count}, {kind}: EER {entry['eer']['rate']:.3f} at {entry['eer']['threshold']:.4g}; "
                  + "; ".join(cells))
    print(f"wrote {Path(args.run) / 'calibration.json'} and det.png")
    return 0


def _score(args) -> int:
    from sigverify.verification.decisions import pair_threshold
    from sigverify.verification.scoring import score_pairs
    from sigverify.verification.trained_run import TrainedRun

    run = TrainedRun(args.run)
    if args.far is None:
        threshold, source = pair_threshold(run.metrics)
    else:
        point = run.calibration().operating_point(1, args.far, args.forgeries)
        threshold, source = point.threshold, f"calibrated at {point.target} on {point.kind} forgeries"
    summary = score_pairs(run, args.pairs, args.out, threshold, progress=not args.quiet)
    print(f"scored {summary.scored} of {summary.rows} pairs into {args.out} (threshold {threshold:.4g}, {source})")
    for line, message in summary.errors[:10]:
        print(f"  line {line}: {message}")
    if len(summary.errors) > 10:
        print(f"  ... {len(summary.errors) - 10} more rows with errors")
    if summary.metrics:
        metrics = summary.metrics
        print(f"labelled pairs: max accuracy {metrics['max_accuracy']:.3f}, EER {metrics['eer_interpolated']:.3f}, "
              f"AUC {metrics['auc']:.3f}, accuracy at the threshold {metrics['accuracy_at_threshold']:.3f}")
    return 1 if summary.errors and not summary.scored else 0


def _evaluate(args) -> int:
    from sigverify.verification.evaluate import evaluate_run

    folder = evaluate_run(args.run, args.data, args.runs, args.layout, args.protocol, args.references,
                          args.skip_bad_images)
    metrics = json.loads((folder / "metrics.json").read_text())
    hard, easy = metrics.get("hard") or {}, metrics.get("easy") or {}
    print(f"wrote {folder}: skilled forgeries max accuracy {hard.get('max_accuracy', float('nan')):.3f}, EER "
          f"{hard.get('eer_interpolated', float('nan')):.3f}; random forgeries max accuracy "
          f"{easy.get('max_accuracy', float('nan')):.3f}")
    return 0


def _weights_list(args) -> int:
    from sigverify.models.signature_weights import SHIPPED_NAMES, shipped_weights

    cards = {backbone: shipped_weights(backbone) for backbone in SHIPPED_NAMES}
    payload = {backbone: shipped.card if shipped else None for backbone, shipped in cards.items()}
    _print_json_or([f"{backbone}: {shipped.describe() if shipped else 'none shipped'}"
                    for backbone, shipped in cards.items()], payload, args.json)
    return 0


def _weights_install(args) -> int:
    from sigverify.pretrain.shipping import install_shipped_weights

    for path in install_shipped_weights(Path(args.run)):
        print(f"installed {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sigverify", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    data = commands.add_parser("data", help="dataset tools").add_subparsers(dest="data_command", required=True)

    describe = data.add_parser("describe", help="decode every image of a dataset folder and summarise it")
    describe.add_argument("--data", required=True, help="dataset folder (CEDAR layout or one folder per writer)")
    describe.add_argument("--layout", default="auto", help="auto (default), cedar or writer-folders")
    describe.add_argument("--json", action="store_true", help="print JSON (keys layout, writers, genuine, forgeries, skipped...)")
    describe.add_argument("--skip-bad-images", action="store_true", help="list unreadable images instead of stopping")
    describe.set_defaults(handler=_describe)

    synthetic = data.add_parser("synthetic", help="generate a synthetic signature set in the CEDAR layout")
    synthetic.add_argument("--out", required=True, help="folder to create (must not exist or be empty)")
    synthetic.add_argument("--writers", type=int, default=55)
    synthetic.add_argument("--samples", type=int, default=24, help="genuine signatures (and as many forgeries) per writer")
    synthetic.add_argument("--seed", type=int, default=0)
    synthetic.set_defaults(handler=_synthetic)

    baseline = data.add_parser("baseline", help="raw-pixel cosine baseline on the test writers' pairs")
    baseline.add_argument("--data", required=True)
    baseline.add_argument("--image-size", type=int, default=128)
    baseline.add_argument("--binarize", action=argparse.BooleanOptionalAction, default=True)
    baseline.add_argument("--all-writers", action="store_true", help="pairs of every writer, not only the test writers")
    baseline.add_argument("--cache-dir", default=None)
    baseline.set_defaults(handler=_baseline)

    verify = commands.add_parser("verify", help="is a questioned signature by the claimed writer? (a trained run)",
                                 description="verify --run RUN REFERENCE QUESTIONED: one pair. verify --db G --writer ID "
                                             "QUESTIONED...: against the writer's enrolled references at a calibrated "
                                             "operating point")
    verify.add_argument("--run", help="a finished run folder (for --db: default the run the gallery was made with)")
    verify.add_argument("--db", help="a gallery file (sigverify gallery create)")
    verify.add_argument("--writer", help="with --db: the enrolled writer the questioned signatures claim to be")
    verify.add_argument("--far", default="0.01", help="with --db: the calibrated false acceptance rate to decide at "
                                                      "(0.1, 0.01, 0.001) or eer (default 0.01)")
    verify.add_argument("--forgeries", default="skilled", choices=["skilled", "random"],
                        help="with --db: the forgeries the operating point was calibrated on (default skilled)")
    verify.add_argument("--json", action="store_true", help="print JSON")
    verify.add_argument("images", nargs="+", help="REFERENCE QUESTIONED, or with --db the questioned images")
    verify.set_defaults(handler=_verify)

    gallery = commands.add_parser("gallery", help="a SQLite gallery of enrolled writers").add_subparsers(
        dest="gallery_command", required=True)
    create = gallery.add_parser("create", help="a new, empty gallery for a trained run")
    create.add_argument("--run", required=True, help="the finished run whose model embeds the references")
    create.add_argument("--db", required=True, help="the gallery file to create (never overwritten)")
    create.set_defaults(handler=_gallery_create)
    listing = gallery.add_parser("list", help="the enrolled writers and their reference counts")
    listing.add_argument("--db", required=True)
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=_gallery_list)
    remove = gallery.add_parser("remove", help="remove a writer and their references")
    remove.add_argument("--db", required=True)
    remove.add_argument("--writer", required=True)
    remove.set_defaults(handler=_gallery_remove)

    enroll = commands.add_parser("enroll", help="enrol a writer's reference signatures (one transaction)")
    enroll.add_argument("--db", required=True, help="the gallery file")
    enroll.add_argument("--writer", help="the writer's id (a customer number, a name)")
    enroll.add_argument("--data", help="instead: enrol every genuine signature of a dataset folder, one writer each")
    enroll.add_argument("--layout", default="auto", help="with --data: auto (default), cedar or writer-folders")
    enroll.add_argument("--run", help="the run folder, if it moved since the gallery was made")
    enroll.add_argument("images", nargs="*", help="reference signature images of --writer")
    enroll.set_defaults(handler=_enroll)

    identify = commands.add_parser("identify", help="the gallery's nearest writers to a questioned signature")
    identify.add_argument("--db", required=True)
    identify.add_argument("--top", type=int, default=5, help="how many writers (default 5)")
    identify.add_argument("--run", help="the run folder, if it moved since the gallery was made")
    identify.add_argument("--json", action="store_true")
    identify.add_argument("questioned", help="the questioned signature image")
    identify.set_defaults(handler=_identify)

    calibrate = commands.add_parser("calibrate", help="thresholds at FAR 10 %%, 1 %%, 0.1 %% and the EER, into the run")
    calibrate.add_argument("--run", required=True)
    calibrate.add_argument("--data", help="calibration writers' dataset folder (default: the run's training writers; "
                                          "the run's test writers are left out of its own dataset)")
    calibrate.add_argument("--layout", default="auto")
    calibrate.add_argument("--skip-bad-images", action="store_true")
    calibrate.set_defaults(handler=_calibrate)

    score = commands.add_parser("score", help="score a CSV of pairs (reference, questioned[, label])")
    score.add_argument("--run", required=True)
    score.add_argument("--pairs", required=True, help="CSV with columns reference, questioned[, label] (paths relative "
                                                      "to the CSV's folder; label 1 genuine / 0 forgery)")
    score.add_argument("--out", required=True, help="the scores CSV to write (replaced only when complete)")
    score.add_argument("--far", help="decide at this calibrated FAR (K = 1) instead of the run's training threshold")
    score.add_argument("--forgeries", default="skilled", choices=["skilled", "random"])
    score.add_argument("--quiet", action="store_true", help="no progress bar")
    score.set_defaults(handler=_score)

    weights = commands.add_parser("weights", help="the signature-pretrained backbones shipped with the package"
                                  ).add_subparsers(dest="weights_command", required=True)
    weights_list = weights.add_parser("list", help="each backbone's shipped weights (checked against the model card)")
    weights_list.add_argument("--json", action="store_true", help="print the model cards")
    weights_list.set_defaults(handler=_weights_list)
    install = weights.add_parser("install", help="copy a pretrain-backbone run's shipped files into the package")
    install.add_argument("run", help="a finished make pretrain-backbone run folder")
    install.set_defaults(handler=_weights_install)

    evaluate = commands.add_parser("evaluate", help="a trained run on another dataset: every writer a test writer")
    evaluate.add_argument("--run", required=True)
    evaluate.add_argument("--data", required=True, help="the dataset folder to evaluate on")
    evaluate.add_argument("--layout", default="auto", help="auto (default), cedar or writer-folders")
    evaluate.add_argument("--runs", default="runs", help="where the evaluation folder goes: RUNS/eval/<id>/")
    evaluate.add_argument("--protocol", default="writer-independent",
                          choices=["writer-independent", "writer-dependent"],
                          help="writer-dependent adds per-writer linear SVMs (Hafemann et al.) beside the pair metrics")
    evaluate.add_argument("--references", type=int, default=12, help="writer-dependent: genuine references per writer")
    evaluate.add_argument("--skip-bad-images", action="store_true")
    evaluate.set_defaults(handler=_evaluate)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except SigverifyError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted: what was under way was not written", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
