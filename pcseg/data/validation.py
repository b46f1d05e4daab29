"""Is a scan (and its label file) usable? One set of checks for the dataset and the CLI.

The dataset's bad-scan policy (``data.on_bad_scan``: ``raise`` or ``skip``) loads every scan
through :func:`load_scan`, and ``scripts/check_dataset.py`` runs :func:`check_scan` over a whole
root up front, so a scan the checker passes is a scan training can read.

What is checked (each a :class:`Problem` kind, ``<scan|labels>_<what>``):

- ``scan_unreadable``: missing, a directory, or an I/O error;
- ``scan_corrupt``: a ``.bin`` whose size is not a multiple of 16 bytes, a ``.pcd``/``.ply``
  Open3D cannot parse, or coordinates beyond :data:`MAX_ABS_COORDINATE` (garbage bytes);
- ``scan_empty``: no points; ``scan_too_few_points``: fewer than ``min_points`` points;
- ``scan_non_finite``: NaN/inf coordinates or remission;
- ``scan_degenerate``: fewer than ``min_voxels`` voxels at the voxel size (distinct positions
  without voxelisation), e.g. 2,000 copies of one point or 150 points inside a 1 m cube at
  0.3 m voxels: too few for the network's K-neighbour windows and coarse levels;
- ``labels_missing``: the scan needs labels (train/val) but has no ``.label`` file;
- ``labels_unreadable``, ``labels_corrupt`` (size not a multiple of 4 bytes);
- ``labels_count_mismatch``: a label count different from the scan's point count;
- ``labels_unknown_ids``: raw ids the label yaml does not define.

``min_points`` counts the points of the FILE, before voxelisation: it is a property of the
scan, so the checker (which knows no voxel size) and training agree on which scans are bad.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pcseg.data.errors import DatasetFileError, LabelFormatError, ScanFormatError
from pcseg.data.io import read_labels, read_scan
from pcseg.data.labels import LabelMap
from pcseg.data.voxelize import voxelize

#: ``data.on_bad_scan`` values: stop at the first bad scan, or leave it out and go on.
BAD_SCAN_POLICIES = ("raise", "skip")
#: Default ``data.min_points``: a real scan has ~120k points; a few dozen means a sensor fault.
DEFAULT_MIN_POINTS = 100
#: Default ``data.min_voxels``: a real scan has ~25k voxels at 0.3 m; the network needs at least
#: its k (12 in the shipped configs, 16 in the paper's) and its coarse levels 1/4, 1/16, 1/64
#: of them, so 100 leaves every level a few points.
DEFAULT_MIN_VOXELS = 100
#: |coordinate| in metres beyond which a scan is corrupt: a LiDAR scan in its sensor frame spans
#: a few hundred metres, float32 garbage is often ~1e30, and voxel keys would overflow.
MAX_ABS_COORDINATE = 1e5


@dataclass(frozen=True)
class Problem:
    """What is wrong with one file.

    kind: ``<scan|labels>_<what>``, e.g. ``scan_corrupt`` (see the module docstring);
    path: the offending file (the scan or its label file);
    reason: what is wrong, without the path.
    """

    kind: str
    path: Path
    reason: str

    @classmethod
    def from_error(cls, error: DatasetFileError) -> Problem:
        """The problem an I/O error describes; the error's class says scan or labels."""
        if isinstance(error, ScanFormatError):
            target = "scan"
        elif isinstance(error, LabelFormatError):
            target = "labels"
        else:
            target = "file"
        return cls(f"{target}_{error.kind}", error.path, error.problem)

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass(frozen=True)
class ScanData:
    """A scan that passed every check: xyz (P, 3) float32, remission (P,) float32 and, where
    the scan has labels, label (P,) int64 training ids."""

    xyz: np.ndarray
    remission: np.ndarray
    label: np.ndarray | None


def check_policy(on_bad_scan: str) -> str:
    """Return ``on_bad_scan`` if it names a policy; ValueError listing the choices otherwise."""
    if on_bad_scan not in BAD_SCAN_POLICIES:
        raise ValueError(
            f"on_bad_scan must be one of {', '.join(BAD_SCAN_POLICIES)}, got {on_bad_scan!r}"
        )
    return on_bad_scan


def check_voxel_size(voxel_size: float | None) -> float | None:
    """``voxel_size`` in metres if it is > 0 or None (no voxelisation: every point is kept);
    ValueError otherwise (0 used to mean full resolution silently)."""
    if voxel_size is None:
        return None
    if not voxel_size > 0:  # also NaN
        raise ValueError(
            f"data.voxel_size must be > 0 metres, got {voxel_size}; "
            "use data.voxel_size=null to keep every point (no voxelisation)"
        )
    return float(voxel_size)


def count_positions(xyz: np.ndarray, voxel_size: float | None) -> int:
    """Number of occupied voxels of xyz (P, 3) at ``voxel_size`` (None: distinct positions)."""
    if voxel_size is None:
        return int(np.unique(np.ascontiguousarray(xyz, dtype=np.float32), axis=0).shape[0])
    return len(voxelize(xyz, voxel_size).counts)  # the dataset's voxels, so both agree


def check_positions(
    path: str | Path,
    xyz: np.ndarray,
    voxel_size: float | None,
    min_voxels: int,
    count: int | None = None,
) -> None:
    """Raise :class:`ScanFormatError` (``degenerate``) naming ``path`` when xyz (P, 3) has fewer
    than ``min_voxels`` voxels at ``voxel_size`` (None: distinct positions).

    ``count``: the voxel count if the caller has it (the dataset voxelises anyway).
    """
    if min_voxels <= 1:
        return
    if count is None:
        count = count_positions(xyz, voxel_size)
    if count < min_voxels:
        unit = (
            f"voxels at data.voxel_size={voxel_size:g} m"
            if voxel_size is not None
            else "distinct positions"
        )
        raise ScanFormatError(
            path,
            f"degenerate scan: {xyz.shape[0]} points in only {count} {unit}, fewer than "
            f"min_voxels={min_voxels} (the network needs at least its k neighbours per point)",
            kind="degenerate",
        )


def read_checked_scan(path: str | Path, min_points: int) -> tuple[np.ndarray, np.ndarray]:
    """Read a scan (see :func:`~pcseg.data.io.read_scan`) and check its size and extent.

    Returns xyz (P, 3) float32 and remission (P,) float32. Raises :class:`ScanFormatError`
    naming the file, with ``kind`` set (see the module docstring).
    """
    path = Path(path)
    xyz, remission = read_scan(path)
    if xyz.shape[0] < min_points:
        raise ScanFormatError(
            path,
            f"only {xyz.shape[0]} points, fewer than min_points={min_points}",
            kind="too_few_points",
        )
    extent = float(np.abs(xyz).max())
    if extent > MAX_ABS_COORDINATE:
        raise ScanFormatError(
            path,
            f"coordinates reach {extent:.3g} m, beyond any LiDAR's range "
            f"({MAX_ABS_COORDINATE:.0e} m): corrupt bytes",
            kind="corrupt",
        )
    return xyz, remission


def read_checked_labels(
    path: str | Path, label_map: LabelMap, num_points: int | None
) -> np.ndarray:
    """Read a ``.label`` file and map it to training ids (P,) int64.

    ``num_points``: the scan's point count (None: not compared). Raises
    :class:`LabelFormatError` naming the file, with ``kind`` set.
    """
    path = Path(path)
    if not path.exists():
        raise LabelFormatError(path, "label file missing (this split needs labels)", "missing")
    semantic, _ = read_labels(path, num_points=num_points)
    return label_map.to_train(semantic, path)


def load_scan(
    scan_path: str | Path,
    label_path: str | Path | None,
    label_map: LabelMap,
    min_points: int = DEFAULT_MIN_POINTS,
) -> ScanData:
    """Read a scan and (``label_path`` not None) its labels, raising at the first problem.

    Raises a :class:`DatasetFileError` subclass naming the offending file, ``kind`` set.
    """
    xyz, remission = read_checked_scan(scan_path, min_points)
    label = None
    if label_path is not None:
        label = read_checked_labels(label_path, label_map, xyz.shape[0])
    return ScanData(xyz, remission, label)


def check_scan(
    scan_path: str | Path,
    label_path: str | Path | None,
    label_map: LabelMap,
    min_points: int = DEFAULT_MIN_POINTS,
    voxel_size: float | None = None,
    min_voxels: int = 1,
) -> list[Problem]:
    """Every problem of a scan and its label file (empty list: the scan is usable).

    ``voxel_size``/``min_voxels``: as ``data.voxel_size``/``data.min_voxels`` (degenerate scans).

    Unlike :func:`load_scan` this goes on after a bad scan, so a broken label file of the
    same frame is reported too (its point count is then not compared).
    """
    problems: list[Problem] = []
    num_points = None
    try:
        xyz = read_checked_scan(scan_path, min_points)[0]
        num_points = xyz.shape[0]
        check_positions(scan_path, xyz, check_voxel_size(voxel_size), min_voxels)
    except ScanFormatError as e:
        problems.append(Problem.from_error(e))
    if label_path is not None:
        try:
            read_checked_labels(label_path, label_map, num_points)
        except LabelFormatError as e:
            problems.append(Problem.from_error(e))
    return problems
