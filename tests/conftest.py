"""Shared test fixtures: the development copy of CEDAR (beside the repository in ../shared/data/cedar), the tiny
synthetic dataset the end-to-end tests train on, and a runner for the experiment scripts as a user starts them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CEDAR_DIR = REPO.parent / "shared" / "data" / "cedar"


@pytest.fixture(scope="session")
def cedar_dir() -> Path:
    """The CEDAR folder (full_org/, full_forg/); tests that use it are skipped when it is absent."""
    if not (CEDAR_DIR / "full_org").is_dir() or not (CEDAR_DIR / "full_forg").is_dir():
        pytest.skip(f"CEDAR not found at {CEDAR_DIR} (expected ../shared/data/cedar beside the repository)")
    return CEDAR_DIR


def make_synthetic_dataset(folder: Path, n_writers: int = 10, n_samples: int = 6, seed: int = 1) -> Path:
    """A small synthetic set in the CEDAR layout (10 writers × 6 genuine + 6 forged by default)."""
    from sigverify.data.synthetic import generate_synthetic_dataset

    return generate_synthetic_dataset(Path(folder) / "synthetic", n_writers=n_writers, n_samples=n_samples, seed=seed,
                                      progress=False)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """10 synthetic writers × 6 genuine + 6 forged, made once per test session: the end-to-end tests' data."""
    return make_synthetic_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="session")
def triplet_smoke_run(tiny_dataset, tmp_path_factory):
    """(work folder, run folder, completed process) of one `experiments/triplet.py --profile smoke` run on the tiny
    dataset, shared by the tests that read a finished run (copy it before writing into it)."""
    workdir = tmp_path_factory.mktemp("work")
    result = run_experiment_script("triplet.py", "--profile", "smoke", "--data", tiny_dataset, "--runs",
                                   workdir / "runs", cwd=workdir)
    assert result.returncode == 0, result.stderr[-4000:]
    return workdir, (workdir / "runs" / "triplet" / "latest").resolve(), result


@pytest.fixture()
def triplet_in_process(capsys, monkeypatch, tmp_path):
    """`experiments/triplet.py args...` run in this process (no second TensorFlow start-up), with its own cache:
    returns a CompletedProcess-like record of its exit code and stderr."""
    from sigverify.experiment import run_experiment
    from sigverify.protocol import repeated

    recipe = load_recipe("triplet")
    monkeypatch.setenv("SIGVERIFY_CACHE", str(tmp_path / "cache"))

    def run(*args, env_extra=None):
        for name, value in (env_extra or {}).items():
            monkeypatch.setenv(name, value)
        capsys.readouterr()
        code = run_experiment("triplet", recipe.PROFILES, recipe.prepare, repeated(recipe.train_and_evaluate),
                              argv=[str(arg) for arg in args])
        captured = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, captured.out, captured.err)

    return run


def run_experiment_script(script: str, *args, cwd: Path, env_extra: dict | None = None,
                          timeout: int = 600) -> subprocess.CompletedProcess:
    """`python experiments/<script> args...` in `cwd`, with a preprocessing cache of its own under `cwd`."""
    env = {**os.environ, "SIGVERIFY_CACHE": str(Path(cwd) / "cache"), "TF_CPP_MIN_LOG_LEVEL": "3", **(env_extra or {})}
    return subprocess.run([sys.executable, str(REPO / "experiments" / script), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, env=env)


def load_recipe(name: str):
    """The experiment script `experiments/<name>.py` as a module (its PROFILES, prepare, ...), importable the way the
    script itself imports its neighbours."""
    import importlib.util

    experiments = str(REPO / "experiments")
    if experiments not in sys.path:
        sys.path.insert(0, experiments)
    spec = importlib.util.spec_from_file_location(f"recipe_{name}", REPO / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
