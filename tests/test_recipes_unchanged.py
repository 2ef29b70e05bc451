"""Every experiment's smoke profile, at a fixed seed with op determinism, computes what was recorded in
`tests/data/recipe_metrics.json`: a change of layout (moving code between modules, one training-engine interface,
input scaling inside the model) must not change what a recipe computes.

Counts (sub-runs, parameters, pairs, test writers, epochs) must match on every machine. Scores and training losses
must match exactly, but only in a numerics class they were recorded in (`tests/numerics_probe.py`: CPU, TensorFlow,
oneDNN, a hashed training step): another CPU's kernels round differently, and two smoke epochs turn that into a few
pairs of 60 and a few per cent of loss, more than any tolerance that would still catch a changed recipe. Elsewhere the
numbers test skips and names the class. `python tests/test_recipes_unchanged.py --write` records this machine's numbers
anew and drops the other classes (only for a change meant to move the numbers: say why in the commit); `--write --add`
adds this machine's class beside the recorded ones, for an unchanged recipe.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.conftest import make_synthetic_dataset, run_experiment_script

GOLDEN = Path(__file__).parent / "data" / "recipe_metrics.json"
PROBE = Path(__file__).parent / "numerics_probe.py"
COUNT_KEYS = ("params", "n_pairs", "test_writers", "epochs")
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


def recipe_outcome(run_dir: Path) -> dict:
    """{"counts": {sub-run: ...}, "numbers": {sub-run: ...}} of the run and every finished sub-run under it that wrote
    metrics.json."""
    outcome = {"counts": {}, "numbers": {}}
    for metrics_file in sorted(run_dir.rglob("metrics.json")):
        run = str(metrics_file.parent.relative_to(run_dir)) or "."
        metrics = json.loads(metrics_file.read_text())
        history = metrics_file.parent / "history.csv"
        losses = []
        if history.is_file():
            lines = history.read_text().splitlines()
            column = lines[0].split(",").index("loss")
            losses = [float(row.split(",")[column]) for row in lines[1:] if row]
        outcome["counts"][run] = {"params": metrics.get("params"), "n_pairs": metrics.get("n_pairs"),
                                  "test_writers": metrics.get("test_writers"), "epochs": len(losses)}
        outcome["numbers"][run] = {pair_set: {key: (metrics.get(pair_set) or {}).get(key) for key in SCORE_KEYS}
                                   for pair_set in ("hard", "easy")}
        outcome["numbers"][run]["loss"] = losses
    return outcome


def run_recipe(name: str, dataset: Path, workdir: Path, extra_args: list[str] | None = None) -> dict:
    script, *extra = RECIPES[name]
    if extra_args is not None:
        extra = extra_args
    result = run_experiment_script(script, "--profile", "smoke", "--data", dataset, "--runs", workdir / "runs",
                                   "--seed", "0", "--deterministic", *extra, cwd=workdir)
    assert result.returncode == 0, result.stderr[-4000:]
    folder = script.removesuffix(".py").replace("_", "-")
    return recipe_outcome((workdir / "runs" / folder / "latest").resolve())


def this_numerics_class() -> dict:
    """The probe's {"key", "machine"}, run in a process of its own with the environment the recipes run in."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run([sys.executable, str(PROBE)], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def _same(expected, actual) -> bool:
    if isinstance(expected, float) and isinstance(actual, float):
        both_nan = math.isnan(expected) and math.isnan(actual)
        return both_nan or math.isclose(expected, actual, rel_tol=1e-12, abs_tol=1e-12)
    return expected == actual


def compare(expected: dict, actual: dict) -> list[str]:
    """What differs between two {sub-run: {key: value or {key: value} or [values]}} records, one line each."""
    if sorted(expected) != sorted(actual):
        return [f"sub-runs: expected {sorted(expected)}, got {sorted(actual)}"]
    problems = []
    for run, want in expected.items():
        for key, wanted in want.items():
            got = actual[run].get(key)
            if isinstance(wanted, dict):
                problems += [f"{run}: {key}.{inner} {got.get(inner)} != {value}" for inner, value in wanted.items()
                             if not _same(value, got.get(inner))]
            elif isinstance(wanted, list) and wanted and isinstance(wanted[0], float):
                if len(wanted) != len(got) or not all(map(_same, wanted, got)):
                    problems.append(f"{run}: {key} {got} != {wanted}")
            elif not _same(wanted, got):
                problems.append(f"{run}: {key} {got} != {wanted}")
    return problems


@pytest.fixture(scope="module")
def recorded() -> dict:
    return json.loads(GOLDEN.read_text())


@pytest.fixture(scope="module")
def numerics() -> dict:
    return this_numerics_class()


@pytest.fixture(scope="module")
def outcomes(tiny_dataset, tmp_path_factory):
    """Each checked recipe's outcome, run once on first use and shared by the counts and numbers tests."""
    done = {}

    def outcome_of(name: str) -> dict:
        if name not in done:
            args, _ = CHECKED[name]
            done[name] = run_recipe(name, tiny_dataset, tmp_path_factory.mktemp(name), args)
        return done[name]

    return outcome_of


def checked(name: str, record: dict) -> dict:
    return {run: record[name][run] for run in CHECKED[name][1]}


@pytest.mark.parametrize("name", list(RECIPES))
def test_smoke_recipe_gives_the_recorded_counts(name, recorded, outcomes):
    problems = compare(checked(name, recorded["counts"]), outcomes(name)["counts"])
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("name", list(RECIPES))
def test_smoke_recipe_gives_the_recorded_numbers(name, recorded, numerics, outcomes):
    in_class = recorded["numbers"].get(numerics["key"])
    if in_class is None:
        seen = "; ".join(entry["machine"] for entry in recorded["numbers"].values())
        pytest.skip(f"numbers recorded only for {seen}; this is {numerics['machine']} (class {numerics['key']}): "
                    "`python tests/test_recipes_unchanged.py --write --add` records it")
    problems = compare(checked(name, in_class["recipes"]), outcomes(name)["numbers"])
    assert not problems, "\n".join(problems)


def test_the_numerics_probe_prints_one_class_per_machine(numerics):
    assert this_numerics_class() == numerics and len(numerics["key"]) == 16


def test_the_comparison_catches_a_changed_number(recorded):
    numbers = next(iter(recorded["numbers"].values()))["recipes"]["triplet"]
    changed = json.loads(json.dumps(numbers))
    changed["."]["hard"]["max_accuracy"] += 1 / 60
    changed_loss = json.loads(json.dumps(numbers))
    changed_loss["."]["loss"][-1] *= 1 + 1e-7
    counts = recorded["counts"]["triplet"]
    more_params = json.loads(json.dumps(counts))
    more_params["."]["params"] += 1
    assert compare(numbers, changed) and compare(numbers, changed_loss) and compare(counts, more_params)
    assert not compare(numbers, numbers) and not compare(counts, counts)


def record(add: bool) -> None:
    """Runs every recipe whole on a fresh tiny dataset and writes its counts and this machine's numbers."""
    import tempfile

    numerics_now = this_numerics_class()
    with tempfile.TemporaryDirectory() as scratch:
        dataset = make_synthetic_dataset(Path(scratch) / "data")
        found = {}
        for recipe in RECIPES:
            workdir = Path(scratch) / recipe
            workdir.mkdir()
            found[recipe] = run_recipe(recipe, dataset, workdir)
            print(recipe, json.dumps(found[recipe]["numbers"])[:300], flush=True)
    counts = {recipe: outcome["counts"] for recipe, outcome in found.items()}
    golden = json.loads(GOLDEN.read_text()) if add else {"counts": counts, "numbers": {}}
    if golden["counts"] != counts:
        raise SystemExit(f"{GOLDEN}: the recorded counts differ from this run's, so the recipes changed: "
                         "record anew with --write alone")
    golden["numbers"][numerics_now["key"]] = {
        "machine": numerics_now["machine"], "recipes": {recipe: outcome["numbers"] for recipe, outcome in found.items()}}
    GOLDEN.parent.mkdir(exist_ok=True)
    written = GOLDEN.with_suffix(".json.tmp")
    written.write_text(json.dumps(golden, indent=1) + "\n")
    written.replace(GOLDEN)


if __name__ == "__main__" and "--write" in sys.argv:
    record(add="--add" in sys.argv)
