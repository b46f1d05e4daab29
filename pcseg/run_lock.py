"""One run per output folder: an advisory lock (``fcntl.flock``) on ``<folder>/.pcseg.lock``.

Two runs writing one folder (a re-submitted job with the same ``hydra.run.dir``, two shells)
would share the rolling ``last.ckpt``, TensorBoard events and metrics, and end with one run's
config beside the other's checkpoints. :func:`lock_run_folder` makes the second fail fast,
naming the folder and the process that holds it.

The lock belongs to the open file, so the kernel drops it when the holder exits for any reason
(SIGKILL and OOM included): a stale lock file never blocks. Resuming a dead run into its own
folder (``ckpt_path=last``) therefore just takes the lock; a run still alive in that folder
keeps blocking. Within one process the lock is re-entrant (tests and notebooks call ``train()``
several times). Only the launching process (global rank 0) locks: the other DDP ranks write
into the same folder on its behalf.

Where ``flock`` does not exist (Windows) or the filesystem refuses it (some network mounts),
the run goes ahead with a warning: the lock is a guard, not a requirement.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path
from typing import IO, Any

from hydra.experimental.callback import Callback as HydraCallback
from omegaconf import DictConfig

log = logging.getLogger(__name__)

#: The lock file's name inside a run folder.
LOCK_NAME = ".pcseg.lock"
#: Environment variables that say "this process is not global rank 0" when non-zero.
_RANK_VARIABLES = ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK")

#: folder (resolved) -> (open lock file, how many holders in this process)
_held: dict[Path, list] = {}


class RunFolderLockedError(RuntimeError):
    """Another live process holds the run folder's lock; the message names it and its pid."""

    def __init__(self, folder: Path, holder: str) -> None:
        self.folder, self.holder = folder, holder
        super().__init__(
            f"{folder}: another run is writing into this folder ({holder}). Two runs in one "
            "folder would mix their checkpoints and logs. Wait for it or stop it, or give this "
            "run its own folder (hydra.run.dir=...); to continue a run that has died, resume "
            "it with ckpt_path=last or ckpt_path=<its run folder>."
        )


def is_launching_process() -> bool:
    """True unless the environment marks this process as a non-zero DDP / SLURM / torchrun rank."""
    for name in _RANK_VARIABLES:
        value = os.environ.get(name, "0").strip() or "0"
        if value.isdigit() and int(value) != 0:
            return False
    return True


def lock_run_folder(folder: str | os.PathLike) -> Path | None:
    """Take the run folder's lock for this process (re-entrant); returns the lock file, or None
    when this process does not lock (a non-zero rank) or the filesystem cannot.

    Raises RunFolderLockedError naming the folder and the holder's pid/host when another live
    process holds it. Release with :func:`unlock_run_folder` (or let the process exit).
    """
    if not is_launching_process():
        return None
    try:
        import fcntl
    except ImportError:  # Windows
        log.warning("%s: no fcntl on this platform: the run folder is not locked", folder)
        return None
    folder = Path(folder).resolve()
    if folder in _held:
        _held[folder][1] += 1
        return folder / LOCK_NAME
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    f: IO[str] = open(path, "a+")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "pid unknown"
        f.close()
        raise RunFolderLockedError(folder, holder) from None
    except OSError as exc:  # e.g. ENOLCK on a network mount without lock support
        f.close()
        log.warning("%s: cannot lock the run folder (%s): going ahead unlocked", folder, exc)
        return None
    f.seek(0)
    f.truncate()
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    f.write(f"pid {os.getpid()} on {socket.gethostname()}, since {stamp}\n")
    f.flush()
    _held[folder] = [f, 1]
    return path


def unlock_run_folder(folder: str | os.PathLike) -> None:
    """Drop one hold of this process on ``folder``'s lock; the last one releases it."""
    folder = Path(folder).resolve()
    entry = _held.get(folder)
    if entry is None:
        return
    entry[1] -= 1
    if entry[1] <= 0:
        del _held[folder]
        entry[0].close()  # closing the file releases the flock


class HydraRunLock(HydraCallback):
    """Hydra callback (configs/hydra/default.yaml): locks ``hydra.run.dir`` in ``on_run_start``,
    before Hydra writes its ``.hydra/`` config and log there, and holds it for the process's
    life, so a second run into a busy folder stops before touching anything in it. (Multirun
    jobs get their own subfolders; ``train()`` locks its output folder as well.)"""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        run_dir = config.hydra.run.dir
        if not run_dir:
            return
        try:
            lock_run_folder(run_dir)
        except RunFolderLockedError as exc:
            # Hydra turns a callback's exception into a warning and runs the job anyway: exit.
            raise SystemExit(f"{type(exc).__name__}: {exc}") from None


__all__ = [
    "LOCK_NAME",
    "HydraRunLock",
    "RunFolderLockedError",
    "is_launching_process",
    "lock_run_folder",
    "unlock_run_folder",
]
