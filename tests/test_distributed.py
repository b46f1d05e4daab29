"""Distributed training and evaluation: the sampler that scores every scan once, the ddp
trainer config, and two CPU processes (gloo) training (through scripts/slurm_train.sbatch) and
validating (through Lightning's own launcher) for real.

Run as a script, this file validates a checkpoint with N processes and writes the summed
confusion matrix from rank 0 (Lightning's DDP launcher re-runs the script for the other ranks):
``python tests/test_distributed.py CKPT N OUT.json``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from torch.utils.data import DistributedSampler

import pcseg.config  # noqa: F401
from pcseg import PROJECT_ROOT
from pcseg.data.collate import collate_point_clouds
from pcseg.data.samplers import UnpaddedDistributedSampler, evaluation_sampler
from tests.test_train import SMALL_MODEL


def validate_confusion(ckpt_path: str | Path, devices: int) -> torch.Tensor:
    """Validate ``ckpt_path`` with ``devices`` CPU processes through Lightning; returns the
    validation confusion matrix the LightningModule computed (summed over processes)."""
    import pytorch_lightning as pl

    from pcseg.evaluate import load_run

    run_cfg, _ = load_run(ckpt_path)
    datamodule = instantiate(run_cfg.data)
    model = instantiate(run_cfg.model)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.validate(model, datamodule=datamodule, ckpt_path=str(ckpt_path), verbose=False)
    if trainer.is_global_zero:
        return model.last_result.confusion
    return torch.empty(0)


# --------------------------------------------------------------------------- the sampler


@pytest.mark.parametrize(
    ("size", "world"), [(1, 1), (5, 1), (2, 2), (3, 2), (8, 2), (3, 3), (5, 3), (8, 3)]
)
def test_unpadded_sampler_deals_every_index_exactly_once(size, world):
    dataset = list(range(size))
    shares = [list(UnpaddedDistributedSampler(dataset, world, rank)) for rank in range(world)]
    assert sorted(i for share in shares for i in share) == dataset
    assert [len(s) for s in shares] == [
        len(UnpaddedDistributedSampler(dataset, world, r)) for r in range(world)
    ]
    assert max(map(len, shares)) - min(map(len, shares)) <= 1
    for share in shares:
        assert share == sorted(share)  # in order: predictions stay in scan order per rank


def test_torch_distributed_sampler_pads_odd_splits_which_ours_does_not():
    dataset = list(range(3))
    padded = [list(DistributedSampler(dataset, 2, r, shuffle=False)) for r in range(2)]
    assert sorted(i for share in padded for i in share) == [0, 0, 1, 2]  # scan 0 twice
    ours = [list(UnpaddedDistributedSampler(dataset, 2, r)) for r in range(2)]
    assert ours == [[0, 2], [1]]


def test_unpadded_sampler_needs_an_item_per_process():
    with pytest.raises(ValueError, match="2 scans cannot be shared by 3 processes"):
        UnpaddedDistributedSampler(list(range(2)), num_replicas=3, rank=0)


def test_evaluation_loaders_are_plain_without_a_process_group(tmp_path):
    from pcseg.data.datamodule import SemanticKITTIDataModule
    from tests.helpers import write_toy_dataset

    assert evaluation_sampler(list(range(3))) is None
    root = write_toy_dataset(tmp_path, {0: 1, 1: 3}, points=200)
    dm = SemanticKITTIDataModule(
        root, sequences={"train": [0], "valid": [1], "test": [1]}, num_workers=0
    )
    loader = dm.val_dataloader()
    assert not isinstance(loader.sampler, DistributedSampler)
    assert list(loader.sampler) == [0, 1, 2]


# --------------------------------------------------------------------------- the config


def _compose(overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "configs"), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def test_ddp_trainer_config_composes_and_builds_on_cpu():
    cfg = _compose(["trainer=ddp"])
    assert cfg.trainer.sync_batchnorm is True and cfg.trainer.num_nodes == 1
    assert cfg.trainer.accelerator == "gpu"
    cfg = _compose(
        [
            "trainer=ddp",
            "trainer.accelerator=cpu",
            "trainer.devices=2",
            "trainer.sync_batchnorm=false",
            "trainer.default_root_dir=.",
        ]
    )
    trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
    from pytorch_lightning.strategies import DDPStrategy

    assert isinstance(trainer.strategy, DDPStrategy)
    assert trainer.num_devices == 2 and trainer.num_nodes == 1
    assert trainer.strategy.process_group_backend in (None, "gloo")


# --------------------------------------------------------------------------- two processes

# Stand-in for SLURM's srun on one node: starts SLURM_NTASKS copies of the command, each with
# the rank variables srun gives its tasks, and fails if any task fails.
FAKE_SRUN = """#!/bin/bash
pids=()
for ((i = 0; i < SLURM_NTASKS; i++)); do
    SLURM_PROCID=$i SLURM_LOCALID=$i SLURM_NODEID=0 "$@" &
    pids+=($!)
done
rc=0
for pid in "${pids[@]}"; do wait "$pid" || rc=$?; done
exit $rc
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": str(PROJECT_ROOT),
        "HYDRA_FULL_ERROR": "1",
        "OMP_NUM_THREADS": "1",  # 2 processes on 2 shared cores
        **env,
    }
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def _train_with_slurm_script(root: Path, run_dir: Path, tmp_path: Path) -> str:
    """scripts/slurm_train.sbatch with 2 tasks on this machine (a one-node stand-in for srun),
    its experiment shrunk to CPU and toy size; returns the combined stdout of the tasks."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(FAKE_SRUN)
    (bin_dir / "srun").chmod(0o755)
    slurm = {
        "SLURM_SUBMIT_DIR": str(PROJECT_ROOT),
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NAME": "pcseg",
        "SLURM_NTASKS": "2",
        "SLURM_NTASKS_PER_NODE": "2",
        "SLURM_NNODES": "1",
        "SLURM_NODELIST": "127.0.0.1",
        "SLURM_CPUS_PER_TASK": "1",
    }
    proc = _run(
        [
            "bash",
            str(PROJECT_ROOT / "scripts" / "slurm_train.sbatch"),
            "data.sequences={train:[0],valid:[1],test:[1]}",
            "data.num_workers=0",
            "data.pin_memory=false",
            "data.voxel_size=0.1",
            "data.batch_size=1",
            "model.net.kernel=separable",
            *SMALL_MODEL,
            "trainer.accelerator=cpu",
            "trainer.sync_batchnorm=false",  # torch's SyncBatchNorm runs on GPUs only
            "trainer.max_epochs=1",
        ],
        tmp_path,
        PATH=os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), os.environ["PATH"]]),
        MASTER_PORT=str(_free_port()),
        DATA_ROOT=str(root),
        RUN_DIR=str(run_dir),
        **slurm,
    )
    return proc.stdout


@pytest.mark.slow
def test_two_processes_train_then_validate_every_scan_exactly_once(tmp_path):
    """Train with 2 processes launched the SLURM way, then validate the checkpoint with 1 and
    with 2 processes (Lightning's own launcher): the confusion matrices are identical."""
    from tests.helpers import write_toy_dataset

    # 4 training scans, 3 validation scans: an odd split, which a padding sampler would
    # score 4 times (one scan twice). Batch size 1: rank 0 validates 2 batches, rank 1 one.
    root = write_toy_dataset(tmp_path / "toy", {0: 4, 1: 3}, points=1500)
    run_dir = tmp_path / "run"
    stdout = _train_with_slurm_script(root, run_dir, tmp_path)
    # Lightning's SLURMEnvironment took the ranks from SLURM: one log file per rank (the
    # script names them), and the end-of-training IoU table comes from rank 0 only.
    assert {"train_rank0.log", "train_rank1.log"} <= {p.name for p in run_dir.iterdir()}
    assert stdout.count("mIoU (official") == 1, stdout[-3000:]
    ckpt_path = run_dir / "checkpoints" / "last.ckpt"
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    # 4 scans shared by 2 processes at batch size 1: 2 optimiser steps, not 4.
    assert ckpt["global_step"] == 2
    assert ckpt["pcseg_config"]["trainer"]["devices"] == 2
    assert ckpt["pcseg_config"]["trainer"]["num_nodes"] == 1

    out = tmp_path / "confusion_2.json"
    _run([sys.executable, __file__, str(ckpt_path), "2", str(out)], tmp_path)
    two = torch.tensor(json.loads(out.read_text()))
    one = validate_confusion(ckpt_path, devices=1)
    assert torch.equal(one, two), (one.sum(), two.sum())

    # And both counted each validation scan once: every labelled (voxel) point of the split.
    from pcseg.evaluate import load_run

    dataset = instantiate(load_run(ckpt_path)[0].data).dataset("val")
    assert len(dataset) == 3
    labelled = sum(int((collate_point_clouds([dataset[i]]).label != 0).sum()) for i in range(3))
    assert int(one.sum()) == labelled

    # The closing table: both processes scored their share of the validation scans on every
    # original point and rank 0 wrote the sum; one process scoring the same checkpoint alone
    # gets the same matrix, which counts each labelled point of the split exactly once.
    from pcseg.data.io import read_labels
    from pcseg.data.labels import load_label_map
    from pcseg.evaluate import score_split

    best = next((run_dir / "checkpoints").glob("epoch_*.ckpt"))
    run_cfg, best_ckpt = load_run(best)
    model = instantiate(run_cfg.model)
    model.load_state_dict(best_ckpt["state_dict"])
    alone, _ = score_split(
        model.eval(), instantiate(run_cfg.data), "val", torch.device("cpu"), progress=False
    )
    at_end = json.loads((run_dir / "val_metrics.json").read_text())
    assert at_end["confusion"] == alone.confusion.tolist()
    lm = load_label_map()
    points = sum(
        int((lm.to_train(read_labels(f)[0]) != 0).sum())
        for f in sorted((root / "sequences" / "01" / "labels").glob("*.label"))
    )
    assert int(alone.confusion.sum()) == points


def main(argv: list[str]) -> None:
    """``CKPT DEVICES OUT``: validate CKPT with DEVICES processes, rank 0 writes the matrix."""
    ckpt_path, devices, out = argv
    confusion = validate_confusion(ckpt_path, int(devices))
    if confusion.numel():
        Path(out).write_text(json.dumps(confusion.tolist()))


if __name__ == "__main__":
    main(sys.argv[1:])
