"""Full-resolution predictions and the SemanticKITTI submission layout.

The network usually runs on voxelised clouds, but the benchmark scores every ORIGINAL point of
a scan. Two ways back to full resolution:

- :func:`full_resolution_predictions`: through ``PointBatch.inverse`` (the voxel row of every
  original point), exact and O(P); the normal path.
- :func:`labels_by_nearest`: each query point takes the label of its nearest predicted point
  (a KD-tree), for predictions made on points that carry no inverse index.

Export writes ``OUT/sequences/NN/predictions/NNNNNN.label`` (uint32 per point: raw SemanticKITTI
id through ``learning_map_inv`` in the low 16 bits, instance 0), and :func:`verify_submission`
checks the tree against the dataset before anyone uploads it: one file per scan, the right
point count, only ids the benchmark knows.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from pcseg.data.io import write_labels
from pcseg.data.labels import LabelMap
from pcseg.structures import PointBatch, offset_to_lengths

__all__ = [
    "SubmissionError",
    "SubmissionSummary",
    "full_resolution_predictions",
    "labels_by_nearest",
    "scan_point_count",
    "submission_path",
    "verify_submission",
    "write_submission",
]

_MAX_LISTED = 10  # paths listed per problem kind in a SubmissionError message


# --------------------------------------------------------------------------- full resolution


def full_resolution_predictions(pred: torch.Tensor, batch: PointBatch) -> list[np.ndarray]:
    """Carry per-voxel predictions back to every original point of every cloud.

    pred: (N,) integer train ids over the packed (voxel) points of ``batch``, or (N, C) scores
        (argmax taken).
    batch: with ``inverse`` (P,) packed row of each original point and ``inverse_offset`` (B,).
    Returns B int64 arrays; array b has one label per original point of cloud b, in the order
    of the scan file (length ``meta[b]['num_points']`` where meta is present).
    """
    if batch.inverse is None or batch.inverse_offset is None:
        raise ValueError(
            "batch has no inverse index: use labels_by_nearest() with the original coordinates"
        )
    if pred.ndim == 2:
        pred = pred.argmax(dim=1)
    if pred.shape != (batch.coord.shape[0],):
        raise ValueError(
            f"pred must be ({batch.coord.shape[0]},) over the packed points, "
            f"got {tuple(pred.shape)}"
        )
    if batch.inverse_offset.shape[0] != batch.num_clouds:
        raise ValueError(
            f"inverse_offset has {batch.inverse_offset.shape[0]} clouds, offset {batch.num_clouds}"
        )
    full = pred.detach()[batch.inverse.to(pred.device)].to("cpu", torch.int64).numpy()
    lengths = offset_to_lengths(batch.inverse_offset).tolist()
    clouds = np.split(full, np.cumsum(lengths)[:-1])
    for b, meta in enumerate(batch.meta):
        expected = meta.get("num_points")
        if expected is not None and int(expected) != clouds[b].shape[0]:
            raise ValueError(
                f"cloud {b} ({meta.get('scan_path', '?')}): inverse covers "
                f"{clouds[b].shape[0]} points but the scan has {expected}"
            )
    return clouds


def labels_by_nearest(
    query_xyz: np.ndarray | torch.Tensor,
    source_xyz: np.ndarray | torch.Tensor,
    source_labels: np.ndarray | torch.Tensor,
) -> np.ndarray:
    """Label each query point with the label of its nearest source point (Euclidean, 3-D).

    query_xyz: (P, 3) points to label (e.g. every original point of a scan).
    source_xyz: (N, 3) points that have labels (e.g. the points the network ran on).
    source_labels: (N,) integer labels.
    Returns (P,) int64. For one cloud at a time: neighbours must never cross clouds.
    """
    from scipy.spatial import cKDTree

    def _np(x: np.ndarray | torch.Tensor) -> np.ndarray:
        return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)

    query, source, labels = _np(query_xyz), _np(source_xyz), _np(source_labels).reshape(-1)
    if query.ndim != 2 or query.shape[1] != 3 or source.ndim != 2 or source.shape[1] != 3:
        raise ValueError(f"xyz must be (P, 3) and (N, 3), got {query.shape} and {source.shape}")
    if labels.shape[0] != source.shape[0]:
        raise ValueError(f"{labels.shape[0]} labels for {source.shape[0]} source points")
    if source.shape[0] == 0:
        raise ValueError("no source points to take labels from")
    _, idx = cKDTree(source.astype(np.float64)).query(query.astype(np.float64), k=1, workers=-1)
    return labels.astype(np.int64)[idx]


# --------------------------------------------------------------------------- export


def _seq_name(sequence: int | str) -> str:
    return f"{int(sequence):02d}" if str(sequence).isdigit() else str(sequence)


def _frame_name(frame: int | str) -> str:
    return f"{int(frame):06d}" if isinstance(frame, int) else str(frame)


def submission_path(out_root: str | Path, sequence: int | str, frame: int | str) -> Path:
    """``out_root/sequences/NN/predictions/NNNNNN.label``."""
    return (
        Path(out_root)
        / "sequences"
        / _seq_name(sequence)
        / "predictions"
        / f"{_frame_name(frame)}.label"
    )


def write_submission(
    out_root: str | Path,
    sequence: int | str,
    frame: int | str,
    pred_train: np.ndarray | torch.Tensor,
    label_map: LabelMap,
) -> Path:
    """Write one scan's prediction in the submission layout and return its path.

    pred_train: (P,) train ids, one per ORIGINAL point of the scan. Stored as raw ids
    (``label_map.to_raw``, i.e. learning_map_inv) with instance bits 0; written atomically.
    """
    if isinstance(pred_train, torch.Tensor):
        pred_train = pred_train.detach().cpu().numpy()
    path = submission_path(out_root, sequence, frame)
    write_labels(path, label_map.to_raw(np.asarray(pred_train).reshape(-1)))
    return path


# --------------------------------------------------------------------------- verification


class SubmissionError(ValueError):
    """A submission tree is incomplete or invalid. Lists of ``(path, problem)`` per kind."""

    def __init__(
        self,
        out_root: Path,
        missing: list[tuple[Path, str]],
        extra: list[tuple[Path, str]],
        wrong_count: list[tuple[Path, str]],
        invalid_ids: list[tuple[Path, str]],
    ) -> None:
        self.out_root = out_root
        self.missing, self.extra = missing, extra
        self.wrong_count, self.invalid_ids = wrong_count, invalid_ids
        kinds = (
            ("missing", missing),
            ("extra", extra),
            ("wrong point count", wrong_count),
            ("invalid label ids", invalid_ids),
        )
        totals = ", ".join(f"{len(items)} {name}" for name, items in kinds if items)
        lines = [f"{out_root}: invalid SemanticKITTI submission: {totals}"]
        for name, items in kinds:
            if not items:
                continue
            lines.append(f"{name} ({len(items)}):")
            lines += [f"  {path}: {problem}" for path, problem in items[:_MAX_LISTED]]
            if len(items) > _MAX_LISTED:
                lines.append(f"  ... and {len(items) - _MAX_LISTED} more")
        super().__init__("\n".join(lines))


class SubmissionSummary(NamedTuple):
    """A verified submission: how many files and points, for which sequences; the scans
    allowed to have no prediction (skipped under ``data.on_bad_scan=skip``)."""

    num_files: int
    num_points: int
    sequences: tuple[str, ...]
    skipped: tuple[str, ...] = ()


def _header_count(path: Path, key: bytes, end: bytes) -> int | None:
    """Point count from a text header line starting with ``key`` (before the ``end`` line)."""
    with open(path, "rb") as f:
        for _ in range(200):
            line = f.readline()
            if not line:
                return None
            stripped = line.strip()
            if stripped.startswith(key):
                try:
                    return int(stripped.split()[-1])
                except ValueError:
                    return None
            if stripped.startswith(end):
                return None
    return None


def scan_point_count(path: str | Path) -> int:
    """Number of points of a scan without reading it: ``.bin`` size / 16; ``.pcd`` POINTS and
    ``.ply`` 'element vertex' header lines; otherwise (odd headers) the scan is read."""
    from pcseg.data.errors import ScanFormatError
    from pcseg.data.io import read_scan

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".bin":
        size = path.stat().st_size
        if size % 16:
            raise ScanFormatError(path, f"{size} bytes is not a multiple of 16")
        return size // 16
    count = None
    if suffix == ".pcd":
        count = _header_count(path, b"POINTS", b"DATA")
    elif suffix == ".ply":
        count = _header_count(path, b"element vertex", b"end_header")
    return count if count is not None else read_scan(path)[0].shape[0]


def verify_submission(
    out_root: str | Path,
    dataset_root: str | Path,
    sequences: Sequence[int | str],
    label_map: LabelMap | None = None,
    check_ids: bool = True,
    skipped: Collection[str | Path] = (),
) -> SubmissionSummary:
    """Check a submission tree against the scans it should cover.

    Every scan ``dataset_root/sequences/NN/velodyne/*.{bin,pcd,ply}`` of ``sequences`` must have
    exactly one ``out_root/sequences/NN/predictions/<frame>.label`` with one uint32 per point;
    nothing else may sit in those prediction folders; with ``check_ids`` every semantic id (low
    16 bits) must be a ``learning_map_inv`` target. Raises :class:`SubmissionError` listing the
    offending paths (first few of each kind, with totals); returns a summary on success.
    ``skipped``: scan paths that may lack a prediction (scans a run skipped and was allowed to
    leave out); they are listed in the summary. Verification checks a tree, not who wrote it:
    :class:`pcseg.export.SubmissionExport` makes every file come from one run.
    """
    from pcseg.data.labels import load_label_map
    from pcseg.data.semantickitti import index_scans

    out_root = Path(out_root)
    label_map = label_map or load_label_map()
    valid = np.zeros(1 << 16, dtype=bool)
    valid[list(label_map.learning_map_inv.values())] = True
    records = index_scans(dataset_root, sequences, require_labels=False)

    missing: list[tuple[Path, str]] = []
    extra: list[tuple[Path, str]] = []
    wrong: list[tuple[Path, str]] = []
    invalid: list[tuple[Path, str]] = []
    expected: dict[Path, Path] = {}  # prediction path -> scan path
    for rec in records:
        expected[submission_path(out_root, rec.sequence, rec.frame)] = rec.scan_path

    seq_names = tuple(sorted({rec.sequence for rec in records}))
    for seq in seq_names:
        pred_dir = out_root / "sequences" / seq / "predictions"
        if pred_dir.is_dir():
            for p in sorted(pred_dir.iterdir()):
                if p not in expected:
                    extra.append((p, "no scan with this name in the dataset"))

    allowed_missing = {Path(p).resolve() for p in skipped}
    num_points = 0
    num_files = 0
    for pred_path, scan_path in expected.items():
        if not pred_path.is_file() and Path(scan_path).resolve() in allowed_missing:
            continue
        if not pred_path.is_file():
            missing.append((pred_path, f"no prediction for scan {scan_path}"))
            continue
        n_scan = scan_point_count(scan_path)
        size = pred_path.stat().st_size
        if size % 4 or size // 4 != n_scan:
            wrong.append((pred_path, f"{size / 4:g} labels but the scan has {n_scan} points"))
            continue
        num_points += n_scan
        num_files += 1
        if check_ids:
            semantic = np.fromfile(pred_path, dtype=np.uint32) & 0xFFFF
            bad = ~valid[semantic]
            if bad.any():
                ids = np.unique(semantic[bad])
                listed = ", ".join(str(i) for i in ids[:8]) + (" ..." if len(ids) > 8 else "")
                invalid.append(
                    (
                        pred_path,
                        f"{int(bad.sum())} points with ids not in learning_map_inv: {listed}",
                    )
                )
    if missing or extra or wrong or invalid:
        raise SubmissionError(out_root, missing, extra, wrong, invalid)
    listed = tuple(sorted(str(p) for p in skipped))
    return SubmissionSummary(num_files, num_points, seq_names, listed)
