"""Crash-safe training checkpoints: atomic writes, random-number state, ``ckpt_path=last``.

Three pieces, each small, that together let a run killed at any moment (SIGKILL, OOM killer,
pre-emption) continue where its last checkpoint left off:

- :class:`AtomicCheckpointIO` (a Lightning ``CheckpointIO`` plugin, ``trainer.plugins``):
  a checkpoint file is either the previous complete version or the new complete version, never
  a truncated mix. Lightning 2.6's ``TorchCheckpointIO`` serialises to memory and then writes
  through an fsspec transaction whose temporary file lives in the system temp folder; when that
  is another filesystem (a tmpfs /tmp, a network share) the final ``shutil.move`` is a copy into
  the target path, so a kill during it leaves a truncated ``last.ckpt``, and nothing is fsynced.
  Here the bytes go to a hidden file next to the target, are fsynced, and ``os.replace`` swaps
  them in (atomic within one directory on POSIX and Windows).
- :class:`StepCheckpoint` (a callback): ``last.ckpt`` every N optimiser steps, for long epochs.
- :class:`RandomState` (a callback): Lightning restores weights, optimiser, scheduler, loops and
  callbacks but not the random generators, so a resumed run would draw different shuffles,
  dropout masks and augmentations from an uninterrupted one. It stores torch's, numpy's,
  Python's and CUDA's generator states in every checkpoint and puts them back on resume.
- :func:`resolve_ckpt_path`: ``ckpt_path=last`` finds the newest ``runs/*/checkpoints/last.ckpt``;
  a run folder or a file path is checked up front, with an error naming what was looked for.
- :func:`safe_torch_load`: the one ``torch.load`` (``weights_only=True``); a pickle that would
  run code raises :class:`UnsafeCheckpointError` naming the file. Lightning's resume reads
  through it too (``AtomicCheckpointIO.load_checkpoint``). Rebuilding a run from a checkpoint's
  config (allow-listed ``_target_`` s) lives in :mod:`pcseg.checkpoint_loading`.
"""

from __future__ import annotations

import glob
import os
import random
import re
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning_fabric.utilities.types import _PATH
from pytorch_lightning.callbacks import ModelCheckpoint

#: The value of ``ckpt_path`` that asks for the newest ``last.ckpt``.
LAST = "last"
#: Lightning's name for the rolling checkpoint (``ModelCheckpoint(save_last=True)``).
LAST_CHECKPOINT = "last.ckpt"


class CheckpointNotFoundError(FileNotFoundError):
    """``ckpt_path`` names no checkpoint; the message says what was searched."""


class CheckpointError(ValueError):
    """A checkpoint is unreadable or was not written by pcseg's train()."""


class UnsafeCheckpointError(CheckpointError):
    """Unpickling the checkpoint would call code (anything beyond tensors and plain containers).

    Raised by :func:`safe_torch_load` before any of it runs.
    """


def safe_torch_load(path: _PATH, map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``: tensors, numbers, strings and plain containers.

    The one way pcseg reads a checkpoint (evaluation, fine-tuning, prediction, and Lightning's
    own resume through :class:`AtomicCheckpointIO`): a pickle that names any other global (an
    object whose ``__reduce__`` calls ``os.system``, ``builtins.open`` ...) is refused by torch's
    restricted unpickler before anything is called, and re-raised as UnsafeCheckpointError
    naming the file and the global. An unreadable file raises CheckpointError naming it.
    """
    import pickle

    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        detail = f"it names {found.group(1)}" if found else str(exc).strip().splitlines()[0]
        raise UnsafeCheckpointError(
            f"{path}: refused: loading it would run code from the file ({detail}). pcseg loads "
            "checkpoints with torch.load(weights_only=True): tensors and plain containers only. "
            "Nothing from the file was executed; re-save it from a source you trust."
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise CheckpointNotFoundError(f"{path}: no such checkpoint file") from None
        raise CheckpointError(
            f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})"
        ) from None


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` to ``.<name>.<host>.<pid>.partial`` beside the target, fsync,
    ``os.replace``, fsync dir.

    Wherever the process dies (an exception while pickling, a full disk, SIGKILL) the target
    holds a complete checkpoint, the old one or the new one; the fsyncs before and after the
    rename extend that to a power cut. The partial file is named per process, so two writers
    (which the run-folder lock, :mod:`pcseg.run_lock`, already keeps apart) can never write into
    one another's bytes; partials left by killed processes of this host are removed by the next
    save. Remote paths (``s3://`` ...) go through Lightning's own transactional save.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        if not _is_local(path):
            super().save_checkpoint(checkpoint, path)
            return
        atomic_torch_save(checkpoint, Path(str(path).removeprefix("file://")))

    def load_checkpoint(
        self,
        path: _PATH,
        map_location: Any | None = lambda storage, loc: storage,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        """Lightning's resume (``trainer.fit(ckpt_path=...)``) and ``validate(ckpt_path=...)``
        read through here: always ``weights_only=True`` (whatever the caller asks), and a
        refused pickle raises UnsafeCheckpointError naming the file (:func:`safe_torch_load`)."""
        if not _is_local(path):
            return super().load_checkpoint(path, map_location=map_location, weights_only=True)
        local = Path(str(path).removeprefix("file://"))
        if not local.is_file():
            raise FileNotFoundError(f"Checkpoint file not found: {local}")
        return safe_torch_load(local, map_location=map_location)


def _is_local(path: _PATH) -> bool:
    return "://" not in str(path) or str(path).startswith("file://")


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save(obj, path)`` such that ``path`` is never left half-written.

    Raises whatever ``torch.save`` raises, after removing the partial file; ``path`` keeps its
    previous content then.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    host = socket.gethostname().replace("/", "_")
    partial = path.with_name(f".{path.name}.{host}.{os.getpid()}.partial")
    _remove_dead_partials(path, host)
    try:
        with open(partial, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _remove_dead_partials(path: Path, host: str) -> None:
    """Delete ``.<name>.<host>.<pid>.partial`` files of ``path`` whose process (on this host)
    is gone: what a SIGKILL mid-save leaves behind."""
    prefix = f".{path.name}.{host}."
    for stale in path.parent.glob(f"{glob.escape(prefix)}*.partial"):
        pid = stale.name[len(prefix) : -len(".partial")]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            stale.unlink(missing_ok=True)
        except PermissionError:  # alive, another user's
            pass


def _fsync_dir(folder: Path) -> None:
    """Persist the rename itself (the directory entry); a no-op where directories can't be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # Windows
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def collect_random_state() -> dict[str, Any]:
    """The state of every generator training draws from, as tensors, ints and lists only
    (so checkpoints still load with ``torch.load(weights_only=True)``).

    torch: (5056,) uint8; numpy: MT19937 key (624,) int64 + position and Gaussian cache;
    python: ``random.getstate()`` as a list; cuda: one uint8 tensor per visible device.
    """
    np_state = np.random.get_state(legacy=False)  # noqa: NPY002 (the global one libraries use)
    version, internal, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "python": [version, list(internal), gauss],
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_random_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`collect_random_state`. CUDA states are restored only when the same
    number of devices is visible (a checkpoint moved to another machine keeps its seeds)."""
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state(  # noqa: NPY002
        {
            "bit_generator": "MT19937",
            "state": {"key": np_state["key"].numpy().astype(np.uint32), "pos": np_state["pos"]},
            "has_gauss": np_state["has_gauss"],
            "gauss": np_state["gauss"],
        }
    )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


class RandomState(pl.Callback):
    """Saves the random generators' states in every checkpoint and restores them on resume.

    Lightning restores callback states before the first batch, after ``seed_everything`` has
    run, so the resumed run draws the same sampler permutation, dropout masks and (with
    ``num_workers=0`` or non-persistent workers) the same augmentations as the run it continues.
    Under DDP every rank gets rank 0's state (only rank 0's checkpoint is written).
    """

    def state_dict(self) -> dict[str, Any]:
        return collect_random_state()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict:
            set_random_state(state_dict)


class StepCheckpoint(ModelCheckpoint):
    """Rewrites ``dirpath/last.ckpt`` every ``every_n_train_steps`` optimiser steps, so a crash
    in a long epoch loses at most that many steps; None or 0 switches it off entirely.

    A plain ``ModelCheckpoint(every_n_train_steps=None, save_last=True)`` would not be off: it
    saves every epoch, and writes ``last.ckpt`` again when training ends. It shares
    ``last.ckpt`` with the epoch-end ``ModelCheckpoint`` (both need
    ``enable_version_counter=False``, or the second writer makes ``last-v1.ckpt``).
    """

    def __init__(self, dirpath: str | os.PathLike, every_n_train_steps: int | None) -> None:
        if every_n_train_steps is not None and every_n_train_steps < 0:
            raise ValueError(f"every_n_train_steps must be None or >= 0, got {every_n_train_steps}")
        super().__init__(
            dirpath=dirpath,
            every_n_train_steps=every_n_train_steps or 0,
            every_n_epochs=0,
            save_top_k=0,
            save_last=bool(every_n_train_steps),
            enable_version_counter=False,
        )


def find_last_checkpoint(runs_dir: Path) -> Path:
    """The newest (by modification time) ``runs_dir/*/checkpoints/last.ckpt``.

    Raises CheckpointNotFoundError naming the pattern searched when there is none.
    """
    pattern = f"*/checkpoints/{LAST_CHECKPOINT}"
    found = [p for p in Path(runs_dir).glob(pattern) if p.is_file()]
    if not found:
        raise CheckpointNotFoundError(
            f"ckpt_path=last: no checkpoint matches {Path(runs_dir) / pattern}; "
            "train once first, or pass ckpt_path=<file or run folder>"
        )
    return max(found, key=lambda p: p.stat().st_mtime)


def resolve_ckpt_path(value: str | os.PathLike | None, runs_dir: Path) -> Path | None:
    """Turn the ``ckpt_path`` setting into an existing checkpoint file (None: start fresh).

    ``last``: the newest ``runs_dir/*/checkpoints/last.ckpt``; a run folder: its
    ``checkpoints/last.ckpt``; anything else must be a checkpoint file. Raises
    CheckpointNotFoundError naming the path otherwise (before any model or data is built).
    """
    if value is None or str(value) == "":
        return None
    if str(value) == LAST:
        return find_last_checkpoint(runs_dir)
    path = Path(value).expanduser()
    if path.is_dir():
        for candidate in (path / "checkpoints" / LAST_CHECKPOINT, path / LAST_CHECKPOINT):
            if candidate.is_file():
                return candidate
        ckpts = sorted(p.name for p in path.glob("*.ckpt")) + sorted(
            f"checkpoints/{p.name}" for p in path.glob("checkpoints/*.ckpt")
        )
        hint = (
            f"; it holds {', '.join(ckpts[:5])}{' ...' if len(ckpts) > 5 else ''}: pass one of "
            "them as ckpt_path=<file>"
            if ckpts
            else "; pass a .ckpt file, a run folder (logs/train/runs/<run>) or ckpt_path=last"
        )
        raise CheckpointNotFoundError(
            f"ckpt_path={path}: a folder, but not a run folder: no checkpoints/{LAST_CHECKPOINT} "
            f"or {LAST_CHECKPOINT} in it{hint}"
        )
    if not path.is_file():
        raise CheckpointNotFoundError(f"ckpt_path={path}: no such checkpoint file")
    return path


def run_dir_of(ckpt: Path) -> Path | None:
    """The run folder a ``<run>/checkpoints/<name>.ckpt`` belongs to, else None."""
    return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else None


__all__ = [
    "LAST",
    "AtomicCheckpointIO",
    "CheckpointError",
    "CheckpointNotFoundError",
    "RandomState",
    "StepCheckpoint",
    "UnsafeCheckpointError",
    "atomic_torch_save",
    "collect_random_state",
    "find_last_checkpoint",
    "resolve_ckpt_path",
    "run_dir_of",
    "safe_torch_load",
    "set_random_state",
]
