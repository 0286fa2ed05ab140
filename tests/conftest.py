"""Shared fixtures: paths to the real inputs beside the checkout, and per-test settings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from core.settings import Settings

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DIR = Path(os.environ.get("SIGHTLINE_SHARED_DIR", REPO_ROOT.parent / "shared"))
REALDATA_DIR = SHARED_DIR / "realdata"


@pytest.fixture(scope="session")
def realdata() -> Path:
    """The folder of real inputs with ground truth; the run fails loudly when it is missing."""
    assert REALDATA_DIR.is_dir(), (
        f"Real test data not found at {REALDATA_DIR}. Place the shared/ folder beside the checkout "
        "or set SIGHTLINE_SHARED_DIR."
    )
    return REALDATA_DIR


@pytest.fixture()
def settings(tmp_path: Path) -> Settings:
    """Settings with a fresh data folder for one test and the demo knowledge base."""
    return Settings.load(data_dir=tmp_path / "data")
