"""The real SemanticKITTI scans read as published (counts from shared/data/MANIFEST.md)."""

from __future__ import annotations

import numpy as np

from pcseg.data.io import read_labels, read_scan
from pcseg.data.labels import load_label_map


def test_real_frame_matches_manifest(real_root):
    xyz, remission = read_scan(real_root / "sequences/00/velodyne/000000.bin")
    assert xyz.shape == (124668, 3)
    assert 0.0 <= remission.min() and remission.max() <= 1.0
    semantic, instance = read_labels(real_root / "sequences/00/labels/000000.label", len(xyz))
    raw_names = load_label_map().raw_names
    counts = {
        raw_names[i]: int(c) for i, c in zip(*np.unique(semantic, return_counts=True), strict=True)
    }
    # Published per-class counts of frame 000000 (MANIFEST.md).
    assert counts["road"] == 34228
    assert counts["car"] == 4234
    assert counts["moving-motorcyclist"] == 88
    assert counts["outlier"] == 4
    assert instance.max() > 0  # cars carry instance ids in the high 16 bits


def test_every_real_scan_remaps(real_root):
    lm = load_label_map()
    scans = sorted((real_root / "sequences").glob("*/velodyne/*.bin"))
    assert scans
    for scan in scans:
        xyz, _ = read_scan(scan)
        label_path = scan.parent.parent / "labels" / f"{scan.stem}.label"
        semantic, _ = read_labels(label_path, len(xyz))
        train = lm.to_train(semantic, label_path)
        assert train.min() >= 0 and train.max() < lm.num_classes
