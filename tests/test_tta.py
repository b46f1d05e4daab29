"""Test-time augmentation: identity at n = 1, valid averaged labels, views equal rotated scans."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from pcseg.data.collate import collate_point_clouds
from pcseg.data.io import read_scan, write_scan
from pcseg.data.semantickitti import SemanticKITTIDataset
from pcseg.nn.pccn import PCCN
from pcseg.predict import full_resolution_predictions
from pcseg.tta import transform_coord, tta_batch, tta_logits, tta_views
from tests.helpers import write_toy_dataset

FEATURES = ("xyz", "remission", "range")  # xyz: absolute x, y that every view must recompute


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory) -> Path:
    return write_toy_dataset(tmp_path_factory.mktemp("tta"), {0: 2}, points=1500)


def _net(in_channels: int) -> PCCN:
    torch.manual_seed(0)
    net = PCCN(in_channels, 20, width=8, depth=2, k=8, kernel_hidden=[8], head_hidden=[16])
    for p in net.parameters():  # every weight non-zero, the zero-initialised context included
        torch.nn.init.normal_(p, std=0.3)
    return net.eval()


def _batch(root: Path, voxel_size: float | None, features=FEATURES, seq: int = 0):
    ds = SemanticKITTIDataset(
        root, [seq], voxel_size=voxel_size, features=features, require_labels=False
    )
    return collate_point_clouds([ds[i] for i in range(len(ds))])


def test_views_are_seeded_stratified_and_start_with_the_identity():
    views = tta_views(4, seed=3)
    assert views[0].is_identity and len(views) == 4
    assert views == tta_views(4, seed=3) and views != tta_views(4, seed=4)
    for k, v in enumerate(views[1:], 1):  # angle within half a step of 2 pi k / n
        assert abs(v.angle - 2 * math.pi * k / 4) < math.pi / 4
    with pytest.raises(ValueError, match=">= 1"):
        tta_views(0)


def test_one_view_is_the_plain_forward_pass_exactly(toy_root):
    batch = _batch(toy_root, 0.1)
    net = _net(5)
    with torch.no_grad():
        assert torch.equal(tta_logits(net, batch, 1), net(batch))


def test_four_views_average_probabilities_and_label_every_point(toy_root):
    batch = _batch(toy_root, 0.1)
    net = _net(5)
    scores = tta_logits(net, batch, 4, seed=0, features=FEATURES)
    assert scores.shape == (batch.coord.shape[0], 20) and torch.isfinite(scores).all()
    with torch.no_grad():
        manual = torch.stack(
            [torch.softmax(net(tta_batch(batch, v, FEATURES)), 1) for v in tta_views(4, 0)]
        ).mean(0)
    torch.testing.assert_close(torch.softmax(scores, 1), manual, rtol=1e-5, atol=1e-6)
    full = full_resolution_predictions(scores.argmax(1), batch)
    for meta, labels in zip(batch.meta, full, strict=True):
        assert labels.shape == (meta["num_points"],)
        assert labels.min() >= 0 and labels.max() < 20
    # the views disagree somewhere (the network is not rotation invariant): TTA does something
    assert not torch.equal(scores.argmax(1), net(batch).argmax(1)) or not torch.allclose(
        torch.softmax(scores, 1), torch.softmax(net(batch), 1)
    )


def test_a_view_equals_predicting_the_rotated_scan_file(toy_root, tmp_path):
    """Rotation equivariance of the plumbing: view k of a scan gives, point for point, what the
    network gives on the scan file rotated by view k (read, featurised by the dataset)."""
    batch = _batch(toy_root, None)  # full resolution: rows are the file's points
    net = _net(5)
    xyz, remission = read_scan(toy_root / "sequences" / "00" / "velodyne" / "000000.bin")
    n0 = xyz.shape[0]
    for view in tta_views(3, seed=1)[1:]:
        rotated_root = tmp_path / f"view_{view.angle:.3f}"
        write_scan(
            rotated_root / "sequences" / "00" / "velodyne" / "000000.bin",
            transform_coord(xyz, view),
            remission,
        )
        rotated = _batch(rotated_root, None)
        with torch.no_grad():
            from_view = net(tta_batch(batch, view, FEATURES))
            from_file = net(rotated)
        torch.testing.assert_close(from_view[:n0].argmax(1), from_file.argmax(1))
        torch.testing.assert_close(tta_batch(batch, view, FEATURES).feat[:n0], rotated.feat)


def test_features_of_the_batch_must_match_the_names(toy_root):
    batch = _batch(toy_root, 0.1)
    with pytest.raises(ValueError, match="feature channels"):
        tta_batch(batch, tta_views(2)[1], ("height", "range"))
    with pytest.raises(ValueError, match="feature names"):
        tta_logits(_net(5), batch, 2)
