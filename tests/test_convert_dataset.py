"""scripts/convert_dataset.py: labelled .ply/.pcd/.npy folders -> the SemanticKITTI layout."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from pcseg import PROJECT_ROOT
from pcseg.convert_dataset import convert_folder, plan_conversion, read_labelled_cloud, read_ply
from pcseg.data.errors import LabelFormatError, ScanFormatError
from pcseg.data.io import read_labels, read_scan
from pcseg.data.labels import load_label_map
from pcseg.data.semantickitti import SemanticKITTIDataset

_NP_TO_PLY = {"f4": "float", "f8": "double", "u1": "uchar", "u2": "ushort", "u4": "uint",
              "i4": "int", "i2": "short"}  # fmt: skip

FIVE_CLASSES = """\
labels: {0: unlabeled, 1: ground, 2: wall, 3: tree, 4: car, 5: pole}
color_map: {0: [0, 0, 0], 1: [255, 0, 255], 2: [0, 200, 255], 3: [0, 175, 0],
            4: [245, 150, 100], 5: [150, 240, 255]}
learning_map: {0: 0, 1: 1, 2: 2, 3: 3, 4: 4, 5: 5}
learning_map_inv: {0: 0, 1: 1, 2: 2, 3: 3, 4: 4, 5: 5}
learning_ignore: {0: true, 1: false, 2: false, 3: false, 4: false, 5: false}
split: {train: [0], valid: [1], test: [1]}
"""


def write_ply(path: Path, fields: dict[str, np.ndarray], fmt: str = "binary_little_endian") -> None:
    """A PLY writer independent of the reader under test (and of Open3D's type limits)."""
    names = list(fields)
    n = len(next(iter(fields.values())))
    header = ["ply", f"format {fmt} 1.0", "comment test", f"element vertex {n}"]
    header += [f"property {_NP_TO_PLY[fields[k].dtype.str[1:]]} {k}" for k in names]
    header += ["element face 0", "property list uchar int vertex_indices", "end_header"]
    body: bytes
    if fmt == "ascii":
        rows = zip(*(fields[k].tolist() for k in names), strict=True)
        body = "".join(" ".join(str(v) for v in row) + "\n" for row in rows).encode()
    else:
        order = "<" if fmt == "binary_little_endian" else ">"
        dtype = np.dtype([(k, order + fields[k].dtype.str[1:]) for k in names])
        table = np.empty(n, dtype=dtype)
        for k in names:
            table[k] = fields[k]
        body = table.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(("\n".join(header) + "\n").encode() + body)


def _scene(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    xyz = rng.uniform(-10, 10, (n, 3)).astype(np.float32)
    return xyz, rng.uniform(0, 1, n).astype(np.float32), rng.integers(1, 6, n)


def _fields(xyz, remission, labels, label_dtype=np.uint16, label_name="label"):
    return {
        "x": xyz[:, 0],
        "y": xyz[:, 1],
        "z": xyz[:, 2],
        "intensity": remission,
        label_name: labels.astype(label_dtype),
    }


@pytest.mark.parametrize("fmt", ["binary_little_endian", "binary_big_endian", "ascii"])
@pytest.mark.parametrize("label_dtype", [np.uint8, np.uint16, np.uint32, np.int32, np.float32])
def test_ply_reader_reads_every_scalar_type(tmp_path, fmt, label_dtype):
    xyz, remission, labels = _scene(40, 0)
    write_ply(tmp_path / "a.ply", _fields(xyz, remission, labels, label_dtype), fmt)
    fields = read_ply(tmp_path / "a.ply")
    np.testing.assert_array_equal(fields["label"], labels.astype(label_dtype))
    got_xyz, _, got_labels, has_i = read_labelled_cloud(tmp_path / "a.ply")
    np.testing.assert_allclose(got_xyz, xyz, rtol=1e-6)  # ascii prints floats in full
    np.testing.assert_array_equal(got_labels, labels)
    assert has_i
    if fmt != "ascii" and label_dtype in (np.uint8, np.int32, np.float32):
        # Open3D reads these types: the reference for positions and the label field
        import open3d as o3d

        ref = o3d.t.io.read_point_cloud(str(tmp_path / "a.ply"))
        np.testing.assert_array_equal(ref.point.positions.numpy(), got_xyz)
        np.testing.assert_array_equal(ref.point["label"].numpy().reshape(-1), fields["label"])


def test_pcd_and_npy_pairs(tmp_path):
    import open3d as o3d

    xyz, remission, labels = _scene(30, 1)
    cloud = o3d.t.geometry.PointCloud(o3d.core.Tensor(xyz))
    cloud.point["intensity"] = o3d.core.Tensor(remission[:, None])
    cloud.point["class"] = o3d.core.Tensor(labels.astype(np.int32)[:, None])
    o3d.t.io.write_point_cloud(str(tmp_path / "a.pcd"), cloud)
    got = read_labelled_cloud(tmp_path / "a.pcd")
    np.testing.assert_array_equal(got[0], xyz)
    np.testing.assert_array_equal(got[2], labels)
    np.save(tmp_path / "b.npy", xyz)
    np.save(tmp_path / "b.labels.npy", labels.astype(np.uint8))
    got = read_labelled_cloud(tmp_path / "b.npy")
    np.testing.assert_array_equal(got[2], labels)
    assert not got[3]  # no intensity column


def test_named_errors(tmp_path):
    xyz, remission, labels = _scene(20, 2)
    write_ply(tmp_path / "nolabel.ply", {"x": xyz[:, 0], "y": xyz[:, 1], "z": xyz[:, 2]})
    with pytest.raises(LabelFormatError, match=r"nolabel\.ply: no label field"):
        read_labelled_cloud(tmp_path / "nolabel.ply")
    write_ply(tmp_path / "frac.ply", _fields(xyz, remission, labels + 0.5, np.float32))
    with pytest.raises(LabelFormatError, match="non-integer"):
        read_labelled_cloud(tmp_path / "frac.ply")
    good = tmp_path / "cut.ply"
    write_ply(good, _fields(xyz, remission, labels))
    good.write_bytes(good.read_bytes()[:-10])
    with pytest.raises(ScanFormatError, match=r"cut\.ply: truncated"):
        read_labelled_cloud(good)
    np.save(tmp_path / "alone.npy", xyz)
    with pytest.raises(LabelFormatError, match=r"alone\.labels\.npy: label file missing"):
        read_labelled_cloud(tmp_path / "alone.npy")
    np.save(tmp_path / "short.npy", xyz)
    np.save(tmp_path / "short.labels.npy", labels[:5])
    with pytest.raises(LabelFormatError, match=r"5 labels but short\.npy has 20 points"):
        read_labelled_cloud(tmp_path / "short.npy")


def _input_folder(root: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Top-level files (sequence 0), subfolder '07' and subfolder 'extra' (sequence 8)."""
    made = {}
    for i, rel in enumerate(["a.ply", "b.ply", "07/c.ply", "extra/d.npy"]):
        xyz, remission, labels = _scene(200 + 10 * i, 10 + i)
        path = root / rel
        if rel.endswith(".npy"):
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(path, np.c_[xyz, remission])
            np.save(path.with_name("d.labels.npy"), labels)
        else:
            write_ply(path, _fields(xyz, remission, labels))
        made[rel] = (xyz, labels)
    return made


def test_convert_folder_writes_the_layout_the_dataset_reads(tmp_path):
    made = _input_folder(tmp_path / "in")
    labels_yaml = tmp_path / "five.yaml"
    labels_yaml.write_text(FIVE_CLASSES)
    label_map = load_label_map(labels_yaml)
    plan = plan_conversion(tmp_path / "in")
    assert [(p.source.name, p.sequence, p.frame) for p in plan] == [
        ("a.ply", "00", "000000"),
        ("b.ply", "00", "000001"),
        ("c.ply", "07", "000000"),
        ("d.npy", "08", "000000"),
    ]
    result = convert_folder(tmp_path / "in", tmp_path / "out", label_map=label_map)
    assert not result.failed and len(result.written) == 4
    for scan in plan:
        xyz, labels = made[str(scan.source.relative_to(tmp_path / "in"))]
        seq = tmp_path / "out" / "sequences" / scan.sequence
        got_xyz, _ = read_scan(seq / "velodyne" / f"{scan.frame}.bin")
        np.testing.assert_array_equal(got_xyz, xyz)
        semantic, _ = read_labels(seq / "labels" / f"{scan.frame}.label", num_points=len(xyz))
        np.testing.assert_array_equal(semantic, labels)
    rows = list(csv.DictReader(open(tmp_path / "out" / "conversion.csv")))
    assert [r["points"] for r in rows] == ["200", "210", "220", "230"]
    ds = SemanticKITTIDataset(tmp_path / "out", [0, 7, 8], label_map=label_map, voxel_size=0.5)
    assert len(ds) == 4 and int(ds[0]["label"].max()) <= 5
    # a second run refuses to overwrite, unless asked
    with pytest.raises(ValueError, match="--overwrite"):
        convert_folder(tmp_path / "in", tmp_path / "out")
    assert len(convert_folder(tmp_path / "in", tmp_path / "out", overwrite=True).written) == 4


def test_script_reports_bad_files_and_exits_1(tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "convert_dataset_script", PROJECT_ROOT / "scripts" / "convert_dataset.py"
    )
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    _input_folder(tmp_path / "in")
    xyz, remission, labels = _scene(50, 3)
    write_ply(tmp_path / "in" / "unknown.ply", _fields(xyz, remission, labels + 40))
    labels_yaml = tmp_path / "five.yaml"
    labels_yaml.write_text(FIVE_CLASSES)
    code = script.main(
        ["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
         "--labels", str(labels_yaml)]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 1
    assert "unknown.ply: unknown raw label ids" in out and "wrote 4 scans" in out
    assert script.main(["--input", str(tmp_path / "nope"), "--output", str(tmp_path)]) == 1
    assert "input folder does not exist" in capsys.readouterr().out


def test_semantic_poss_label_yaml_loads():
    poss = load_label_map(PROJECT_ROOT / "configs" / "labels" / "semantic-poss.yaml")
    assert poss.num_classes == 14 and poss.ignore_index == 0
    assert poss.class_names == [
        "unlabeled", "person", "rider", "car", "trunk", "plants", "traffic-sign", "pole",
        "trashcan", "building", "cone/stone", "fence", "bike", "ground",
    ]  # fmt: skip
    for train_id, raw in poss.learning_map_inv.items():  # the inverse map round-trips
        assert poss.learning_map[raw] == train_id
    # the kit's merges: 1 and 2+ persons -> person; three sign kinds -> traffic-sign
    np.testing.assert_array_equal(
        poss.to_train(np.array([4, 5, 10, 11, 12, 22])), [1, 1, 6, 6, 6, 13]
    )
    assert poss.split == {"train": [0, 1, 2, 4, 5], "valid": [3], "test": [3]}
