"""Hydra sweeps: ``train.py -m a=1,2`` runs one job per value, each in its own folder."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from tests.cli import run_cli
from tests.helpers import write_toy_dataset


@pytest.mark.slow
def test_multirun_writes_one_folder_per_job_with_its_config_and_checkpoint(tmp_path):
    root = write_toy_dataset(tmp_path / "toy", {0: 2, 1: 1}, points=1500)
    sweep_dir = tmp_path / "sweep"
    widths = (8, 12)
    run_cli(
        "train.py",
        "-m",
        "data=semantickitti",
        f"data.root={root}",
        "data.sequences={train:[0],valid:[1],test:[1]}",
        "data.voxel_size=0.1",
        "debug=default",  # 2 training batches, 1 validation batch, 1 epoch, no workers
        "model.net.depth=2",
        "model.net.k=8",
        "model.net.head_hidden=[16]",
        "model.net.kernel_hidden=[8]",
        f"model.net.width={','.join(map(str, widths))}",
        f"hydra.sweep.dir={sweep_dir}",
        cwd=tmp_path,
    )
    assert (sweep_dir / "multirun.yaml").is_file()
    assert sorted(p.name for p in sweep_dir.iterdir() if p.is_dir()) == ["0", "1"]
    for job, width in enumerate(widths):
        job_dir = sweep_dir / str(job)
        cfg = OmegaConf.load(job_dir / ".hydra" / "config.yaml")
        assert cfg.model.net.width == width
        assert f"model.net.width={width}" in OmegaConf.load(job_dir / ".hydra" / "overrides.yaml")
        ckpt = torch.load(
            job_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True
        )
        # the job trained the network it was given: the stem's output width is the swept one
        stem = [v for k, v in ckpt["state_dict"].items() if k.startswith("net.stem.")]
        assert stem[0].shape[0] == width
        assert (job_dir / "train.log").is_file()
