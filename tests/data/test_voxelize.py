"""Voxelisation keeps an index back to every original point and agrees with Open3D."""

from __future__ import annotations

import numpy as np
import pytest

from pcseg.data.voxelize import majority_label, voxelize


def _canonical_partition(inverse: np.ndarray) -> np.ndarray:
    """Renumber groups by their first member so partitions compare regardless of numbering."""
    _, first = np.unique(inverse, return_index=True)
    order = np.argsort(first)
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return rank[np.searchsorted(np.unique(inverse), inverse)]


@pytest.fixture
def cloud() -> np.ndarray:
    rng = np.random.default_rng(3)
    return rng.uniform(-20, 20, size=(5000, 3)).astype(np.float32)


@pytest.mark.parametrize("voxel_size", [0.5, 2.0, 7.0])
def test_same_voxels_as_open3d(cloud, voxel_size):
    ours = voxelize(cloud, voxel_size)
    ref = voxelize(cloud, voxel_size, backend="open3d")
    assert len(ours.counts) == len(ref.counts)
    np.testing.assert_array_equal(
        _canonical_partition(ours.inverse), _canonical_partition(ref.inverse)
    )
    # Same groups -> same means, whichever numbering.
    np.testing.assert_allclose(ours.coord[ours.inverse], ref.coord[ref.inverse], atol=1e-5)


def test_inverse_covers_every_point_and_stays_in_its_voxel(cloud):
    vs = 1.5
    vox = voxelize(cloud, vs)
    assert vox.inverse.shape == (len(cloud),)
    assert vox.counts.sum() == len(cloud)
    np.testing.assert_array_equal(np.bincount(vox.inverse), vox.counts)
    # Every original point lies within one voxel edge of its voxel's mean.
    assert np.abs(vox.coord[vox.inverse] - cloud).max() < vs
    # All points of a voxel share the same integer cell.
    cell = np.floor((cloud - cloud.min(0)) / vs).astype(np.int64)
    for v in range(0, len(vox.counts), 97):
        members = cell[vox.inverse == v]
        assert (members == members[0]).all()


def test_duplicates_collapse_to_one_voxel():
    pts = np.repeat(np.array([[1.0, 2.0, 3.0], [10.0, 0.0, 0.0]], dtype=np.float32), 5, axis=0)
    vox = voxelize(pts, 0.1)
    assert len(vox.counts) == 2
    np.testing.assert_array_equal(vox.inverse, [0] * 5 + [1] * 5)


def test_majority_label_prefers_labelled_points():
    inverse = np.array([0, 0, 0, 1, 1, 1, 2, 2])
    labels = np.array([0, 0, 5, 3, 3, 4, 0, 0])  # voxel 0: two unlabelled, one class 5
    out = majority_label(labels, inverse, num_voxels=3, num_classes=20, ignore_index=0)
    np.testing.assert_array_equal(out, [5, 3, 0])


def test_bad_arguments():
    with pytest.raises(ValueError, match="voxel_size must be positive"):
        voxelize(np.zeros((3, 3), np.float32), 0)
    with pytest.raises(ValueError, match="non-empty"):
        voxelize(np.zeros((0, 3), np.float32), 0.1)
    with pytest.raises(ValueError, match="unknown voxelize backend"):
        voxelize(np.zeros((3, 3), np.float32), 0.1, backend="magic")
