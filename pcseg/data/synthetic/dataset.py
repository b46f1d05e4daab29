"""Whole-dataset generation: sequences in parallel, a completion marker written last.

``ROOT/synthetic.json`` records the seed, the sequences (id -> frames) and
:data:`GENERATOR_VERSION`. It is written only after every file exists, so
:func:`ensure_dataset` can tell a complete dataset (reused instantly) from an interrupted or
different one (regenerated).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Mapping
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from contextlib import ExitStack
from multiprocessing import Manager
from pathlib import Path
from queue import Empty

from pcseg.data.synthetic.sensor import LidarConfig
from pcseg.data.synthetic.sequence import write_sequence

#: Many short sequences rather than a few long ones: consecutive frames of one scene repeat the
#: same objects, so 50 scenes x 2 frames teach far more than 4 x 25 for the same training cost.
#: Validation and test hold three sequences of each layout (sequence % 4), one frame each; every
#: scene has a truck and a motorcycle on purpose, so each split's 12 scans show all 19 classes.
DEFAULT_SPLIT: dict[str, list[int]] = {
    "train": list(range(50)),
    "valid": list(range(50, 62)),
    "test": list(range(62, 74)),
}
#: sequence id -> number of frames
DEFAULT_SEQUENCES: dict[int, int] = {
    **dict.fromkeys(DEFAULT_SPLIT["train"], 2),
    **dict.fromkeys(DEFAULT_SPLIT["valid"] + DEFAULT_SPLIT["test"], 1),
}
#: bump when the generator's output changes, so old datasets are regenerated
GENERATOR_VERSION = 6
MARKER = "synthetic.json"


class DatasetSpecError(ValueError):
    """Bad arguments for dataset generation (negative ids, zero frames, bad worker count)."""


def _check(sequences: Mapping[int, int], workers: int | None) -> dict[int, int]:
    if not sequences:
        raise DatasetSpecError("sequences is empty: give at least one {sequence_id: frames}")
    out = {}
    for seq, frames in sequences.items():
        if not 0 <= int(seq) <= 99:
            raise DatasetSpecError(f"sequence id {seq} is outside 0..99 (two-digit folders)")
        if int(frames) < 1:
            raise DatasetSpecError(f"sequence {seq}: frames must be >= 1, got {frames}")
        out[int(seq)] = int(frames)
    if workers is not None and workers < 1:
        raise DatasetSpecError(f"workers must be >= 1, got {workers}")
    return out


def _marker_content(sequences: Mapping[int, int], seed: int, lidar: LidarConfig | None) -> dict:
    content = {
        "generator_version": GENERATOR_VERSION,
        "seed": int(seed),
        "sequences": {f"{k:02d}": v for k, v in sorted(sequences.items())},
    }
    if lidar is not None and lidar != LidarConfig():
        content["lidar"] = json.loads(json.dumps(dataclasses.asdict(lidar)))
    return content


def _files_present(root: Path, sequences: Mapping[int, int]) -> bool:
    for seq, frames in sequences.items():
        folder = root / "sequences" / f"{seq:02d}"
        for name in ("poses.txt", "times.txt", "calib.txt"):
            if not (folder / name).is_file():
                return False
        for sub, ext in (("velodyne", ".bin"), ("labels", ".label")):
            if not all((folder / sub / f"{f:06d}{ext}").is_file() for f in range(frames)):
                return False
    return True


def is_complete(
    root: str | Path,
    sequences: Mapping[int, int] = DEFAULT_SEQUENCES,
    seed: int = 0,
    lidar: LidarConfig | None = None,
) -> bool:
    """True if ``root`` holds a finished dataset generated with these arguments."""
    root = Path(root)
    try:
        marker = json.loads((root / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return marker == _marker_content(_check(sequences, None), seed, lidar) and _files_present(
        root, sequences
    )


def _one(
    root: str, seq: int, frames: int, seed: int, lidar: LidarConfig | None, frames_done=None
) -> int:
    """Write one sequence; ``frames_done`` (a queue) receives one item per written frame."""
    on_frame = None if frames_done is None else (lambda: frames_done.put(1))
    write_sequence(Path(root), seq, frames, seed, lidar, on_frame=on_frame)
    return seq


def generate_dataset(
    root: str | Path,
    sequences: Mapping[int, int] = DEFAULT_SEQUENCES,
    seed: int = 0,
    progress: bool = True,
    workers: int | None = None,
    lidar: LidarConfig | None = None,
) -> Path:
    """Generate the dataset into ``root`` (overwriting its sequences) and return ``root``.

    Sequences run in a process pool of ``workers`` (default: CPU count, at most the number of
    sequences); each is deterministic on its own, so the bytes do not depend on ``workers``.
    ``lidar``: sensor parameters (default: the full HDL-64E; smaller ones make fast tests).
    ``progress`` shows a rich progress bar counting frames.
    """
    seqs = _check(sequences, workers)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / MARKER).unlink(missing_ok=True)  # from here on the dataset is incomplete
    for seq in seqs:
        shutil.rmtree(root / "sequences" / f"{seq:02d}", ignore_errors=True)
    n_workers = min(workers or os.cpu_count() or 1, len(seqs))
    order = sorted(seqs, key=lambda k: -seqs[k])  # longest first balances the pool
    bar = _progress(progress)
    with bar:
        task = None
        if not isinstance(bar, _NoBar):
            task = bar.add_task("synthetic LiDAR", total=sum(seqs.values()))
        if n_workers == 1:
            for seq in order:
                tick = _Tick(bar, task) if task is not None else None
                _one(str(root), seq, seqs[seq], seed, lidar, tick)
        else:
            _run_pool(root, seqs, order, seed, lidar, n_workers, bar, task)
    (root / MARKER).write_text(json.dumps(_marker_content(seqs, seed, lidar), indent=2) + "\n")
    return root


class _Tick:
    """Queue-like adapter advancing a progress bar in this process."""

    def __init__(self, bar, task) -> None:
        self.bar, self.task = bar, task

    def put(self, n: int) -> None:
        self.bar.advance(self.task, n)


def _run_pool(root, seqs, order, seed, lidar, n_workers, bar, task) -> None:
    """Sequences in worker processes; frame ticks come back through a manager queue."""
    with ExitStack() as stack:
        queue = None
        if task is not None:
            queue = stack.enter_context(Manager()).Queue()
        pool = stack.enter_context(ProcessPoolExecutor(n_workers))
        pending = {pool.submit(_one, str(root), s, seqs[s], seed, lidar, queue) for s in order}
        while pending:
            done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            for fut in done:
                fut.result()  # re-raise a worker's error here
            _drain(queue, bar, task)
        _drain(queue, bar, task)


def _drain(queue, bar, task) -> None:
    if queue is None:
        return
    while True:
        try:
            bar.advance(task, queue.get_nowait())
        except Empty:
            return


class _NoBar:
    def __enter__(self):
        return None

    def __exit__(self, *exc) -> None:
        return None


def _progress(enabled: bool):
    if not enabled:
        return _NoBar()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        "frames",
        TimeElapsedColumn(),
    )


def ensure_dataset(
    root: str | Path,
    sequences: Mapping[int, int] = DEFAULT_SEQUENCES,
    seed: int = 0,
    progress: bool = True,
    workers: int | None = None,
    lidar: LidarConfig | None = None,
) -> Path:
    """Return ``root``, generating the dataset first unless a complete one with the same seed,
    sequences, sensor and generator version is already there."""
    root = Path(root)
    if is_complete(root, sequences, seed, lidar):
        return root
    return generate_dataset(root, sequences, seed, progress, workers, lidar)
