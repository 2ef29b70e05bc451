"""bench-verify: how long a decision takes with a trained run, at the quick profile's model (ResNet50 cut at
conv3_block4_add + head, 96×96): one questioned signature against a writer's 12 enrolled references, in process with
the model loaded once (target ≤ 50 ms on 2 cores), beside what a `sigverify verify --db` call costs from a cold start
(Python and TensorFlow import, model load, first call that traces the model) and the whole CLI call's wall time.

The run is a real finished run (the smoke profile at the quick profile's image size, 1 epoch: speed does not depend on
training), calibrated on its training writers; the gallery holds one writer with 12 references.

    python benchmarks/bench_verify.py   (or: make bench-verify)
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, write_results

QUICK_IMAGE_SIZE = 96  # experiments/triplet.py PROFILES["quick"]
REFERENCES = 12
REPEATS = 50
CLI_REPEATS = 3

# A fresh process's phases: import, model load, the first decision (which traces the model).
COLD_START = """
import json, sys, time
started = time.perf_counter()
from sigverify.verification.decisions import open_gallery, verify_questioned
imported = time.perf_counter()
gallery, run = open_gallery(sys.argv[1])
run.model
loaded = time.perf_counter()
verify_questioned(gallery, run, "customer-1", [sys.argv[2]])
decided = time.perf_counter()
print(json.dumps({"import_s": imported - started, "model_load_s": loaded - imported, "first_call_s": decided - loaded}))
"""


def make_run(workdir: Path) -> tuple[Path, Path]:
    """(run folder, dataset folder): a synthetic set with enough genuine signatures, and a finished triplet run."""
    from tests.conftest import make_synthetic_dataset

    data = make_synthetic_dataset(workdir, n_writers=10, n_samples=REFERENCES + 2, seed=3)
    env = {**os.environ, "SIGVERIFY_CACHE": str(workdir / "cache"), "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, str(REPO / "experiments" / "triplet.py"), "--profile", "smoke", "--data",
                           str(data), "--image-size", str(QUICK_IMAGE_SIZE), "--epochs", "1", "--runs",
                           str(workdir / "runs")], env=env, capture_output=True, text=True, cwd=workdir)
    if done.returncode:
        raise SystemExit(f"the benchmark's run failed:\n{done.stderr[-3000:]}")
    return (workdir / "runs" / "triplet" / "latest").resolve(), data


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="bench-verify-") as scratch:
        workdir = Path(scratch)
        os.environ["SIGVERIFY_CACHE"] = str(workdir / "cache")
        run_dir, data = make_run(workdir)
        genuine = sorted((data / "full_org").glob("original_1_*.png"), key=lambda p: int(p.stem.split("_")[-1]))
        references, questioned = [str(p) for p in genuine[:REFERENCES]], str(genuine[REFERENCES])

        from sigverify.verification.calibration import calibrate_run
        from sigverify.verification.decisions import enrol_files, open_gallery, verify_questioned
        from sigverify.verification.gallery import Gallery
        from sigverify.verification.trained_run import TrainedRun

        run = TrainedRun(run_dir)
        calibrate_run(run)
        db = workdir / "gallery.sqlite"
        Gallery.create(db, run).close()
        gallery, run = open_gallery(db)
        enrol_files(gallery, run, {"customer-1": references})
        verify_questioned(gallery, run, "customer-1", [questioned])  # traces the model
        latencies = []
        for _ in range(REPEATS):
            started = time.perf_counter()
            verify_questioned(gallery, run, "customer-1", [questioned])
            latencies.append(time.perf_counter() - started)
        gallery.close()

        environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        cold = json.loads(subprocess.run([sys.executable, "-c", COLD_START, str(db), questioned], check=True,
                                         capture_output=True, text=True, env=environment).stdout.splitlines()[-1])
        cli_seconds = []
        for _ in range(CLI_REPEATS):
            started = time.perf_counter()
            subprocess.run([sys.executable, "-m", "sigverify.cli", "verify", "--db", str(db), "--writer", "customer-1",
                            questioned], check=True, capture_output=True, env=environment)
            cli_seconds.append(time.perf_counter() - started)

    p50 = statistics.median(latencies) * 1000
    summary = {
        "in_process_verify_ms_p50": round(p50, 2),
        "in_process_verify_ms_p95": round(sorted(latencies)[int(0.95 * len(latencies)) - 1] * 1000, 2),
        "target_ms": 50,
        "cold_start": {name: round(seconds, 2) for name, seconds in cold.items()},
        "cli_call_s_median": round(statistics.median(cli_seconds), 2),
    }
    rows = [{"measure": "in-process verify, 1 questioned vs 12 references", "ms": [round(t * 1000, 2) for t in latencies]},
            {"measure": "sigverify verify --db (whole process)", "s": [round(t, 2) for t in cli_seconds]}]
    ratio_line = (f"ratio: a CLI call / an in-process decision = {summary['cli_call_s_median'] * 1000 / p50:.0f}x "
                  f"(in process p50 {p50:.1f} ms, target ≤ 50 ms; CLI {summary['cli_call_s_median']:.1f} s: import "
                  f"{cold['import_s']:.1f} s, model load {cold['model_load_s']:.1f} s, first call "
                  f"{cold['first_call_s']:.1f} s)")
    write_results("verify", {"image_size": QUICK_IMAGE_SIZE, "model": "quick profile (resnet50 cut at conv3_block4_add)",
                             "references": REFERENCES, "repeats": REPEATS}, rows, summary, ratio_line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
