"""Read and write LiDAR scans and SemanticKITTI label files.

Formats
- ``.bin``: KITTI Velodyne scan, float32 records (x, y, z, remission), 16 bytes per point.
- ``.pcd`` / ``.ply``: read through Open3D's tensor I/O; positions, and intensity where present
  (attribute ``intensity``, ``remission`` or ``reflectance``; zeros otherwise).
- ``.label``: uint32 per point, semantic id in the low 16 bits, instance id in the high 16.

Every reader validates what it reads and raises a :mod:`pcseg.data.errors` exception naming the
file and the problem. Writers write to a temporary file and rename it, so an interrupted write
never leaves a truncated file behind.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pcseg.data.errors import LabelFormatError, ScanFormatError

SCAN_SUFFIXES = (".bin", ".pcd", ".ply")
_INTENSITY_ATTRIBUTES = ("intensity", "remission", "reflectance", "scalar_intensity")


def _read_bytes(path: Path, error: type[ScanFormatError] | type[LabelFormatError]) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError as e:
        raise error(path, "file does not exist", kind="unreadable") from e
    except IsADirectoryError as e:
        raise error(path, "is a directory, not a file", kind="unreadable") from e
    except OSError as e:
        raise error(path, f"cannot read file: {e.strerror or e}", kind="unreadable") from e


def _check_points(path: Path, xyz: np.ndarray, remission: np.ndarray) -> None:
    if xyz.shape[0] == 0:
        raise ScanFormatError(path, "scan is empty (0 points)", kind="empty")
    finite = np.isfinite(xyz).all(axis=1)
    if not finite.all():
        first = int(np.flatnonzero(~finite)[0])
        raise ScanFormatError(
            path,
            f"{int((~finite).sum())} of {xyz.shape[0]} points have NaN/inf coordinates "
            f"(first at index {first})",
            kind="non_finite",
        )
    if not np.isfinite(remission).all():
        raise ScanFormatError(
            path,
            f"{int((~np.isfinite(remission)).sum())} points have NaN/inf remission",
            kind="non_finite",
        )


def _read_bin(path: Path) -> tuple[np.ndarray, np.ndarray]:
    raw = _read_bytes(path, ScanFormatError)
    if len(raw) % 16:
        raise ScanFormatError(
            path,
            f"{len(raw)} bytes is not a multiple of 16 (float32 x, y, z, remission)",
            kind="corrupt",
        )
    records = np.frombuffer(raw, dtype=np.float32).reshape(-1, 4)
    return np.ascontiguousarray(records[:, :3]), np.ascontiguousarray(records[:, 3])


def _read_open3d(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import open3d as o3d

    if not path.exists():
        raise ScanFormatError(path, "file does not exist", kind="unreadable")
    if path.is_dir():
        raise ScanFormatError(path, "is a directory, not a file", kind="unreadable")
    try:
        pcd = o3d.t.io.read_point_cloud(str(path))
    except RuntimeError as e:  # Open3D raises RuntimeError on some malformed headers
        raise ScanFormatError(path, f"Open3D cannot parse it: {e}", kind="corrupt") from e
    if "positions" not in pcd.point or pcd.point.positions.shape[0] == 0:
        raise ScanFormatError(
            path, "scan is empty or unreadable (Open3D found no points)", kind="empty"
        )
    xyz = pcd.point.positions.numpy().astype(np.float32, copy=False).reshape(-1, 3)
    remission = np.zeros(xyz.shape[0], dtype=np.float32)
    for name in _INTENSITY_ATTRIBUTES:
        if name in pcd.point:
            remission = pcd.point[name].numpy().astype(np.float32, copy=False).reshape(-1)
            break
    return np.ascontiguousarray(xyz), np.ascontiguousarray(remission)


def read_scan(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a scan. Returns ``xyz`` (N, 3) float32 and ``remission`` (N,) float32.

    Raises :class:`ScanFormatError` for a missing or unreadable file, an unknown suffix, a
    ``.bin`` whose size is not a multiple of 16 bytes, an empty scan or NaN/inf values.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".bin":
        xyz, remission = _read_bin(path)
    elif suffix in (".pcd", ".ply"):
        xyz, remission = _read_open3d(path)
    else:
        raise ScanFormatError(
            path,
            f"unknown scan format '{suffix}' (expected one of {', '.join(SCAN_SUFFIXES)})",
            kind="unknown_format",
        )
    _check_points(path, xyz, remission)
    return xyz, remission


def read_labels(path: str | Path, num_points: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read a ``.label`` file. Returns ``semantic`` (N,) int32 and ``instance`` (N,) int32.

    ``num_points``: the scan's point count; a different label count raises
    :class:`LabelFormatError`. Raw ids are checked against the label map by
    :meth:`pcseg.data.labels.LabelMap.to_train`, which names this file too.
    """
    path = Path(path)
    raw = _read_bytes(path, LabelFormatError)
    if len(raw) % 4:
        raise LabelFormatError(
            path, f"{len(raw)} bytes is not a multiple of 4 (uint32 per point)", kind="corrupt"
        )
    packed = np.frombuffer(raw, dtype=np.uint32)
    if num_points is not None and packed.shape[0] != num_points:
        raise LabelFormatError(
            path,
            f"{packed.shape[0]} labels but the scan has {num_points} points",
            kind="count_mismatch",
        )
    semantic = (packed & 0xFFFF).astype(np.int32)
    instance = (packed >> 16).astype(np.int32)
    return semantic, instance


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write through ``write(tmp_path)`` into a temp file beside ``path``, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_scan(path: str | Path, xyz: np.ndarray, remission: np.ndarray | None = None) -> None:
    """Write ``xyz`` (N, 3) and ``remission`` (N,) as ``.bin``, ``.pcd`` or ``.ply`` by suffix."""
    path = Path(path)
    xyz = np.asarray(xyz, dtype=np.float32)
    if xyz.ndim != 2 or xyz.shape[1] != 3:
        raise ValueError(f"xyz must have shape (N, 3), got {xyz.shape}")
    if remission is None:
        remission = np.zeros(xyz.shape[0], dtype=np.float32)
    remission = np.asarray(remission, dtype=np.float32).reshape(-1)
    if remission.shape[0] != xyz.shape[0]:
        raise ValueError(f"{remission.shape[0]} remission values for {xyz.shape[0]} points")
    suffix = path.suffix.lower()
    if suffix == ".bin":
        records = np.concatenate([xyz, remission[:, None]], axis=1)
        _atomic_write(path, lambda p: p.write_bytes(records.astype(np.float32).tobytes()))
    elif suffix in (".pcd", ".ply"):
        import open3d as o3d

        pcd = o3d.t.geometry.PointCloud(o3d.core.Tensor(np.ascontiguousarray(xyz)))
        pcd.point["intensity"] = o3d.core.Tensor(np.ascontiguousarray(remission[:, None]))

        def _write(p: Path) -> None:
            if not o3d.t.io.write_point_cloud(str(p), pcd):
                raise OSError(f"Open3D failed to write {path}")

        _atomic_write(path, _write)
    else:
        raise ValueError(f"{path}: unknown scan format '{suffix}' (expected {SCAN_SUFFIXES})")


def write_labels(
    path: str | Path, semantic: np.ndarray, instance: np.ndarray | None = None
) -> None:
    """Write a ``.label`` file from ``semantic`` (N,) and optional ``instance`` (N,) ids (< 2**16)."""
    semantic = np.asarray(semantic).astype(np.int64).reshape(-1)
    instance = (
        np.zeros_like(semantic) if instance is None else np.asarray(instance).astype(np.int64)
    ).reshape(-1)
    if instance.shape != semantic.shape:
        raise ValueError(f"{instance.shape[0]} instance ids for {semantic.shape[0]} semantic ids")
    for name, ids in (("semantic", semantic), ("instance", instance)):
        if ids.size and (ids.min() < 0 or ids.max() > 0xFFFF):
            raise ValueError(f"{name} ids must lie in [0, 65535]")
    packed = (semantic.astype(np.uint32) & 0xFFFF) | (instance.astype(np.uint32) << 16)
    _atomic_write(Path(path), lambda p: p.write_bytes(packed.astype(np.uint32).tobytes()))
