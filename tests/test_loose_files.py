"""Loose input files: finding them, intensity detection, the .npy reader's named errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pcseg.data.errors import ScanFormatError
from pcseg.data.io import write_scan
from pcseg.loose_files import InputSpecError, find_inputs, has_intensity_field, read_npy
from pcseg.predict_files import output_stems


def _xyz(n: int = 50) -> np.ndarray:
    return np.random.default_rng(0).normal(0, 5, (n, 3)).astype(np.float32)


def test_find_inputs_file_folder_glob(tmp_path):
    write_scan(tmp_path / "x" / "a.bin", _xyz())
    write_scan(tmp_path / "x" / "sub" / "b.pcd", _xyz())
    (tmp_path / "x" / "notes.txt").write_text("not a cloud")
    base, files = find_inputs(tmp_path / "x")
    assert base == tmp_path / "x" and [f.name for f in files] == ["a.bin", "b.pcd"]
    base, files = find_inputs(tmp_path / "x" / "a.bin")
    assert files == [tmp_path / "x" / "a.bin"]
    base, files = find_inputs(str(tmp_path / "x" / "**" / "*.*"))
    assert base == (tmp_path / "x").resolve() and len(files) == 3  # a glob keeps what it names
    with pytest.raises(InputSpecError, match="no such file"):
        find_inputs(tmp_path / "missing")
    with pytest.raises(InputSpecError, match="matches no files"):
        find_inputs(str(tmp_path / "*.ply"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputSpecError, match="no point clouds"):
        find_inputs(tmp_path / "empty")


def test_output_names_mirror_the_input_tree_and_never_clash(tmp_path):
    base = tmp_path / "in"
    files = [base / "a.bin", base / "a.ply", base / "sub" / "c.npy"]
    stems = output_stems(base, files, tmp_path / "out")
    assert stems[files[0]] == tmp_path / "out" / "a.bin"
    assert stems[files[1]] == tmp_path / "out" / "a.ply"
    assert stems[files[2]] == tmp_path / "out" / "sub" / "c"


def test_intensity_field_detection(tmp_path):
    import open3d as o3d

    write_scan(tmp_path / "i.pcd", _xyz(), np.ones(50))
    write_scan(tmp_path / "i.ply", _xyz(), np.ones(50))
    bare = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(_xyz().astype(np.float64)))
    o3d.io.write_point_cloud(str(tmp_path / "n.pcd"), bare)
    o3d.io.write_point_cloud(str(tmp_path / "n.ply"), bare)
    assert has_intensity_field(tmp_path / "i.pcd") and has_intensity_field(tmp_path / "i.ply")
    assert not has_intensity_field(tmp_path / "n.pcd")
    assert not has_intensity_field(tmp_path / "n.ply")


def test_npy_reader(tmp_path):
    np.save(tmp_path / "xyz.npy", _xyz().astype(np.float64))
    np.save(tmp_path / "xyzi.npy", np.c_[_xyz(), np.full(50, 0.5)])
    cloud = read_npy(tmp_path / "xyz.npy")
    assert cloud.xyz.dtype == np.float32 and cloud.xyz.shape == (50, 3)
    assert not cloud.has_intensity and not cloud.remission.any()
    cloud = read_npy(tmp_path / "xyzi.npy")
    assert cloud.has_intensity and np.allclose(cloud.remission, 0.5)


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((10, 5), np.float32), "expected \\(P, 3\\)"),
        (np.zeros((0, 3), np.float32), "empty"),
        (np.array([[0, 0, np.nan]] * 3, np.float32), "NaN/inf"),
        (np.array([[1e9, 0, 0]] * 3), "global coordinates"),
        (np.array([["a", "b", "c"]]), "not numeric"),
        (np.array([[{}, 1, 2]], dtype=object), "not a plain numeric"),
    ],
)
def test_bad_npy_files_are_named(tmp_path, array, message):
    path = tmp_path / "bad.npy"
    np.save(path, array, allow_pickle=True)
    with pytest.raises(ScanFormatError, match=message) as err:
        read_npy(path)
    assert Path(err.value.path) == path and str(path) in str(err.value)


def test_not_an_npy(tmp_path):
    (tmp_path / "junk.npy").write_bytes(b"garbage")
    with pytest.raises(ScanFormatError, match=r"junk\.npy"):
        read_npy(tmp_path / "junk.npy")
