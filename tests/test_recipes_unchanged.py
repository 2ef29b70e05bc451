"""Every experiment's smoke profile, at a fixed seed with op determinism, gives the numbers recorded in
`tests/data/recipe_metrics.json`: a change of layout (moving code between modules, one training-engine interface,
input scaling inside the model) must not change what a recipe computes.

The numbers were recorded before the layout change; `python tests/test_recipes_unchanged.py --write` records them
anew (do that only for a change that is meant to move the numbers, and say why in the commit). Counts (pairs,
parameters, writers) must match exactly; scores and losses within RATE_TOLERANCE, since another CPU's kernels may round
differently and flip a pair at a tie.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.conftest import make_synthetic_dataset, run_experiment_script

GOLDEN = Path(__file__).parent / "data" / "recipe_metrics.json"
RATE_TOLERANCE = 0.03  # a few pairs of a smoke run's few hundred
LOSS_TOLERANCE = 2e-3  # relative, per epoch of history.csv
SCORE_KEYS = ("max_accuracy", "eer", "auc", "accuracy_at_train_threshold")

RECIPES = {
    "triplet": ["triplet.py"],
    "contrastive": ["contrastive.py"],
    "models": ["models.py", "--zoo", "smaller_resnet50,base_cnn,pretrained_resnet50"],
    "losses": ["losses.py", "--losses", "semihard,contrastive,arcface"],
    "pretrain": ["pretrain.py", "--method", "simclr"],
    "pretrain-compare": ["pretrain_compare.py", "--starts", "random,synthetic"],
}
# What the test runs of each recipe, and the sub-runs that gives (the recording has more): each of these sub-runs
# seeds itself and does not depend on which others ran, and the ones left out train what the triplet recipe trains.
# The zoo runs whole: the first model with a backbone also makes the process's one ImageNet download attempt (a
# throw-away model) after its seed is set, so its numbers depend on being first.
CHECKED = {
    "triplet": ([], ["."]), "contrastive": ([], ["."]), "pretrain": (RECIPES["pretrain"][1:], ["."]),
    "models": (RECIPES["models"][1:], ["base_cnn-seed0", "pretrained_resnet50-seed0", "smaller_resnet50-seed0"]),
    "losses": (["--losses", "contrastive,arcface"], ["arcface-seed0", "contrastive-seed0"]),
    "pretrain-compare": (["--starts", "synthetic"], ["pretrain-synthetic", "synthetic-seed0"]),
}


def recipe_numbers(run_dir: Path) -> dict:
    """{sub-run path: numbers} for the run and every finished sub-run under it that wrote metrics.json."""
    numbers = {}
    for metrics_file in sorted(run_dir.rglob("metrics.json")):
        metrics = json.loads(metrics_file.read_text())
        entry = {"params": metrics.get("params"), "n_pairs": metrics.get("n_pairs"),
                 "test_writers": metrics.get("test_writers")}
        for pair_set in ("hard", "easy"):
            values = metrics.get(pair_set) or {}
            entry[pair_set] = {key: values.get(key) for key in SCORE_KEYS}
        history = metrics_file.parent / "history.csv"
        if history.is_file():
            lines = history.read_text().splitlines()
            header = lines[0].split(",")
            entry["loss"] = [float(row.split(",")[header.index("loss")]) for row in lines[1:] if row]
        numbers[str(metrics_file.parent.relative_to(run_dir)) or "."] = entry
    return numbers


def run_recipe(name: str, dataset: Path, workdir: Path, extra_args: list[str] | None = None) -> dict:
    script, *extra = RECIPES[name]
    if extra_args is not None:
        extra = extra_args
    result = run_experiment_script(script, "--profile", "smoke", "--data", dataset, "--runs", workdir / "runs",
                                   "--seed", "0", "--deterministic", *extra, cwd=workdir)
    assert result.returncode == 0, result.stderr[-4000:]
    folder = script.removesuffix(".py").replace("_", "-")
    return recipe_numbers((workdir / "runs" / folder / "latest").resolve())


def _close(expected, actual, tolerance: float, relative: bool = False) -> bool:
    if expected is None or actual is None:
        return expected is actual
    if isinstance(expected, float) and math.isnan(expected):
        return math.isnan(actual)
    scale = max(abs(expected), 1.0) if relative else 1.0
    return abs(expected - actual) <= tolerance * scale


def compare(expected: dict, actual: dict) -> list[str]:
    problems = []
    if sorted(expected) != sorted(actual):
        return [f"sub-runs: expected {sorted(expected)}, got {sorted(actual)}"]
    for run, want in expected.items():
        got = actual[run]
        for key in ("params", "n_pairs", "test_writers"):
            if want[key] != got[key]:
                problems.append(f"{run}: {key} {got[key]} != {want[key]}")
        for pair_set in ("hard", "easy"):
            for key in SCORE_KEYS:
                if not _close(want[pair_set][key], got[pair_set][key], RATE_TOLERANCE):
                    problems.append(f"{run}: {pair_set}.{key} {got[pair_set][key]} != {want[pair_set][key]}")
        if len(want.get("loss", [])) != len(got.get("loss", [])):
            problems.append(f"{run}: {len(got.get('loss', []))} epochs of history, expected {len(want.get('loss', []))}")
        elif not all(_close(w, g, LOSS_TOLERANCE, relative=True) for w, g in zip(want.get("loss", []), got.get("loss", []))):
            problems.append(f"{run}: training losses {got.get('loss')} != {want.get('loss')}")
    return problems


@pytest.fixture(scope="module")
def recorded() -> dict:
    return json.loads(GOLDEN.read_text())


@pytest.mark.parametrize("name", list(RECIPES))
def test_smoke_recipe_gives_the_recorded_numbers(name, recorded, tiny_dataset, tmp_path):
    args, sub_runs = CHECKED[name]
    problems = compare({run: recorded[name][run] for run in sub_runs}, run_recipe(name, tiny_dataset, tmp_path, args))
    assert not problems, "\n".join(problems)


def test_the_comparison_catches_a_changed_number(recorded):
    run, numbers = next(iter(recorded["triplet"].items()))
    changed = json.loads(json.dumps(numbers))
    changed["hard"]["max_accuracy"] += 2 * RATE_TOLERANCE
    assert compare({run: numbers}, {run: changed}) and not compare({run: numbers}, {run: numbers})


if __name__ == "__main__" and "--write" in sys.argv:
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        dataset = make_synthetic_dataset(Path(scratch) / "data")
        numbers = {}
        for recipe in RECIPES:
            workdir = Path(scratch) / recipe
            workdir.mkdir()
            numbers[recipe] = run_recipe(recipe, dataset, workdir)
            print(recipe, json.dumps(numbers[recipe])[:300], flush=True)
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps(numbers, indent=1) + "\n")
