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


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (``make test`` runs ``-n auto``), share the cores between workers:
    each worker's torch (and the processes it starts, through OMP_NUM_THREADS) gets
    cores // workers threads. Left alone, every worker starts one OpenMP thread per core, and
    their spinning threads take the cores from each other: on 2 cores, a 3 s training test
    took 30 s. Tests about thread counts set their own."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers <= 1:
        return
    import torch

    threads = max(1, len(os.sched_getaffinity(0)) // workers)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    # inductor compiles in this process instead of starting a pool of compile workers, which
    # would compete with the other test workers for the same cores
    os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", str(threads))
    torch.set_num_threads(threads)
