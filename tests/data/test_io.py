"""Scan and label I/O: round trips in every format, and a specific error for every bad file."""

from __future__ import annotations

import numpy as np
import pytest

from pcseg.data.errors import DatasetFileError, LabelFormatError, ScanFormatError
from pcseg.data.io import read_labels, read_scan, write_labels, write_scan


@pytest.fixture
def cloud() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    xyz = rng.uniform(-50, 50, size=(1000, 3)).astype(np.float32)
    remission = rng.uniform(0, 1, size=1000).astype(np.float32)
    return xyz, remission


@pytest.mark.parametrize("suffix", [".bin", ".pcd", ".ply"])
def test_scan_round_trip(tmp_path, cloud, suffix):
    xyz, remission = cloud
    path = tmp_path / f"scan{suffix}"
    write_scan(path, xyz, remission)
    xyz2, rem2 = read_scan(path)
    assert xyz2.dtype == np.float32 and rem2.dtype == np.float32
    np.testing.assert_array_equal(xyz2, xyz)
    np.testing.assert_array_equal(rem2, remission)


def test_bin_is_kitti_layout(tmp_path, cloud):
    xyz, remission = cloud
    write_scan(tmp_path / "a.bin", xyz, remission)
    raw = np.fromfile(tmp_path / "a.bin", dtype=np.float32).reshape(-1, 4)
    np.testing.assert_array_equal(raw[:, :3], xyz)
    np.testing.assert_array_equal(raw[:, 3], remission)


def test_ply_without_intensity_reads_zero_remission(tmp_path, cloud):
    import open3d as o3d

    xyz, _ = cloud
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(xyz.astype(np.float64)))
    o3d.io.write_point_cloud(str(tmp_path / "plain.ply"), pcd)
    xyz2, rem = read_scan(tmp_path / "plain.ply")
    np.testing.assert_allclose(xyz2, xyz, atol=1e-5)
    assert rem.shape == (1000,) and not rem.any()


def test_label_round_trip_packs_semantic_and_instance(tmp_path):
    semantic = np.array([0, 10, 40, 252, 99, 60], dtype=np.int64)
    instance = np.array([0, 3, 0, 65535, 7, 0], dtype=np.int64)
    path = tmp_path / "x.label"
    write_labels(path, semantic, instance)
    packed = np.fromfile(path, dtype=np.uint32)
    np.testing.assert_array_equal(packed & 0xFFFF, semantic)
    np.testing.assert_array_equal(packed >> 16, instance)
    sem2, inst2 = read_labels(path, num_points=6)
    np.testing.assert_array_equal(sem2, semantic)
    np.testing.assert_array_equal(inst2, instance)


def test_size_not_multiple_of_16(tmp_path, cloud):
    path = tmp_path / "000123.bin"
    write_scan(path, *cloud)
    with open(path, "ab") as f:
        f.write(b"\x00\x00\x00")
    with pytest.raises(ScanFormatError, match=r"000123\.bin: 16003 bytes is not a multiple of 16"):
        read_scan(path)


def test_label_count_mismatch(tmp_path):
    path = tmp_path / "000007.label"
    write_labels(path, np.zeros(5, dtype=np.int64))
    with pytest.raises(
        LabelFormatError, match=r"000007\.label: 5 labels but the scan has 6 points"
    ):
        read_labels(path, num_points=6)


def test_label_size_not_multiple_of_4(tmp_path):
    path = tmp_path / "bad.label"
    path.write_bytes(b"\x01\x00\x00\x00\x02")
    with pytest.raises(LabelFormatError, match=r"bad\.label: 5 bytes is not a multiple of 4"):
        read_labels(path)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_coordinates(tmp_path, cloud, bad):
    xyz, remission = cloud
    xyz = xyz.copy()
    xyz[17, 1] = bad
    path = tmp_path / "nan.bin"
    write_scan(path, xyz, remission)
    with pytest.raises(
        ScanFormatError, match=r"nan\.bin: 1 of 1000 points have NaN/inf .*index 17"
    ):
        read_scan(path)


def test_non_finite_remission(tmp_path, cloud):
    xyz, remission = cloud
    remission = remission.copy()
    remission[3] = np.nan
    write_scan(tmp_path / "r.bin", xyz, remission)
    with pytest.raises(ScanFormatError, match=r"r\.bin: 1 points have NaN/inf remission"):
        read_scan(tmp_path / "r.bin")


@pytest.mark.parametrize("suffix", [".bin", ".pcd"])
def test_empty_scan(tmp_path, suffix):
    path = tmp_path / f"empty{suffix}"
    if suffix == ".bin":
        path.write_bytes(b"")
    else:
        path.write_text("# not really a pcd\n")
    with pytest.raises(ScanFormatError, match=rf"empty\{suffix}: .*empty"):
        read_scan(path)


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(ScanFormatError, match=r"nope\.bin: file does not exist"):
        read_scan(tmp_path / "nope.bin")
    with pytest.raises(LabelFormatError, match=r"nope\.label: file does not exist"):
        read_labels(tmp_path / "nope.label")
    (tmp_path / "dir.bin").mkdir()
    with pytest.raises(ScanFormatError, match=r"dir\.bin: is a directory"):
        read_scan(tmp_path / "dir.bin")


def test_unknown_suffix(tmp_path):
    path = tmp_path / "scan.xyz"
    path.write_text("1 2 3\n")
    with pytest.raises(ScanFormatError, match=r"scan\.xyz: unknown scan format '\.xyz'"):
        read_scan(path)


def test_errors_share_a_base_class_and_carry_the_path(tmp_path):
    with pytest.raises(DatasetFileError) as info:
        read_scan(tmp_path / "gone.bin")
    assert info.value.path == tmp_path / "gone.bin"
    assert isinstance(info.value, ValueError)


def test_failed_write_leaves_previous_file_intact(tmp_path, cloud):
    xyz, remission = cloud
    path = tmp_path / "keep.bin"
    write_scan(path, xyz, remission)
    before = path.read_bytes()
    with pytest.raises(ValueError):
        write_scan(path, xyz, remission[:10])  # bad input: nothing may be lost
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.bin"]


def test_write_labels_rejects_out_of_range_ids(tmp_path):
    with pytest.raises(ValueError, match="semantic ids must lie in"):
        write_labels(tmp_path / "x.label", np.array([70000]))
