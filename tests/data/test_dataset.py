"""Dataset, collate and DataModule over SemanticKITTI-layout roots: real and generated scans
go through the same code."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from pcseg import PROJECT_ROOT
from pcseg.data.collate import collate_point_clouds
from pcseg.data.datamodule import SemanticKITTIDataModule
from pcseg.data.errors import DatasetFileError, LabelFormatError, ScanFormatError
from pcseg.data.io import read_labels, read_scan, write_labels, write_scan
from pcseg.data.labels import load_label_map
from pcseg.data.semantickitti import SemanticKITTIDataset
from pcseg.data.synthetic import DEFAULT_SPLIT
from pcseg.data.transforms import Compose, RandomRotateZ
from pcseg.structures import PointBatch

RAW_IDS = np.array([0, 1, 10, 40, 44, 48, 50, 60, 70, 71, 72, 80, 81, 252])


def make_layout(root: Path, frames: dict[int, list[int]], labels: bool = True) -> Path:
    """A small SemanticKITTI-layout tree of random scans (sizes given per frame)."""
    rng = np.random.default_rng(0)
    for seq, sizes in frames.items():
        for i, n in enumerate(sizes):
            xyz = rng.uniform(-30, 30, (n, 3)).astype(np.float32)
            write_scan(
                root / "sequences" / f"{seq:02d}" / "velodyne" / f"{i:06d}.bin",
                xyz,
                rng.uniform(0, 1, n).astype(np.float32),
            )
            if labels:
                write_labels(
                    root / "sequences" / f"{seq:02d}" / "labels" / f"{i:06d}.label",
                    rng.choice(RAW_IDS, n),
                )
    return root


def test_items_carry_remapped_labels_and_identity_inverse(tmp_path):
    root = make_layout(tmp_path, {0: [300, 200], 1: [100]})
    ds = SemanticKITTIDataset(root, [0, 1])
    assert len(ds) == 3
    item = ds[2]
    assert item["meta"]["sequence"] == "01" and item["meta"]["frame"] == "000000"
    xyz, remission = read_scan(root / "sequences/01/velodyne/000000.bin")
    semantic, _ = read_labels(root / "sequences/01/labels/000000.label")
    np.testing.assert_array_equal(item["coord"].numpy(), xyz)
    np.testing.assert_array_equal(item["label"].numpy(), load_label_map().to_train(semantic))
    np.testing.assert_allclose(item["feat"][:, 3].numpy(), remission)
    np.testing.assert_allclose(item["feat"][:, 4].numpy(), np.linalg.norm(xyz, axis=1), rtol=1e-6)
    assert torch.equal(item["inverse"], torch.arange(100))


def test_voxelised_items_map_back_to_every_point(tmp_path):
    root = make_layout(tmp_path, {0: [2000]})
    item = SemanticKITTIDataset(root, [0], voxel_size=10.0)[0]
    assert item["coord"].shape[0] < 2000
    assert item["inverse"].shape == (2000,)
    xyz, _ = read_scan(root / "sequences/00/velodyne/000000.bin")
    back = item["coord"][item["inverse"]].numpy()
    assert np.abs(back - xyz).max() < 10.0


def test_augmentation_only_when_given(tmp_path):
    root = make_layout(tmp_path, {0: [500]})
    plain = SemanticKITTIDataset(root, [0])[0]["coord"]
    torch.manual_seed(0)
    rotated = SemanticKITTIDataset(root, [0], augment=Compose([RandomRotateZ()]))[0]["coord"]
    assert not torch.allclose(plain, rotated)
    torch.testing.assert_close(rotated[:, 2], plain[:, 2])


def test_collate_packs_ragged_clouds(tmp_path):
    root = make_layout(tmp_path, {0: [300, 200, 50]})
    ds = SemanticKITTIDataset(root, [0], voxel_size=5.0)
    items = [ds[i] for i in range(3)]
    batch = collate_point_clouds(items)
    assert isinstance(batch, PointBatch)
    sizes = [it["coord"].shape[0] for it in items]
    assert batch.offset.tolist() == np.cumsum(sizes).tolist()
    assert batch.inverse_offset.tolist() == [300, 500, 550]
    for b, it in enumerate(items):
        rows = batch.cloud(b)
        assert torch.equal(batch.coord[rows], it["coord"])
        assert torch.equal(batch.label[rows], it["label"])
        # Packed inverse of cloud b points into cloud b's rows and reproduces its own mapping.
        start = int(batch.inverse_offset[b - 1]) if b else 0
        inv = batch.inverse[start : int(batch.inverse_offset[b])]
        assert torch.equal(batch.coord[inv], it["coord"][it["inverse"]])


def test_test_split_without_labels(tmp_path):
    root = make_layout(tmp_path, {5: [100, 100]}, labels=False)
    ds = SemanticKITTIDataset(root, [5], require_labels=False)
    assert "label" not in ds[0]
    assert collate_point_clouds([ds[0], ds[1]]).label is None
    with pytest.raises(DatasetFileError, match=r"labels/000000\.label: label file missing"):
        SemanticKITTIDataset(root, [5], require_labels=True)


def test_missing_root_or_sequence_is_named(tmp_path):
    with pytest.raises(DatasetFileError, match="no 'sequences' folder"):
        SemanticKITTIDataset(tmp_path / "nowhere", [0])
    root = make_layout(tmp_path / "r", {0: [10]})
    with pytest.raises(
        DatasetFileError, match=r"sequences/08/velodyne: sequence 08 is missing \(present: 00\)"
    ):
        SemanticKITTIDataset(root, [8])


def test_bad_files_raise_when_read(tmp_path):
    root = make_layout(tmp_path, {0: [100, 100]})
    with open(root / "sequences/00/velodyne/000001.bin", "ab") as f:
        f.write(b"\x00")
    write_labels(root / "sequences/00/labels/000000.label", np.full(100, 7))
    ds = SemanticKITTIDataset(root, [0])
    with pytest.raises(
        LabelFormatError, match=r"000000\.label: unknown raw label ids .*7 \(100 points\)"
    ):
        ds[0]
    with pytest.raises(ScanFormatError, match=r"000001\.bin: 1601 bytes"):
        ds[1]


def test_datamodule_loaders_with_workers(tmp_path):
    root = make_layout(tmp_path, {0: [300, 200, 100], 1: [150]})
    dm = SemanticKITTIDataModule(
        root=root,
        sequences={"train": [0], "val": [1], "test": [1]},
        batch_size=2,
        num_workers=2,
        voxel_size=2.0,
        augment=Compose([RandomRotateZ()]),
    )
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert [b.num_clouds for b in batches] == [2, 1]
    assert sum(int(b.inverse_offset[-1]) for b in batches) == 600
    val = list(dm.val_dataloader())
    assert len(val) == 1 and val[0].feat.shape[1] == dm.in_channels == 3  # height, remission, range


def _compose_data(overrides: list[str]):
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "configs"), version_base="1.3"):
        return compose(config_name=None, overrides=overrides)


def test_data_configs_compose_and_instantiate(tmp_path):
    root = make_layout(tmp_path, {0: [100]})
    cfg = _compose_data(
        [
            "+data=semantickitti",
            f"data.root={root}",
            "data.sequences={train:[0],valid:[0],test:[0]}",
            "data.num_workers=0",
        ]
    )
    dm = instantiate(cfg.data)
    assert isinstance(dm, SemanticKITTIDataModule)
    assert dm.root == root and dm.voxel_size == 0.05
    dm.setup("fit")
    assert next(iter(dm.train_dataloader())).num_clouds == 1

    cfg = _compose_data(["+data=synthetic"])
    dm = instantiate(cfg.data)
    assert dm.generate and dm.split_sequences == DEFAULT_SPLIT  # the generator's own split
    assert dm.root == PROJECT_ROOT / "data" / "synthetic_kitti"

    # The official split is the default for a real copy.
    cfg = _compose_data(["+data=semantickitti", "data.root=/x"])
    assert instantiate(cfg.data).sequences("val") == [8]


def test_config_typo_fails_at_instantiate(tmp_path):
    cfg = _compose_data(["+data=semantickitti", "data.root=/x", "+data.voxel_sise=0.1"])
    with pytest.raises(Exception, match="voxel_sise"):
        instantiate(cfg.data)


def test_real_scans_through_the_same_code(real_root):
    dm = SemanticKITTIDataModule(
        root=real_root,
        sequences={"train": [0], "valid": [0], "test": [0]},
        batch_size=3,
        num_workers=0,
        voxel_size=0.1,
    )
    ds = dm.dataset("val")
    assert len(ds) >= 3
    batch = collate_point_clouds([ds[i] for i in range(3)])
    assert batch.num_clouds == 3
    assert batch.inverse_offset.tolist()[0] == 124668  # frame 000000 of sequence 00
    labelled = batch.label[batch.label != 0]
    counts = torch.bincount(labelled, minlength=20)
    names = load_label_map().class_names
    assert counts[names.index("road")] > counts[names.index("car")] > 0
    assert os.path.samefile(
        batch.meta[0]["scan_path"], real_root / "sequences/00/velodyne/000000.bin"
    )


def test_a_sequence_without_velodyne_says_what_is_missing(tmp_path):
    root = make_layout(tmp_path, {0: [100]})
    shutil.rmtree(root / "sequences" / "00" / "velodyne")
    with pytest.raises(
        DatasetFileError, match=r"sequence 00 has no velodyne/ folder \(it holds: labels\)"
    ):
        SemanticKITTIDataset(root, [0])
    with pytest.raises(DatasetFileError, match=r"sequence 01 is missing \(present: 00\)"):
        SemanticKITTIDataset(root, [1])
