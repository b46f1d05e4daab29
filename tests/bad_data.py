"""Plant every kind of bad scan into a SemanticKITTI-layout toy root, for the bad-data tests.

Each :class:`BadCase` damages one frame of an existing root (scan and label file written by
``tests.helpers.write_toy_dataset``) and says what the checks must report: the problem kind,
the exception the ``raise`` policy gives and a regex its message matches (after the path).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pcseg.data.errors import DatasetFileError, LabelFormatError, ScanFormatError
from pcseg.data.io import read_labels, read_scan, write_labels, write_scan


def frame_paths(root: Path, seq: int, frame: int) -> tuple[Path, Path]:
    """(scan, label) paths of one frame."""
    base = root / "sequences" / f"{seq:02d}"
    return base / "velodyne" / f"{frame:06d}.bin", base / "labels" / f"{frame:06d}.label"


def _truncate(scan: Path, label: Path) -> Path:
    scan.write_bytes(scan.read_bytes()[:-5])
    return scan


def _nan_points(scan: Path, label: Path) -> Path:
    xyz, rem = read_scan(scan)
    xyz[[3, 10], 1] = np.nan
    write_scan(scan, xyz, rem)
    return scan


def _garbage_coordinates(scan: Path, label: Path) -> Path:
    xyz, rem = read_scan(scan)
    xyz[5] = 3e30
    write_scan(scan, xyz, rem)
    return scan


def _empty(scan: Path, label: Path) -> Path:
    scan.write_bytes(b"")
    label.write_bytes(b"")
    return scan


def _too_few_points(scan: Path, label: Path) -> Path:
    xyz, rem = read_scan(scan)
    semantic, _ = read_labels(label)
    write_scan(scan, xyz[:40], rem[:40])
    write_labels(label, semantic[:40])
    return scan


def _identical_points(scan: Path, label: Path) -> Path:
    """Every point at one position (a stuck sensor): one voxel, one distinct position."""
    xyz, rem = read_scan(scan)
    write_scan(scan, np.broadcast_to(xyz[:1], xyz.shape).copy(), rem)
    return scan


def _points_in_a_metre_cube(scan: Path, label: Path) -> Path:
    """Every point inside one 1 m cube: at most 8 voxels at 0.5 m, 64 at 0.3 m."""
    xyz, rem = read_scan(scan)
    cube = np.random.default_rng(0).uniform(5.0, 5.999, xyz.shape).astype(np.float32)
    write_scan(scan, cube, rem)
    return scan


def _unreadable_scan(scan: Path, label: Path) -> Path:
    scan.unlink()
    scan.mkdir()  # a directory where the file should be: reading it fails
    return scan


def _label_count_mismatch(scan: Path, label: Path) -> Path:
    semantic, _ = read_labels(label)
    write_labels(label, semantic[:-7])
    return label


def _unknown_label_ids(scan: Path, label: Path) -> Path:
    semantic, _ = read_labels(label)
    semantic[:4] = 7  # not a SemanticKITTI raw id
    write_labels(label, semantic)
    return label


def _corrupt_labels(scan: Path, label: Path) -> Path:
    with open(label, "ab") as f:
        f.write(b"\x01\x02")
    return label


def _missing_labels(scan: Path, label: Path) -> Path:
    label.unlink()
    return label


def _unreadable_labels(scan: Path, label: Path) -> Path:
    label.unlink()
    label.mkdir()
    return label


@dataclass(frozen=True)
class BadCase:
    """plant(scan, label) damages the frame and returns the offending file."""

    plant: Callable[[Path, Path], Path]
    kind: str
    error: type[DatasetFileError]
    reason: str  # regex of the problem text


BAD_CASES: dict[str, BadCase] = {
    "truncated_scan": BadCase(
        _truncate, "scan_corrupt", ScanFormatError, r"\d+ bytes is not a multiple of 16"
    ),
    "garbage_coordinates": BadCase(
        _garbage_coordinates, "scan_corrupt", ScanFormatError, r"coordinates reach 3e\+30 m"
    ),
    "nan_points": BadCase(
        _nan_points, "scan_non_finite", ScanFormatError, r"2 of \d+ points have NaN/inf"
    ),
    "empty_scan": BadCase(_empty, "scan_empty", ScanFormatError, r"scan is empty \(0 points\)"),
    "too_few_points": BadCase(
        _too_few_points,
        "scan_too_few_points",
        ScanFormatError,
        r"only 40 points, fewer than min_points=100",
    ),
    # min_voxels=100 (the default) at any voxel size the tests use (0.3, 0.5 m)
    "identical_points": BadCase(
        _identical_points,
        "scan_degenerate",
        ScanFormatError,
        r"degenerate scan: \d+ points in only 1 voxels at data\.voxel_size=[\d.]+ m, "
        r"fewer than min_voxels=100",
    ),
    "points_in_a_metre_cube": BadCase(
        _points_in_a_metre_cube,
        "scan_degenerate",
        ScanFormatError,
        r"degenerate scan: \d+ points in only \d+ voxels at data\.voxel_size=[\d.]+ m, "
        r"fewer than min_voxels=100",
    ),
    "unreadable_scan": BadCase(
        _unreadable_scan, "scan_unreadable", ScanFormatError, r"is a directory, not a file"
    ),
    "label_count_mismatch": BadCase(
        _label_count_mismatch,
        "labels_count_mismatch",
        LabelFormatError,
        r"(\d+) labels but the scan has \d+ points",
    ),
    "unknown_label_ids": BadCase(
        _unknown_label_ids,
        "labels_unknown_ids",
        LabelFormatError,
        r"unknown raw label ids not in the label map: 7 \(4 points\)",
    ),
    "corrupt_labels": BadCase(
        _corrupt_labels, "labels_corrupt", LabelFormatError, r"1202 bytes is not a multiple of 4"
    ),
    "missing_labels": BadCase(
        _missing_labels, "labels_missing", LabelFormatError, r"label file missing"
    ),
    "unreadable_labels": BadCase(
        _unreadable_labels, "labels_unreadable", LabelFormatError, r"is a directory, not a file"
    ),
}


def plant(root: Path, seq: int, frame: int, case: str) -> Path:
    """Damage frame ``frame`` of sequence ``seq`` as ``BAD_CASES[case]``; return the bad file."""
    scan, label = frame_paths(root, seq, frame)
    return BAD_CASES[case].plant(scan, label)


def copy_root(src: Path, dst: Path) -> Path:
    """A fresh copy of a toy root to damage (writing toy scans costs more than copying)."""
    shutil.copytree(src, dst)
    return dst
