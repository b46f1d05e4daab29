"""Full-resolution predictions through the real dataset + collate, and the submission export and
its verification."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pcseg.data.collate import collate_point_clouds
from pcseg.data.io import read_labels, read_scan, write_labels, write_scan
from pcseg.data.labels import load_label_map
from pcseg.data.semantickitti import SemanticKITTIDataset
from pcseg.predict import (
    SubmissionError,
    full_resolution_predictions,
    labels_by_nearest,
    scan_point_count,
    submission_path,
    verify_submission,
    write_submission,
)
from pcseg.structures import PointBatch

# Raw ids of four classes laid out in slabs along x, so voxels are mostly single-class.
SLAB_RAW_IDS = np.array([40, 48, 50, 70])  # road, sidewalk, building, vegetation


def make_layout(root: Path, sizes: dict[int, list[int]], noise: float = 0.1) -> Path:
    """SemanticKITTI tree of dense random scans (points in a 10 m cube, 2.5 m label slabs along
    x, a fraction ``noise`` of labels replaced at random)."""
    rng = np.random.default_rng(0)
    for seq, ns in sizes.items():
        for frame, n in enumerate(ns):
            xyz = rng.uniform(-5, 5, (n, 3)).astype(np.float32)
            raw = SLAB_RAW_IDS[np.clip(((xyz[:, 0] + 5) // 2.5).astype(int), 0, 3)]
            flip = rng.uniform(size=n) < noise
            raw[flip] = rng.choice([10, 40, 48, 50, 70, 0], int(flip.sum()))
            seq_dir = root / "sequences" / f"{seq:02d}"
            write_scan(seq_dir / "velodyne" / f"{frame:06d}.bin", xyz, rng.uniform(0, 1, n))
            write_labels(seq_dir / "labels" / f"{frame:06d}.label", raw)
    return root


@pytest.fixture
def voxel_batch(tmp_path) -> tuple[Path, SemanticKITTIDataset, list[dict], PointBatch]:
    root = make_layout(tmp_path / "data", {0: [3000, 1200], 1: [2100]})
    ds = SemanticKITTIDataset(root, [0, 1], voxel_size=1.0)
    items = [ds[i] for i in range(len(ds))]
    return root, ds, items, collate_point_clouds(items)


def test_one_label_per_original_point_of_each_ragged_cloud(voxel_batch):
    _, ds, items, batch = voxel_batch
    assert batch.coord.shape[0] < 3000 + 1200 + 2100  # really voxelised
    full = full_resolution_predictions(batch.label, batch)
    assert [f.shape[0] for f in full] == [3000, 1200, 2100]
    for b, item in enumerate(items):
        n_scan = read_scan(ds.records[b].scan_path)[0].shape[0]
        assert full[b].shape == (n_scan,) and full[b].dtype == np.int64
        # Exactly the voxel's prediction, per cloud, despite the packing offsets.
        np.testing.assert_array_equal(full[b], item["label"].numpy()[item["inverse"].numpy()])


def test_ground_truth_voxel_labels_come_back_as_the_original_labels(voxel_batch):
    _, ds, _, batch = voxel_batch
    label_map = load_label_map()
    full = full_resolution_predictions(batch.label, batch)
    for b, rec in enumerate(ds.records):
        semantic, _ = read_labels(rec.label_path)
        original = label_map.to_train(semantic)
        labelled = original != label_map.ignore_index
        agreement = (full[b][labelled] == original[labelled]).mean()
        assert agreement > 0.8, f"cloud {b}: only {agreement:.2f} of points agree"


def test_scores_are_argmaxed_and_bad_inputs_rejected(voxel_batch):
    _, _, _, batch = voxel_batch
    scores = torch.nn.functional.one_hot(batch.label, 20).float()
    from_scores = full_resolution_predictions(scores, batch)
    from_ids = full_resolution_predictions(batch.label, batch)
    for a, b in zip(from_scores, from_ids, strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="packed points"):
        full_resolution_predictions(batch.label[:-1], batch)
    no_inverse = PointBatch(coord=batch.coord, feat=batch.feat, offset=batch.offset)
    with pytest.raises(ValueError, match="labels_by_nearest"):
        full_resolution_predictions(batch.label, no_inverse)


def test_nearest_neighbour_fallback(voxel_batch):
    _, ds, _, batch = voxel_batch
    # Hand case: each query takes its closest source point's label.
    source = np.array([[0.0, 0, 0], [10, 0, 0], [0, 10, 0]])
    query = np.array([[1.0, 0, 0], [9, 1, 0], [0, 6, 0], [0, 4, 0]])
    np.testing.assert_array_equal(labels_by_nearest(query, source, [7, 8, 9]), [7, 8, 9, 7])
    # Real clouds: nearest voxel centre mostly agrees with the voxel index (one cloud at a time).
    full = full_resolution_predictions(batch.label, batch)
    for b, rec in enumerate(ds.records):
        xyz, _ = read_scan(rec.scan_path)
        rows = batch.cloud(b)
        nearest = labels_by_nearest(xyz, batch.coord[rows], batch.label[rows])
        assert nearest.shape == (xyz.shape[0],)
        assert (nearest == full[b]).mean() > 0.9
    with pytest.raises(ValueError, match="labels for"):
        labels_by_nearest(query, source, [1, 2])


# --------------------------------------------------------------------------- export


def test_write_submission_stores_raw_ids(tmp_path):
    label_map = load_label_map()
    pred = np.arange(20).repeat(3)
    path = write_submission(tmp_path, 8, "000042", torch.from_numpy(pred), label_map)
    assert path == tmp_path / "sequences" / "08" / "predictions" / "000042.label"
    assert submission_path(tmp_path, "08", 42) == path
    semantic, instance = read_labels(path, num_points=pred.shape[0])
    np.testing.assert_array_equal(semantic, label_map.to_raw(pred))
    assert semantic[3] == 10 and semantic[27] == 40  # car, road
    assert not instance.any()
    np.testing.assert_array_equal(label_map.to_train(semantic), pred)


def export_all(root: Path, out: Path, sequences: list[int]) -> SemanticKITTIDataset:
    """Predict every scan as its own ground truth and write the submission tree."""
    label_map = load_label_map()
    ds = SemanticKITTIDataset(root, sequences, voxel_size=1.0)
    for i in range(len(ds)):
        batch = collate_point_clouds([ds[i]])
        (full,) = full_resolution_predictions(batch.label, batch)
        meta = batch.meta[0]
        write_submission(out, meta["sequence"], meta["frame"], full, label_map)
    return ds


@pytest.fixture
def submission(tmp_path) -> tuple[Path, Path]:
    root = make_layout(tmp_path / "data", {0: [300, 200], 1: [150]})
    out = tmp_path / "out"
    export_all(root, out, [0, 1])
    return root, out


def test_verify_passes_on_a_complete_tree(submission):
    root, out = submission
    summary = verify_submission(out, root, [0, 1])
    assert summary.num_files == 3 and summary.num_points == 650
    assert summary.sequences == ("00", "01")


def _fails(out: Path, root: Path, match: str) -> SubmissionError:
    with pytest.raises(SubmissionError, match=match) as err:
        verify_submission(out, root, [0, 1])
    return err.value


def test_verify_names_a_missing_file(submission):
    root, out = submission
    gone = out / "sequences" / "00" / "predictions" / "000001.label"
    gone.unlink()
    err = _fails(out, root, "1 missing")
    assert str(gone) in str(err) and [p for p, _ in err.missing] == [gone]
    assert not (err.extra or err.wrong_count or err.invalid_ids)


def test_verify_names_a_wrong_count(submission):
    root, out = submission
    short = out / "sequences" / "01" / "predictions" / "000000.label"
    write_labels(short, np.full(149, 40))
    err = _fails(out, root, "wrong point count")
    assert f"{short}: 149 labels but the scan has 150 points" in str(err)


def test_verify_names_an_extra_file(submission):
    root, out = submission
    stray = out / "sequences" / "00" / "predictions" / "000007.label"
    write_labels(stray, np.full(10, 40))
    err = _fails(out, root, "1 extra")
    assert str(stray) in str(err) and [p for p, _ in err.extra] == [stray]


def test_verify_names_an_invalid_raw_id(submission):
    root, out = submission
    bad = out / "sequences" / "00" / "predictions" / "000000.label"
    semantic, _ = read_labels(bad)
    semantic[:5] = 1  # 'outlier': a raw id, but not a learning_map_inv target
    write_labels(bad, semantic)
    err = _fails(out, root, "invalid label ids")
    assert f"{bad}: 5 points with ids not in learning_map_inv: 1" in str(err)
    # The same tree passes when ids are not checked.
    assert verify_submission(out, root, [0, 1], check_ids=False).num_files == 3


def test_verify_limits_the_listing_and_gives_totals(tmp_path):
    root = make_layout(tmp_path / "data", {3: [5] * 13})
    with pytest.raises(SubmissionError, match="13 missing") as info:
        verify_submission(tmp_path / "empty", root, [3])
    err = info.value
    assert len(err.missing) == 13 and "... and 3 more" in str(err)
    assert str(err).count("no prediction for scan") == 10


@pytest.mark.parametrize("suffix", [".bin", ".pcd", ".ply"])
def test_scan_point_count_reads_headers(tmp_path, suffix):
    if suffix != ".bin":
        pytest.importorskip("open3d")
    xyz = np.random.default_rng(0).uniform(-1, 1, (123, 3)).astype(np.float32)
    path = tmp_path / f"scan{suffix}"
    write_scan(path, xyz)
    assert scan_point_count(path) == 123 == read_scan(path)[0].shape[0]
