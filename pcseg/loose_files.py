"""Point clouds outside any dataset layout: find them (file, folder or glob) and read them.

``predict.py`` takes whatever a user has: KITTI ``.bin`` scans, ``.pcd``/``.ply`` exports of
other sensors and tools, ``.npy`` arrays of (x, y, z[, intensity]) rows. No labels, no layout.

- :func:`find_inputs`: the files an ``input=`` spec names, and the folder their outputs are laid
  out relative to.
- :class:`LooseScanLoader`: one file -> the one-cloud ``PointBatch`` the network sees, built by
  the checkpoint's own DataModule and Dataset (the file is linked into a one-scan temporary
  SemanticKITTI layout), so a loose file is read, checked, voxelised and featurised exactly as
  ``evaluate.py`` treats a dataset scan. Errors name the user's file, never the link.
- :func:`has_intensity_field` and :func:`read_npy` (``.npy`` becomes a temporary ``.bin``).
"""

from __future__ import annotations

import glob
import os
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from omegaconf import open_dict

from pcseg.checkpoint_loading import LoadedRun, build_datamodule
from pcseg.data.collate import collate_point_clouds
from pcseg.data.errors import DatasetFileError, ScanFormatError
from pcseg.data.io import write_scan
from pcseg.data.validation import MAX_ABS_COORDINATE
from pcseg.structures import PointBatch

__all__ = [
    "INPUT_SUFFIXES",
    "INTENSITY_FIELDS",
    "InputSpecError",
    "LoadedScan",
    "LooseCloud",
    "LooseScanLoader",
    "find_inputs",
    "has_intensity_field",
    "read_npy",
    "read_xyz",
]

#: Formats ``predict.py`` reads.
INPUT_SUFFIXES = (".bin", ".pcd", ".ply", ".npy")
#: Per-point field names taken as the intensity of a ``.pcd``/``.ply`` (as pcseg.data.io reads them).
INTENSITY_FIELDS = ("intensity", "remission", "reflectance", "scalar_intensity")
_GLOB_CHARS = set("*?[")


class InputSpecError(ValueError):
    """The ``input=`` spec names no readable point cloud; the message says what was looked for."""


class LooseCloud(NamedTuple):
    """xyz (P, 3) float32; remission (P,) float32 (zeros where the file had none);
    has_intensity: the file had an intensity field (``.bin`` always does)."""

    xyz: np.ndarray
    remission: np.ndarray
    has_intensity: bool


def find_inputs(spec: str | os.PathLike) -> tuple[Path, list[Path]]:
    """Resolve ``spec`` to (base folder, sorted files).

    A file: itself (any suffix; an unsupported one is reported when it is read). A folder:
    every file with an :data:`INPUT_SUFFIXES` suffix below it, recursively. A glob (``*``,
    ``?``, ``[``; ``**`` recurses): every matching file. ``base`` is the folder, or the common
    parent of the files: outputs mirror each file's path relative to it. Raises
    :class:`InputSpecError` when nothing matches.
    """
    text = str(spec)
    path = Path(text).expanduser()
    if path.is_dir():
        files = sorted(
            p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in INPUT_SUFFIXES
        )
        if not files:
            raise InputSpecError(
                f"input={text}: folder has no point clouds ({', '.join(INPUT_SUFFIXES)})"
            )
        return path, files
    if path.is_file():
        return path.parent, [path]
    if not _GLOB_CHARS & set(text):
        raise InputSpecError(f"input={text}: no such file or folder")
    files = sorted(Path(p) for p in glob.glob(os.path.expanduser(text), recursive=True))
    files = [p for p in files if p.is_file()]
    if not files:
        raise InputSpecError(f"input={text}: the pattern matches no files")
    base = Path(os.path.commonpath([str(p.parent.resolve()) for p in files]))
    return base, [p.resolve() for p in files]


def _header_lines(path: Path, end: bytes, limit: int = 200) -> list[str]:
    """The text header of a ``.pcd``/``.ply`` up to and including the ``end`` line."""
    lines = []
    try:
        with open(path, "rb") as f:
            for _ in range(limit):
                line = f.readline()
                if not line:
                    break
                text = line.decode("ascii", errors="replace").strip()
                lines.append(text)
                if line.strip().startswith(end):
                    break
    except OSError as e:
        raise ScanFormatError(
            path, f"cannot read file: {e.strerror or e}", kind="unreadable"
        ) from e
    return lines


def has_intensity_field(path: str | Path) -> bool:
    """Whether a cloud file carries a per-point intensity (:data:`INTENSITY_FIELDS`).

    ``.bin``: always (x, y, z, remission records). ``.pcd``: its FIELDS header line. ``.ply``:
    the ``property`` lines of ``element vertex``. ``.npy``: a fourth column.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".bin":
        return True
    if suffix == ".npy":
        return read_npy(path).has_intensity
    if suffix == ".pcd":
        for line in _header_lines(path, b"DATA"):
            if line.upper().startswith("FIELDS"):
                return any(n.lower() in INTENSITY_FIELDS for n in line.split()[1:])
        return False
    if suffix == ".ply":
        in_vertex = False
        for line in _header_lines(path, b"end_header"):
            words = line.split()
            if words[:1] == ["element"]:
                in_vertex = words[1:2] == ["vertex"]
            elif in_vertex and words[:1] == ["property"] and words[-1].lower() in INTENSITY_FIELDS:
                return True
        return False
    return False


def read_npy(path: str | Path) -> LooseCloud:
    """Read a ``.npy`` of (P, 3) x, y, z or (P, 4) x, y, z, intensity rows (any real dtype).

    Raises :class:`ScanFormatError` naming the file: unreadable, a pickle (never loaded), a
    shape other than (P, 3|4), a non-numeric dtype, no points, NaN/inf values, or coordinates
    beyond :data:`~pcseg.data.validation.MAX_ABS_COORDINATE`.
    """
    path = Path(path)
    try:
        array = np.load(path, allow_pickle=False, mmap_mode="r")
    except FileNotFoundError as e:
        raise ScanFormatError(path, "file does not exist", kind="unreadable") from e
    except IsADirectoryError as e:
        raise ScanFormatError(path, "is a directory, not a file", kind="unreadable") from e
    except ValueError as e:  # pickled objects, or not a .npy at all
        raise ScanFormatError(path, f"not a plain numeric .npy array: {e}", kind="corrupt") from e
    except OSError as e:
        raise ScanFormatError(path, f"cannot read .npy: {e}", kind="corrupt") from e
    if array.ndim != 2 or array.shape[1] not in (3, 4):
        raise ScanFormatError(
            path,
            f"array of shape {array.shape}; expected (P, 3) x, y, z or (P, 4) x, y, z, intensity",
            kind="corrupt",
        )
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise ScanFormatError(path, f"dtype {array.dtype} is not numeric", kind="corrupt")
    if array.shape[0] == 0:
        raise ScanFormatError(path, "scan is empty (0 points)", kind="empty")
    data = np.asarray(array, dtype=np.float32)
    xyz = np.ascontiguousarray(data[:, :3])
    has_intensity = data.shape[1] == 4
    remission = (
        np.ascontiguousarray(data[:, 3]) if has_intensity else np.zeros(len(xyz), np.float32)
    )
    bad = ~np.isfinite(data).all(axis=1)
    if bad.any():
        raise ScanFormatError(
            path,
            f"{int(bad.sum())} of {data.shape[0]} rows have NaN/inf values "
            f"(first at index {int(np.flatnonzero(bad)[0])})",
            kind="non_finite",
        )
    extent = float(np.abs(xyz).max())
    if extent > MAX_ABS_COORDINATE:
        raise ScanFormatError(
            path,
            f"coordinates reach {extent:.3g} m (beyond {MAX_ABS_COORDINATE:.0e} m): corrupt, or "
            "a map in global coordinates (shift it near the origin first)",
            kind="corrupt",
        )
    return LooseCloud(xyz, remission, has_intensity)


class LoadedScan(NamedTuple):
    """batch: the one-cloud PointBatch (voxels, features, inverse to every point, meta);
    remission_missing: the file had no intensity field, or one constant over every point (the
    dataset then feeds the network remission 0)."""

    batch: PointBatch
    remission_missing: bool


class LooseScanLoader:
    """Load loose files through a checkpoint's own data pipeline.

    ``run``: the checkpoint (:func:`pcseg.checkpoint_loading.load_checkpoint`). Each
    :meth:`load` links the file as the only scan of a temporary ``sequences/00/velodyne/``
    folder (an ``.npy`` is written there as ``.bin``), builds the run's DataModule on it
    (:func:`pcseg.checkpoint_loading.build_datamodule`: allow-listed targets only, no
    augmentation, bad scans raise) and returns its ``test`` item collated into a batch: the
    same reader, checks, voxelisation and features as evaluation. ``min_points``: None keeps the
    run's ``data.min_points``. Use as a context manager (the temporary folder is removed on exit).
    """

    def __init__(
        self,
        run: LoadedRun,
        trusted_targets: Sequence[str] = (),
        min_points: int | None = None,
    ) -> None:
        self._tmp = Path(tempfile.mkdtemp(prefix="pcseg-predict-"))
        self._velodyne = self._tmp / "sequences" / "00" / "velodyne"
        config = run.config.copy()
        with open_dict(config):
            config.data.test_requires_labels = False  # loose files have no labels
        self._run_config, self._path = config, run.path
        self._trusted = tuple(trusted_targets)
        self._overrides = {
            "root": str(self._tmp),
            "sequences": {"train": [0], "valid": [0], "test": [0]},
            "num_workers": 0,
            "min_points": min_points,
        }

    def __enter__(self) -> LooseScanLoader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        shutil.rmtree(self._tmp, ignore_errors=True)

    def _stage(self, path: Path) -> tuple[Path, bool | None]:
        """Put ``path`` into the temporary layout; returns (the staged scan, whether the file
        has an intensity field, None where only the dataset can tell)."""
        if self._velodyne.exists():
            shutil.rmtree(self._velodyne)
        self._velodyne.mkdir(parents=True)
        suffix = path.suffix.lower()
        if suffix == ".npy":
            cloud = read_npy(path)
            staged = self._velodyne / "000000.bin"
            write_scan(staged, cloud.xyz, cloud.remission)
            return staged, cloud.has_intensity
        if suffix not in INPUT_SUFFIXES:
            raise ScanFormatError(
                path,
                f"unknown point-cloud format '{path.suffix}' "
                f"(expected one of {', '.join(INPUT_SUFFIXES)})",
                kind="unknown_format",
            )
        if not path.is_file():
            problem = "is a directory, not a file" if path.is_dir() else "file does not exist"
            raise ScanFormatError(path, problem, kind="unreadable")
        staged = self._velodyne / f"000000{suffix}"
        os.symlink(path.resolve(), staged)
        return staged, has_intensity_field(path)

    def load(self, path: str | Path) -> LoadedScan:
        """Read ``path`` into a :class:`LoadedScan`. Raises a
        :class:`~pcseg.data.errors.DatasetFileError` naming ``path`` when the file is bad."""
        path = Path(path)
        staged, has_field = self._stage(path)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                datamodule = build_datamodule(
                    self._run_config, self._overrides, self._path, self._trusted
                )
                item: dict[str, Any] = datamodule.dataset("test")[0]
            except DatasetFileError as e:
                if e.path == staged or self._tmp in e.path.parents:
                    raise type(e)(path, e.problem.replace(str(staged), str(path)), e.kind) from e
                raise
        for w in caught:  # re-issue the pipeline's warnings with the user's file name
            if type(w.message).__name__ == "RemissionMissingWarning":
                continue  # the caller states it (remission_missing), naming the file
            warnings.warn_explicit(
                str(w.message).replace(str(staged), str(path)), w.category, w.filename, w.lineno
            )
        item["meta"]["scan_path"] = str(path)
        missing = bool(item["meta"].get("remission_missing", False)) or has_field is False
        return LoadedScan(collate_point_clouds([item]), missing)


def read_xyz(path: str | Path) -> np.ndarray:
    """The original points (P, 3) float32 of a loose file, in file order (for coloured exports;
    the batch holds only voxels)."""
    from pcseg.data.io import read_scan

    path = Path(path)
    return read_npy(path).xyz if path.suffix.lower() == ".npy" else read_scan(path)[0]
