"""Your own dataset end to end, through the CLIs only (docs/own_dataset.md as a user runs it):
labelled .ply files of a made-up 5-class label set -> scripts/convert_dataset.py -> train.py
-> train.py init_from=<19-class SemanticKITTI checkpoint> -> evaluate.py -> predict.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pcseg import PROJECT_ROOT
from pcseg.data.io import read_labels
from tests.cli import run_cli
from tests.helpers import toy_scan, write_toy_dataset

PYTHON = str(PROJECT_ROOT / ".venv" / "bin" / "python")
FIVE_CLASSES = """\
# a made-up label set: raw ids 1..5 (11 = "noise", not learned)
labels: {0: unlabeled, 1: ground, 2: wall, 3: bush, 4: car, 5: pole, 11: noise}
color_map: {0: [0, 0, 0], 1: [255, 0, 255], 2: [0, 200, 255], 3: [0, 175, 0],
            4: [245, 150, 100], 5: [150, 240, 255], 11: [0, 0, 255]}
learning_map: {0: 0, 1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 11: 0}
learning_map_inv: {0: 0, 1: 1, 2: 2, 3: 3, 4: 4, 5: 5}
learning_ignore: {0: true, 1: false, 2: false, 3: false, 4: false, 5: false}
split: {train: [0], valid: [1], test: [1]}
"""
# toy_scan's SemanticKITTI ids -> the made-up ids (road and sidewalk are both "ground")
TO_FIVE = {40: 1, 48: 1, 50: 2, 70: 3, 10: 4, 80: 5}
TINY = [
    "model.net.width=8",
    "model.net.depth=1",
    "model.net.k=8",
    "model.net.levels=1",
    "model.net.coarse_depth=1",
    "model.net.head_hidden=[16]",
    "model.net.kernel_hidden=[8]",
    "data.voxel_size=0.2",
    "data.num_workers=0",
    "data.persistent_workers=false",
    "trainer.max_epochs=1",
    "validate_best=false",
    "~logger",
]


def _write_labelled_ply(path: Path, xyz: np.ndarray, remission: np.ndarray, labels: np.ndarray):
    import open3d as o3d

    cloud = o3d.t.geometry.PointCloud(o3d.core.Tensor(xyz.astype(np.float32)))
    cloud.point["intensity"] = o3d.core.Tensor(remission.astype(np.float32)[:, None])
    cloud.point["label"] = o3d.core.Tensor(labels.astype(np.int32)[:, None])
    path.parent.mkdir(parents=True, exist_ok=True)
    assert o3d.t.io.write_point_cloud(str(path), cloud)


def _run(script: str, *args: str, cwd: Path, expect: int = 0) -> str:
    return run_cli(script, *args, cwd=cwd, expect=expect).output


@pytest.mark.slow
def test_own_five_class_dataset_end_to_end(tmp_path):
    rng = np.random.default_rng(0)
    scans = {"train_a.ply": 0, "train_b.ply": 0, "01/val.ply": 1}
    sizes = {}
    for name in scans:
        xyz, remission, raw = toy_scan(rng, 400)
        labels = np.vectorize(TO_FIVE.get)(raw)
        labels[:5] = 11  # a few "noise" points: mapped to unlabeled by the yaml
        _write_labelled_ply(tmp_path / "mine" / name, xyz, remission, labels)
        sizes[name] = xyz.shape[0]
    yaml = tmp_path / "five.yaml"
    yaml.write_text(FIVE_CLASSES)
    root = tmp_path / "converted"
    out = _run(
        "scripts/convert_dataset.py",
        f"--input={tmp_path / 'mine'}",
        f"--output={root}",
        f"--labels={yaml}",
        cwd=tmp_path,
    )
    assert "wrote 3 scans" in out
    assert (root / "sequences" / "01" / "labels" / "000000.label").is_file()

    data = [
        "data=semantickitti",
        f"data.root={root}",
        f"data.label_config={yaml}",
        "data.sequences={train:[0],valid:[1],test:[1]}",
    ]
    # from scratch
    _run("train.py", *data, *TINY, f"hydra.run.dir={tmp_path / 'scratch'}", cwd=tmp_path)
    assert (tmp_path / "scratch" / "checkpoints" / "last.ckpt").is_file()

    # a 19-class SemanticKITTI model, then fine-tuned onto the 5 classes
    kitti = write_toy_dataset(tmp_path / "kitti", {0: 1, 1: 1}, points=400)
    _run(
        "train.py",
        "data=semantickitti",
        f"data.root={kitti}",
        "data.sequences={train:[0],valid:[1],test:[1]}",
        *TINY,
        f"hydra.run.dir={tmp_path / 'kitti_run'}",
        cwd=tmp_path,
    )
    out = _run(
        "train.py",
        *data,
        *TINY,
        f"init_from={tmp_path / 'kitti_run'}",
        f"hydra.run.dir={tmp_path / 'finetuned'}",
        cwd=tmp_path,
    )
    assert "re-init" in out.lower() or "reinit" in out.lower(), out[-3000:]
    finetuned = tmp_path / "finetuned" / "checkpoints" / "last.ckpt"

    _run(
        "evaluate.py",
        f"ckpt_path={finetuned}",
        "data.split=val",
        f"hydra.run.dir={tmp_path / 'eval'}",
        cwd=tmp_path,
    )
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert set(metrics["classes"]) == {"ground", "wall", "bush", "car", "pole"}

    _run(
        "predict.py",
        f"ckpt_path={tmp_path / 'finetuned'}",
        f"input={tmp_path / 'mine'}",
        f"output={tmp_path / 'pred'}",
        f"hydra.run.dir={tmp_path / 'predict'}",
        cwd=tmp_path,
    )
    for name, n in sizes.items():
        labels, _ = read_labels(tmp_path / "pred" / name.replace(".ply", ".label"), num_points=n)
        assert set(np.unique(labels)) <= {0, 1, 2, 3, 4, 5}
