"""Shared fixtures: the real scans (through $PCSEG_REAL_DATA) and small generated data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REAL_DATA_ENV = "PCSEG_REAL_DATA"


@pytest.fixture(scope="session")
def real_root() -> Path:
    """Root of the real SemanticKITTI scans; skips the test with the reason when unset."""
    value = os.environ.get(REAL_DATA_ENV)
    if not value:
        pytest.skip(
            f"${REAL_DATA_ENV} is unset: point it at a SemanticKITTI-layout folder "
            "(CI uses ../shared/data/semantickitti) to run the real-scan tests"
        )
    root = Path(value)
    if not (root / "sequences").is_dir():
        pytest.fail(f"${REAL_DATA_ENV}={root} has no sequences/ folder")
    return root
