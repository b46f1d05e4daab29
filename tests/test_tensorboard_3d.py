"""Validation clouds reach TensorBoard as Open3D 3D summaries, read back with Open3D's own
TensorBoard reader (what the "Open3D" tab shows)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from omegaconf import open_dict

from pcseg.callbacks.tensorboard_3d import TAG, cloud_summary
from pcseg.train import train
from tests.helpers import write_toy_dataset
from tests.test_train import SMALL_MODEL, compose_train


def test_cloud_summary_subsamples_the_same_points_every_time():
    rng = np.random.default_rng(0)
    coord = rng.normal(size=(500, 3))
    pred = rng.integers(0, 20, 500)
    label = rng.integers(0, 20, 500)
    colors = rng.uniform(size=(500, 3))
    a = cloud_summary(coord, pred, label, colors, max_points=100)
    b = cloud_summary(coord, pred, label, colors, max_points=100)
    assert a["vertex_positions"].shape == (100, 3) and a["vertex_positions"].dtype == np.float32
    assert a["vertex_predict_labels"].shape == (100, 1)
    assert a["vertex_gt_labels"].dtype == np.int32
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    # the kept rows are the same rows of every array
    keep = [
        int(np.flatnonzero((coord.astype(np.float32) == p).all(1))[0])
        for p in a["vertex_positions"]
    ]
    np.testing.assert_array_equal(a["vertex_predict_labels"][:, 0], pred[keep])
    np.testing.assert_array_equal(a["vertex_gt_labels"][:, 0], label[keep])
    full = cloud_summary(coord, pred, label, colors, max_points=None)
    assert full["vertex_positions"].shape == (500, 3)
    with pytest.raises(ValueError, match="500 points but 499 predictions"):
        cloud_summary(coord, pred[:-1], label, colors, max_points=None)


def test_validation_clouds_are_written_and_read_back(tmp_path):
    from open3d.visualization.tensorboard_plugin.util import Open3DPluginDataReader

    root = write_toy_dataset(tmp_path / "toy", {0: 2, 1: 2}, points=2000)
    out = tmp_path / "run"
    cfg = compose_train(
        [
            "data=semantickitti",
            f"data.root={root}",
            "data.sequences={train:[0],valid:[1],test:[1]}",
            "data.num_workers=0",
            "data.voxel_size=0.1",
            "data.batch_size=2",
            *SMALL_MODEL,
            "trainer.max_epochs=2",
            "callbacks.tensorboard_3d.every_n_epochs=1",
            "callbacks.tensorboard_3d.max_points=500",
        ],
        out,
    )
    with open_dict(cfg):
        cfg.validate_best = False
    train(cfg)

    logdir = out / "tensorboard"
    assert list(Path(logdir, "plugins", "Open3D").glob("*.msgpack"))
    reader = Open3DPluginDataReader(str(logdir))
    runs = [run for run, tags in reader.run_to_tags.items() if TAG in tags]
    assert runs, reader.run_to_tags
    events = reader.tensor_events(runs[0])[TAG]
    steps = [e.step for e in events]
    assert len(steps) == 2 and steps[0] < steps[1]  # epochs 1 and 2 (1 step each)
    step_to_idx = {step: i for i, step in enumerate(steps)}
    geometry, _ = reader.read_geometry(runs[0], TAG, steps[-1], 0, step_to_idx)
    points = geometry.point
    assert points.positions.shape == (500, 3)
    pred = points["predict_labels"].numpy()[:, 0]
    gt = points["gt_labels"].numpy()[:, 0]
    assert pred.shape == gt.shape == (500,)
    assert set(np.unique(gt)) <= set(range(20)) and len(np.unique(gt)) >= 3
    names = reader.get_label_to_names(runs[0], TAG)
    assert names[1] == "car" and len(names) == 20
