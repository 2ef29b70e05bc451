"""The `sigverify` command: dataset tools (`data describe`, `data synthetic`, `data baseline`) and `verify` of a
signature pair with a trained run. Errors in the user's input print one line and exit 2, without a traceback."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from sigverify.errors import SigverifyError

EXIT_BAD_INPUT = 2


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


def _verify(args) -> int:
    from sigverify.verify import verify_pair

    result = verify_pair(args.run, args.first, args.second)
    print(f"distance {result['distance']:.4f} ({result['metric']}), threshold {result['threshold']:.4f} "
          f"({result['threshold_source']}): {result['decision']}")
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

    verify = commands.add_parser("verify", help="is B by the same writer as A? (with a trained run)")
    verify.add_argument("--run", required=True, help="a finished run folder (holds model.keras, config.yaml, metrics.json)")
    verify.add_argument("first", help="reference signature image")
    verify.add_argument("second", help="questioned signature image")
    verify.set_defaults(handler=_verify)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except SigverifyError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
