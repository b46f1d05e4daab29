"""A dataset over any SemanticKITTI-layout root: the real dataset or the embedded synthetic one.

Layout: ``ROOT/sequences/NN/velodyne/NNNNNN.bin`` (also ``.pcd``/``.ply``) and, where ground
truth exists, ``ROOT/sequences/NN/labels/NNNNNN.label``. One code path for every source: a
scan is read and checked (:mod:`pcseg.data.validation`), its raw labels remapped through the
label yaml, optionally voxelised (keeping the index back to every original point), augmented
(training only), and turned into features.

A scan without intensity (remission absent or constant) is warned about once per file
(:class:`RemissionMissingWarning`) and fed remission 0.3 (the mean), what training's
:class:`~pcseg.data.transforms.RandomRemissionDrop` feeds (see :mod:`pcseg.data.features`).

A bad scan (corrupt, truncated, NaN/inf, too few points, too few distinct positions or voxels
for the network's K neighbours, label file missing, mismatched or with unknown ids) raises its :class:`~pcseg.data.errors.DatasetFileError` under
``on_bad_scan="raise"``; under ``"skip"`` the item is a marker
(:func:`~pcseg.data.collate.skipped_item`) that the collate leaves out of the batch and records.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from pcseg.data.collate import skipped_item
from pcseg.data.errors import DatasetFileError, LabelFormatError
from pcseg.data.features import (
    REMISSION_FREE_VALUE,
    compute_features,
    feature_channels,
    remission_missing,
)
from pcseg.data.io import SCAN_SUFFIXES
from pcseg.data.labels import LabelMap, load_label_map
from pcseg.data.validation import (
    Problem,
    ScanData,
    check_policy,
    check_positions,
    check_voxel_size,
    load_scan,
)
from pcseg.data.voxelize import majority_label, scatter_mean, voxelize


class RemissionMissingWarning(UserWarning):
    """A scan's remission channel is absent or constant: the model runs on geometry only."""


@dataclass(frozen=True)
class ScanRecord:
    """One scan of the index: where its files are (``label_path`` None: no labels expected;
    it may name a missing file when :func:`index_scans` deferred that problem)."""

    sequence: str
    frame: str
    scan_path: Path
    label_path: Path | None


def index_scans(
    root: str | Path,
    sequences: Sequence[int | str],
    require_labels: bool,
    defer_missing_labels: bool = False,
) -> list[ScanRecord]:
    """List the scans of ``sequences`` under ``root``, sorted by sequence then frame.

    Raises :class:`DatasetFileError` naming the folder when the root or a sequence is missing,
    a sequence has no scans, or (``require_labels``) a scan has no label file
    (:class:`LabelFormatError`). With
    ``defer_missing_labels`` a missing required label file is not raised here: the record keeps
    its expected path and loading the scan reports ``labels_missing`` (the skip policy).
    """
    root = Path(root)
    seq_dir = root / "sequences"
    if not seq_dir.is_dir():
        raise DatasetFileError(
            seq_dir,
            "no 'sequences' folder: the root is not in SemanticKITTI layout "
            "(ROOT/sequences/NN/velodyne/NNNNNN.bin)",
        )
    records: list[ScanRecord] = []
    for seq in sequences:
        name = f"{int(seq):02d}" if str(seq).isdigit() else str(seq)
        velodyne = seq_dir / name / "velodyne"
        if not velodyne.is_dir():
            present = sorted(p.name for p in seq_dir.iterdir() if p.is_dir())
            if (seq_dir / name).is_dir():
                raise DatasetFileError(
                    velodyne,
                    f"sequence {name} has no velodyne/ folder (it holds: "
                    f"{', '.join(sorted(p.name for p in (seq_dir / name).iterdir())) or 'nothing'})",
                )
            raise DatasetFileError(
                velodyne, f"sequence {name} is missing (present: {', '.join(present) or 'none'})"
            )
        scans = sorted(p for p in velodyne.iterdir() if p.suffix.lower() in SCAN_SUFFIXES)
        if not scans:
            raise DatasetFileError(
                velodyne, f"no scans ({'/'.join(SCAN_SUFFIXES)}) in sequence {name}"
            )
        for scan in scans:
            label = seq_dir / name / "labels" / f"{scan.stem}.label"
            if not label.exists():  # a directory there is reported when it is read
                if require_labels and not defer_missing_labels:
                    raise LabelFormatError(
                        label, "label file missing for scan " + scan.name, kind="missing"
                    )
                if not require_labels:
                    label = None
            records.append(ScanRecord(name, scan.stem, scan, label))
    return records


class SemanticKITTIDataset(Dataset):
    """Scans of some sequences of a SemanticKITTI-layout root.

    Each item is a dict:
        coord (V, 3) float32   point (or voxel-mean) positions, augmented in training;
        feat (V, C) float32    features named by ``features``;
        label (V,) int64       training ids (voxel majority), absent without ground truth;
        inverse (P,) int64     for each of the P original points, its row in coord;
        meta dict              sequence, frame, scan and label paths, original point count.

    Args:
        root: dataset root.
        sequences: sequence ids to include.
        label_map: lookup tables (default: configs/labels/semantic-kitti.yaml).
        voxel_size: metres, > 0; None keeps every point (inverse is then the identity). 0 or
            less is refused (ValueError): it used to mean full resolution by accident.
        augment: applied after voxelisation (training only): an object with
            ``scan(coord, remission, rng) -> (coord, remission)`` (``Compose``) or a plain
            ``f(coord, rng) -> coord``.
        features: feature names, see :mod:`pcseg.data.features`.
        require_labels: every scan must have a label file (train/val).
        on_bad_scan: ``"raise"`` the scan's :class:`DatasetFileError` (a missing label file
            already at construction), or ``"skip"``: return a marker item instead, so one bad
            file never stops a long run (see :mod:`pcseg.data.collate`).
        min_points: scans with fewer points in the file (before voxelisation) are bad; the
            class only rejects empty scans by default, the DataModule (``data.min_points``)
            asks for :data:`~pcseg.data.validation.DEFAULT_MIN_POINTS`.
        min_voxels: scans with fewer voxels (at ``voxel_size``; distinct positions without
            voxelisation) are bad (``scan_degenerate``): the network's K-neighbour windows and
            coarse levels need that many (the DataModule checks it is at least the model's k).
    """

    def __init__(
        self,
        root: str | Path,
        sequences: Sequence[int | str],
        label_map: LabelMap | None = None,
        voxel_size: float | None = None,
        augment: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None = None,
        features: Sequence[str] = ("xyz", "remission", "range"),
        require_labels: bool = True,
        on_bad_scan: str = "raise",
        min_points: int = 1,
        min_voxels: int = 1,
    ) -> None:
        self.root = Path(root)
        self.label_map = label_map or load_label_map()
        self.voxel_size = check_voxel_size(voxel_size)
        self.augment = augment
        self.features = tuple(features)
        self.on_bad_scan = check_policy(on_bad_scan)
        if min_points < 0:
            raise ValueError(f"min_points must be >= 0, got {min_points}")
        self.min_points = min_points
        if min_voxels < 0:
            raise ValueError(f"min_voxels must be >= 0, got {min_voxels}")
        self.min_voxels = min_voxels
        self.records = index_scans(
            self.root, sequences, require_labels, defer_missing_labels=on_bad_scan == "skip"
        )
        # One flag per scan in shared memory: DataLoader workers (forked or spawned, persistent
        # or re-created every epoch) see the same flags, so a scan without intensity is warned
        # about once per run (per process group rank), not once per epoch and worker.
        self._remission_warned = torch.zeros(len(self.records), dtype=torch.uint8)
        if len(self.records):
            self._remission_warned.share_memory_()

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict[str, Any]:
        rec = self.records[i]
        try:
            scan = load_scan(rec.scan_path, rec.label_path, self.label_map, self.min_points)
            return self._item(i, rec, scan)
        except DatasetFileError as e:
            if self.on_bad_scan == "raise":
                raise
            return skipped_item(
                rec.scan_path, Problem.from_error(e), feature_channels(self.features)
            )

    def _remission(self, i: int, rec: ScanRecord, remission: np.ndarray) -> np.ndarray:
        """remission (P,) as fed to the network: a scan without intensity gets
        REMISSION_FREE_VALUE everywhere, and a warning the first time it is read."""
        if "remission" not in self.features or not remission_missing(remission):
            return remission
        if not self._remission_warned[i]:
            self._remission_warned[i] = 1
            what = "absent (all 0)" if not remission.any() else f"constant ({remission[0]:g})"
            warnings.warn(
                RemissionMissingWarning(
                    f"{rec.scan_path}: remission is {what} at all {remission.size} points: "
                    "this scan has no intensity, so the model sees geometry only (remission "
                    f"{REMISSION_FREE_VALUE:g}, as for the scans training drops it from); "
                    "expect lower accuracy than with intensity. A geometry-only model: "
                    "data.features=[height,range]"
                ),
                stacklevel=2,
            )
        return np.full_like(remission, REMISSION_FREE_VALUE, dtype=np.float32)

    def _item(self, i: int, rec: ScanRecord, scan: ScanData) -> dict[str, Any]:
        """Voxelise, check, augment and featurise a loaded scan into the item described above.

        Raises :class:`~pcseg.data.errors.ScanFormatError` (``degenerate``) when the scan has
        fewer than ``min_voxels`` voxels or distinct positions.
        """
        xyz, label = scan.xyz, scan.label
        no_remission = "remission" in self.features and remission_missing(scan.remission)
        remission = self._remission(i, rec, scan.remission)

        if self.voxel_size:
            vox = voxelize(xyz, self.voxel_size)
            check_positions(rec.scan_path, xyz, self.voxel_size, self.min_voxels, len(vox.counts))
            coord, inverse = vox.coord, vox.inverse
            remission = scatter_mean(remission, inverse, vox.counts).astype(np.float32)
            if label is not None:
                label = majority_label(
                    label,
                    inverse,
                    len(vox.counts),
                    self.label_map.num_classes,
                    self.label_map.ignore_index,
                )
        else:
            check_positions(rec.scan_path, xyz, None, self.min_voxels)
            coord, inverse = xyz, np.arange(xyz.shape[0], dtype=np.int64)

        if self.augment is not None:
            # torch seeds each worker (and seed_everything(workers=True) makes it reproducible).
            rng = np.random.default_rng(int(torch.randint(0, 2**62, ()).item()))
            if hasattr(self.augment, "scan"):
                coord, remission = self.augment.scan(coord, remission, rng)
            else:
                coord = self.augment(coord, rng)

        item: dict[str, Any] = {
            "coord": torch.from_numpy(np.ascontiguousarray(coord, dtype=np.float32)),
            "feat": torch.from_numpy(compute_features(coord, remission, self.features)),
            "inverse": torch.from_numpy(inverse),
            "meta": {
                "sequence": rec.sequence,
                "frame": rec.frame,
                "scan_path": str(rec.scan_path),
                "label_path": str(rec.label_path) if rec.label_path else None,
                "num_points": int(xyz.shape[0]),
                "remission_missing": no_remission,
            },
        }
        if label is not None:
            item["label"] = torch.from_numpy(label)
        return item
