"""A dataset over any SemanticKITTI-layout root: the real dataset or the embedded synthetic one.

Layout: ``ROOT/sequences/NN/velodyne/NNNNNN.bin`` (also ``.pcd``/``.ply``) and, where ground
truth exists, ``ROOT/sequences/NN/labels/NNNNNN.label``. One code path for every source: a
scan is read and checked (:mod:`pcseg.data.validation`), its raw labels remapped through the
label yaml, optionally voxelised (keeping the index back to every original point), augmented
(training only), and turned into features.

A bad scan (corrupt, truncated, NaN/inf, too few points, label file missing, mismatched or with
unknown ids) raises its :class:`~pcseg.data.errors.DatasetFileError` under
``on_bad_scan="raise"``; under ``"skip"`` the item is a marker
(:func:`~pcseg.data.collate.skipped_item`) that the collate leaves out of the batch and records.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from pcseg.data.collate import skipped_item
from pcseg.data.errors import DatasetFileError, LabelFormatError
from pcseg.data.features import compute_features, feature_channels
from pcseg.data.io import SCAN_SUFFIXES
from pcseg.data.labels import LabelMap, load_label_map
from pcseg.data.validation import Problem, ScanData, check_policy, load_scan
from pcseg.data.voxelize import majority_label, scatter_mean, voxelize


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
        voxel_size: metres; None keeps every point (inverse is then the identity).
        augment: ``f(coord, rng) -> coord`` applied after voxelisation (training only).
        features: feature names, see :mod:`pcseg.data.features`.
        require_labels: every scan must have a label file (train/val).
        on_bad_scan: ``"raise"`` the scan's :class:`DatasetFileError` (a missing label file
            already at construction), or ``"skip"``: return a marker item instead, so one bad
            file never stops a long run (see :mod:`pcseg.data.collate`).
        min_points: scans with fewer points in the file (before voxelisation) are bad; the
            class only rejects empty scans by default, the DataModule (``data.min_points``)
            asks for :data:`~pcseg.data.validation.DEFAULT_MIN_POINTS`.
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
    ) -> None:
        self.root = Path(root)
        self.label_map = label_map or load_label_map()
        self.voxel_size = voxel_size
        self.augment = augment
        self.features = tuple(features)
        self.on_bad_scan = check_policy(on_bad_scan)
        if min_points < 0:
            raise ValueError(f"min_points must be >= 0, got {min_points}")
        self.min_points = min_points
        self.records = index_scans(
            self.root, sequences, require_labels, defer_missing_labels=on_bad_scan == "skip"
        )

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict[str, Any]:
        rec = self.records[i]
        try:
            scan = load_scan(rec.scan_path, rec.label_path, self.label_map, self.min_points)
        except DatasetFileError as e:
            if self.on_bad_scan == "raise":
                raise
            return skipped_item(
                rec.scan_path, Problem.from_error(e), feature_channels(self.features)
            )
        return self._item(rec, scan)

    def _item(self, rec: ScanRecord, scan: ScanData) -> dict[str, Any]:
        """Voxelise, augment and featurise a checked scan into the item described above."""
        xyz, remission, label = scan.xyz, scan.remission, scan.label

        if self.voxel_size:
            vox = voxelize(xyz, self.voxel_size)
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
            coord, inverse = xyz, np.arange(xyz.shape[0], dtype=np.int64)

        if self.augment is not None:
            # torch seeds each worker (and seed_everything(workers=True) makes it reproducible).
            rng = np.random.default_rng(int(torch.randint(0, 2**62, ()).item()))
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
            },
        }
        if label is not None:
            item["label"] = torch.from_numpy(label)
        return item
