"""The training loop: configs compose, fast_dev_run, train -> checkpoint -> evaluate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict

import pcseg.config  # noqa: F401
from pcseg import PROJECT_ROOT
from pcseg.data.collate import collate_point_clouds
from pcseg.data.features import feature_channels
from pcseg.data.io import read_labels, read_scan
from pcseg.lit_module import SegmentationModule
from pcseg.train import train
from tests.cli import CliResult, run_cli
from tests.helpers import write_toy_dataset

SMALL_MODEL = [
    "model.net.width=8",
    "model.net.depth=2",
    "model.net.k=8",
    "model.net.head_hidden=[16]",
    "model.net.kernel_hidden=[8]",
]


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory) -> Path:
    return write_toy_dataset(tmp_path_factory.mktemp("toy"), {0: 4, 1: 2}, points=3000)


def data_overrides(root: Path) -> list[str]:
    return [
        "data=semantickitti",
        f"data.root={root}",
        "data.sequences={train:[0],valid:[1],test:[1]}",
        "data.num_workers=0",
        "data.voxel_size=0.1",
        "data.batch_size=2",
    ]


def compose_train(overrides: list[str], out: Path) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "configs"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides, return_hydra_config=False)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
        cfg.paths.log_dir = str(out / "logs")
    return cfg


@pytest.mark.parametrize("kernel", ["separable", "full"])
def test_configs_compose_and_instantiate(toy_root, tmp_path, kernel):
    cfg = compose_train([*data_overrides(toy_root), f"model.net.kernel={kernel}"], tmp_path)
    assert cfg.model.net.in_channels == feature_channels(cfg.data.features) == 3
    assert cfg.model.net.num_classes == 20
    dm = instantiate(cfg.data)
    model = instantiate(cfg.model)
    assert isinstance(model, SegmentationModule)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    logits = model(batch)
    assert logits.shape == (batch.coord.shape[0], 20)
    for name in ("callbacks", "logger"):
        for node in cfg[name].values():
            instantiate(node)
    instantiate(cfg.trainer)


def test_every_config_option_composes(tmp_path):
    for overrides in (
        ["trainer=gpu"],
        ["debug=fdr"],
        ["debug=default"],
        ["experiment=pccn_kitti", "data.root=/x"],
        ["data=synthetic"],
        ["model=pccn_unet"],
    ):
        cfg = compose_train(overrides, tmp_path)
        assert cfg.trainer._target_ == "pytorch_lightning.Trainer"
        instantiate(cfg.model)  # every model config builds


def test_fast_dev_run(toy_root, tmp_path):
    cfg = compose_train([*data_overrides(toy_root), *SMALL_MODEL, "debug=fdr"], tmp_path)
    metrics = train(cfg)
    assert np.isfinite(metrics["train/loss"])


def test_one_step_lowers_loss_on_a_fixed_batch(toy_root, tmp_path):
    torch.manual_seed(0)
    cfg = compose_train([*data_overrides(toy_root), *SMALL_MODEL, "model.net.dropout=0"], tmp_path)
    dm = instantiate(cfg.data)
    model = instantiate(cfg.model)
    ds = dm.dataset("val")
    batch = collate_point_clouds([ds[0], ds[1]])
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    model.train()
    losses = []
    for _ in range(3):
        loss = model.criterion(model(batch), batch.label)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    with torch.no_grad():
        final = float(model.criterion(model(batch), batch.label))
    assert final < losses[0], (losses, final)


def _run(script: str, args: list[str], cwd: Path) -> CliResult:
    """``python <script> <args>`` as a user types it (in this process: tests/cli.py)."""
    return run_cli(script, *args, cwd=cwd)


@pytest.mark.slow
def test_train_checkpoint_evaluate_export_via_cli(toy_root, tmp_path):
    run_dir = tmp_path / "run"
    trained = _run(
        "train.py",
        [
            *data_overrides(toy_root),
            *SMALL_MODEL,
            "trainer.max_epochs=2",
            f"hydra.run.dir={run_dir}",
            "data.num_workers=1",
        ],
        tmp_path,
    )
    ckpts = sorted((run_dir / "checkpoints").glob("*.ckpt"))
    assert {"last.ckpt"} <= {c.name for c in ckpts} and len(ckpts) >= 2
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    assert list((run_dir / "tensorboard").rglob("events.out.tfevents.*"))
    # the closing table scores the best checkpoint on every original point, as evaluate.py does
    assert "every point" in trained.stdout and "voxel-level val mIoU" in trained.stdout
    best = next(c for c in ckpts if c.name.startswith("epoch_"))
    val_dir = tmp_path / "eval_val"
    _run("evaluate.py", [f"ckpt_path={best}", f"hydra.run.dir={val_dir}"], tmp_path)
    at_end = json.loads((run_dir / "val_metrics.json").read_text())
    assert at_end == json.loads((val_dir / "metrics.json").read_text())

    eval_dir = tmp_path / "eval"
    proc = _run(
        "evaluate.py",
        [
            f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}",
            "data.split=test",
            "export=true",
            f"hydra.run.dir={eval_dir}",
        ],
        tmp_path,
    )
    assert "mIoU" in proc.stdout or "miou" in proc.stdout.lower()
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    assert 0.0 <= metrics["miou"] <= 1.0
    assert (eval_dir / "confusion.png").stat().st_size > 1000
    # One prediction file per scan, one raw label per original point.
    for scan in sorted((toy_root / "sequences" / "01" / "velodyne").glob("*.bin")):
        pred_file = (
            eval_dir / "submission" / "sequences" / "01" / "predictions" / f"{scan.stem}.label"
        )
        sem, _ = read_labels(pred_file, num_points=len(read_scan(scan)[0]))
        assert set(np.unique(sem)) <= {
            0,
            10,
            11,
            15,
            18,
            20,
            30,
            31,
            32,
            40,
            44,
            48,
            49,
            50,
            51,
            70,
            71,
            72,
            80,
            81,
        }
