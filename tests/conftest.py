"""Shared test fixtures: the development copy of CEDAR, beside the repository in ../shared/data/cedar."""

from pathlib import Path

import pytest

CEDAR_DIR = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "cedar"


@pytest.fixture(scope="session")
def cedar_dir() -> Path:
    """The CEDAR folder (full_org/, full_forg/); tests that use it are skipped when it is absent."""
    if not (CEDAR_DIR / "full_org").is_dir() or not (CEDAR_DIR / "full_forg").is_dir():
        pytest.skip(f"CEDAR not found at {CEDAR_DIR} (expected ../shared/data/cedar beside the repository)")
    return CEDAR_DIR
