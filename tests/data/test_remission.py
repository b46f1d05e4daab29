"""Scans without intensity: detected and warned about once per file, fed to the network exactly
as training's remission dropout feeds it, and the dropout itself (seeded, probability p, only
remission changed)."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from pcseg import PROJECT_ROOT
from pcseg.data.features import REMISSION_FREE_VALUE, remission_missing
from pcseg.data.io import read_scan, write_scan
from pcseg.data.semantickitti import RemissionMissingWarning, SemanticKITTIDataset
from pcseg.data.transforms import Compose, RandomRemissionDrop, RandomRotateZ
from tests.helpers import write_toy_dataset

FEATURES = ("height", "remission", "range")  # the default data.features


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """Sequence 00: frame 0 with intensity, frame 1 remission zeroed (as many .pcd files),
    frame 2 remission constant 0.7; sequence 01 frame 0 = frame 0 of 00 with intensity."""
    root = write_toy_dataset(tmp_path_factory.mktemp("rem"), {0: 3, 1: 1}, points=300)
    for frame, value in ((1, 0.0), (2, 0.7)):
        scan = root / "sequences" / "00" / "velodyne" / f"{frame:06d}.bin"
        xyz, _ = read_scan(scan)
        write_scan(scan, xyz, np.full(xyz.shape[0], value, np.float32))
    return root


def _scan(root: Path, frame: int, seq: str = "00") -> Path:
    return root / "sequences" / seq / "velodyne" / f"{frame:06d}.bin"


def _remission_warnings(record: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, RemissionMissingWarning)]


def test_detects_absent_or_constant_remission():
    assert remission_missing(np.zeros(5, np.float32))
    assert remission_missing(np.full(5, 0.7, np.float32))
    assert not remission_missing(np.array([0.0, 0.0, 0.1], np.float32))


def test_zeroed_remission_warns_once_naming_the_file(root):
    ds = SemanticKITTIDataset(root, [0], voxel_size=0.5, features=FEATURES)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        items = [ds[i] for _ in range(3) for i in range(len(ds))]  # three "epochs"
    messages = _remission_warnings(record)
    assert len(messages) == 2, messages  # frames 1 and 2, once each
    assert messages[0].startswith(f"{_scan(root, 1)}: remission is absent (all 0) at all 300")
    assert messages[1].startswith(f"{_scan(root, 2)}: remission is constant (0.7) at all 300")
    assert "data.features=[height,range]" in messages[0]
    remission = [item["feat"][:, 1] for item in items[:3]]
    assert remission[0].std() > 0 and not items[0]["meta"]["remission_missing"]
    for r, item in zip(remission[1:], items[1:3], strict=True):
        assert torch.all(r == REMISSION_FREE_VALUE) and item["meta"]["remission_missing"]


@pytest.mark.slow
def test_warns_once_per_file_across_worker_processes_and_epochs(root):
    """DataLoader workers re-created every epoch (persistent_workers=False) share the warned
    flags. A subprocess, so the workers' warnings reach a real stderr (pytest records the
    main process's warnings, and forked workers inherit that recorder)."""
    script = f"""
from torch.utils.data import DataLoader
from pcseg.data.collate import collate_point_clouds
from pcseg.data.semantickitti import SemanticKITTIDataset
ds = SemanticKITTIDataset({str(root)!r}, [0], voxel_size=0.5, features={FEATURES!r})
loader = DataLoader(ds, batch_size=1, num_workers=2, collate_fn=collate_point_clouds,
                    persistent_workers=False)
for epoch in range(3):
    for batch in loader:
        pass
"""
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count(f"{_scan(root, 1)}: remission is absent") == 1, proc.stderr
    assert proc.stderr.count(f"{_scan(root, 2)}: remission is constant") == 1, proc.stderr
    assert proc.stderr.count("RemissionMissingWarning") == 2, proc.stderr


def test_geometry_only_features_need_no_remission_and_do_not_warn(root):
    ds = SemanticKITTIDataset(root, [0], voxel_size=0.5, features=("height", "range"))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        item = ds[1]
    assert _remission_warnings(record) == [] and item["feat"].shape[1] == 2


def test_inference_on_a_remission_free_scan_sees_what_dropout_trains_on(root, tmp_path):
    """The zeroed scan's features equal those of the same scan with intensity under a
    remission dropout that fires (p=1): training and inference agree."""
    xyz, remission = read_scan(_scan(root, 0))
    zeroed = write_toy_dataset(tmp_path / "z", {0: 1}, points=300)
    write_scan(_scan(zeroed, 0), xyz, np.full_like(remission, 0.7))  # constant: treated as none
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RemissionMissingWarning)
        inference = SemanticKITTIDataset(zeroed, [0], voxel_size=0.5, features=FEATURES)[0]
    dropped = SemanticKITTIDataset(
        root, [0], voxel_size=0.5, features=FEATURES, augment=Compose([RandomRemissionDrop(1.0)])
    )[0]
    torch.testing.assert_close(inference["feat"], dropped["feat"], rtol=0, atol=0)


# --------------------------------------------------------------------------- the augmentation


@pytest.fixture
def scan() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.normal(size=(400, 3)).astype(np.float32), rng.uniform(0, 1, 400).astype(np.float32)


def test_remission_drop_changes_only_remission(scan):
    coord, remission = scan
    before = coord.copy(), remission.copy()
    out_coord, out_rem = RandomRemissionDrop(1.0).scan(coord, remission, np.random.default_rng(0))
    assert out_coord is coord and np.array_equal(out_coord, before[0])
    assert np.all(out_rem == REMISSION_FREE_VALUE) and out_rem.dtype == np.float32
    np.testing.assert_array_equal(remission, before[1])  # the input is not modified
    kept = RandomRemissionDrop(0.0).scan(coord, remission, np.random.default_rng(0))[1]
    np.testing.assert_array_equal(kept, remission)
    with pytest.raises(ValueError, match=r"p must lie in \[0, 1\], got 1.5"):
        RandomRemissionDrop(1.5)


def test_remission_drop_is_seeded_and_fires_with_probability_p(scan):
    coord, remission = scan
    drop = RandomRemissionDrop(0.25)
    fired = [
        bool(
            np.all(drop.scan(coord, remission, np.random.default_rng(s))[1] == REMISSION_FREE_VALUE)
        )
        for s in range(2000)
    ]
    again = [
        bool(
            np.all(drop.scan(coord, remission, np.random.default_rng(s))[1] == REMISSION_FREE_VALUE)
        )
        for s in range(2000)
    ]
    assert fired == again
    # Binomial(2000, 0.25): mean 500, std 19.4; +-5 std
    assert 403 <= sum(fired) <= 597, sum(fired)


def test_compose_gives_each_transform_its_part_of_the_scan(scan):
    coord, remission = scan
    aug = Compose([RandomRotateZ(), RandomRemissionDrop(1.0)])
    out_coord, out_rem = aug.scan(coord, remission, np.random.default_rng(3))
    # the geometric draw is the same as without the dropout (it is drawn after)
    np.testing.assert_array_equal(
        out_coord, Compose([RandomRotateZ()])(coord, np.random.default_rng(3))
    )
    assert np.all(out_rem == REMISSION_FREE_VALUE)
    # a coordinate-only call ignores remission transforms
    np.testing.assert_array_equal(aug(coord, np.random.default_rng(3)), out_coord)
