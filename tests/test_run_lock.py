"""One run per folder: a live run's folder lock stops a second run at once; a dead one's does not."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pcseg import PROJECT_ROOT
from pcseg.checkpointing import AtomicCheckpointIO
from pcseg.run_lock import LOCK_NAME, RunFolderLockedError, lock_run_folder, unlock_run_folder

HOLD = """
import sys, time
from pcseg.run_lock import lock_run_folder
lock_run_folder(sys.argv[1])
print("locked", flush=True)
time.sleep(120)
"""


def hold_lock(folder: Path) -> subprocess.Popen:
    """Another process that takes ``folder``'s lock and keeps it until killed."""
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    for name in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "NODE_RANK", "GROUP_RANK"):
        env.pop(name, None)
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(folder)], env=env, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_process_fails_fast_naming_the_folder_and_the_holder(tmp_path):
    first = hold_lock(tmp_path / "run")
    try:
        start = time.monotonic()
        with pytest.raises(
            RunFolderLockedError, match=rf"{re.escape(str(tmp_path / 'run'))}.*pid {first.pid}"
        ):
            lock_run_folder(tmp_path / "run")
        assert time.monotonic() - start < 1.0
    finally:
        first.kill()
        first.wait(timeout=30)
    # the holder died (as a killed run does): its lock went with it, a resume can take it
    assert lock_run_folder(tmp_path / "run") == (tmp_path / "run" / LOCK_NAME).resolve()
    assert f"pid {os.getpid()}" in (tmp_path / "run" / LOCK_NAME).read_text()
    unlock_run_folder(tmp_path / "run")


def test_the_lock_is_reentrant_in_one_process_and_skipped_on_other_ranks(tmp_path, monkeypatch):
    assert lock_run_folder(tmp_path) is not None
    assert lock_run_folder(tmp_path) is not None
    unlock_run_folder(tmp_path)
    unlock_run_folder(tmp_path)
    monkeypatch.setenv("LOCAL_RANK", "1")  # a DDP worker writes on rank 0's behalf
    first = hold_lock(tmp_path)
    try:
        assert lock_run_folder(tmp_path) is None
    finally:
        first.kill()
        first.wait(timeout=30)


@pytest.mark.slow
def test_train_cli_into_a_busy_folder_stops_before_writing_anything(tmp_path):
    """The second train.py into a folder a live run holds exits at once with the holder's pid,
    and leaves the folder as it was (Hydra's .hydra/ config included)."""
    run_dir = tmp_path / "run"
    first = hold_lock(run_dir)
    try:
        env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
        proc = subprocess.run(
            [
                sys.executable,
                str(PROJECT_ROOT / "train.py"),
                f"hydra.run.dir={run_dir}",
                "data.root=/nonexistent",
                "data=semantickitti",
            ],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        first.kill()
        first.wait(timeout=30)
    assert proc.returncode != 0
    assert f"another run is writing into this folder (pid {first.pid}" in proc.stderr
    assert sorted(p.name for p in run_dir.iterdir()) == [LOCK_NAME]


def test_checkpoint_partials_are_per_process(tmp_path):
    """A partial file left by a killed writer (another pid) never becomes ours, and is cleared."""
    target = tmp_path / "last.ckpt"
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    import socket

    stale = tmp_path / f".last.ckpt.{socket.gethostname()}.{int(dead.stdout)}.partial"
    stale.write_bytes(b"half a checkpoint")
    AtomicCheckpointIO().save_checkpoint({"w": 1}, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]
