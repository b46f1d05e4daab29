"""Resuming after a crash: atomic checkpoints, ``ckpt_path=last``, exact and killed resumes."""

from __future__ import annotations

import csv
import multiprocessing
import os
import random
import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from pcseg import PROJECT_ROOT
from pcseg.checkpointing import (
    AtomicCheckpointIO,
    CheckpointNotFoundError,
    collect_random_state,
    resolve_ckpt_path,
    set_random_state,
)
from pcseg.train import train
from tests.helpers import write_toy_dataset
from tests.test_train import SMALL_MODEL, compose_train, data_overrides


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


# --- atomic writes -----------------------------------------------------------------------------


class Unpicklable:
    """Raises while torch.save pickles it: an error in the middle of a save."""

    def __reduce__(self):
        raise RuntimeError("boom while pickling")


def test_failed_save_keeps_the_previous_checkpoint(tmp_path):
    target = tmp_path / "checkpoints" / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"version": 1, "w": torch.arange(10)}, target)
    with pytest.raises(RuntimeError, match="boom while pickling"):
        io.save_checkpoint({"version": 2, "w": torch.zeros(10), "bad": Unpicklable()}, target)
    assert load(target)["version"] == 1
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]  # no partial left


def test_save_failing_midway_through_the_write_keeps_the_previous_checkpoint(tmp_path):
    """A real failure halfway through writing the bytes: the file-size limit (as a full disk
    would) makes write() fail with EFBIG after 1 MiB of an 8 MiB checkpoint."""
    target = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"version": 1, "w": torch.ones(1000)}, target)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an OSError, not a signal
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, hard))
    try:
        with pytest.raises((OSError, RuntimeError)):
            io.save_checkpoint({"version": 2, "w": torch.ones(2 << 20)}, target)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)
    ckpt = load(target)
    assert ckpt["version"] == 1 and torch.equal(ckpt["w"], torch.ones(1000))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def _save_versions(path: Path, blobs: list[torch.Tensor], conn) -> None:
    """Child process: announce each version, then save it to ``path``."""
    io = AtomicCheckpointIO()
    for version, blob in enumerate(blobs, start=1):
        conn.send(version)
        io.save_checkpoint({"version": version, "w": blob}, path)
    conn.send(0)


def test_sigkill_during_saves_leaves_a_complete_checkpoint(tmp_path):
    """SIGKILL a process 0-30 ms into rewriting a 16 MiB last.ckpt (a save takes ~60 ms here;
    the same kills left plain torch.save's file unloadable 19 times in 20); the file is then
    one complete version (every value equal to its version number), whichever it was."""
    ctx = multiprocessing.get_context("fork")  # the tensors are made here: no torch ops there
    blobs = [torch.full((4 << 20,), float(v)) for v in range(1, 6)]
    target = tmp_path / "last.ckpt"
    for kill_at, delay in ((2, 0.0), (3, 0.01), (4, 0.03)):
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_save_versions, args=(target, blobs, child))
        proc.start()
        try:
            while (version := parent.recv()) not in (kill_at, 0):
                pass
            time.sleep(delay)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.kill()
            proc.join(timeout=60)
        assert version == kill_at
        ckpt = load(target)
        assert ckpt["version"] in (kill_at - 1, kill_at)
        assert torch.equal(ckpt["w"], blobs[ckpt["version"] - 1])


# --- finding the checkpoint --------------------------------------------------------------------


def test_ckpt_path_resolution(tmp_path):
    runs = tmp_path / "logs" / "train" / "runs"
    with pytest.raises(CheckpointNotFoundError, match=r"runs/\*/checkpoints/last\.ckpt"):
        resolve_ckpt_path("last", runs)
    old, new = (runs / name / "checkpoints" / "last.ckpt" for name in ("b_old", "a_new"))
    for i, path in enumerate((old, new)):
        path.parent.mkdir(parents=True)
        path.write_bytes(b"x")
        os.utime(path, (1_000_000 + i, 1_000_000 + i))
    (runs / "c_without_checkpoint").mkdir()
    assert resolve_ckpt_path("last", runs) == new  # newest by time, not by name
    assert resolve_ckpt_path(str(runs / "b_old"), runs) == old  # a run folder
    assert resolve_ckpt_path(str(old), runs) == old
    assert resolve_ckpt_path(None, runs) is None
    with pytest.raises(CheckpointNotFoundError, match=r"nothing\.ckpt: no such checkpoint file"):
        resolve_ckpt_path(str(tmp_path / "nothing.ckpt"), runs)
    with pytest.raises(
        CheckpointNotFoundError, match="c_without_checkpoint: a folder, but not a run folder"
    ):
        resolve_ckpt_path(str(runs / "c_without_checkpoint"), runs)


def test_train_with_ckpt_path_last_and_no_runs_names_the_search(tmp_path):
    cfg = compose_train(["ckpt_path=last", "data.root=/nonexistent"], tmp_path / "run")
    searched = re.escape(str(tmp_path / "run" / "logs" / "train" / "runs"))
    with pytest.raises(CheckpointNotFoundError, match=searched):
        train(cfg)


def test_random_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    torch.save({"rng": collect_random_state()}, tmp_path / "s.ckpt")
    first = (torch.rand(4), np.random.rand(3), random.random())  # noqa: NPY002 (global state)
    set_random_state(load(tmp_path / "s.ckpt")["rng"])
    again = (torch.rand(4), np.random.rand(3), random.random())  # noqa: NPY002
    assert torch.equal(first[0], again[0])
    assert (first[1] == again[1]).all() and first[2] == again[2]


# --- resuming training -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory) -> Path:
    return write_toy_dataset(tmp_path_factory.mktemp("toy"), {0: 6, 1: 2}, points=2000)


class StopAfterFirstEpoch(pl.Callback):
    """Ends fit after epoch 0, as a crash right after its checkpoint would, while the schedule
    is still sized for the configured max_epochs."""

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        trainer.should_stop = True


def read_metrics(csv_dir: Path) -> list[dict[str, str]]:
    (path,) = csv_dir.rglob("metrics.csv")
    with open(path) as f:
        return list(csv.DictReader(f))


def logged(rows: list[dict[str, str]], key: str) -> dict[int, float]:
    """step -> value of ``key`` for the rows that logged it."""
    return {int(r["step"]): float(r[key]) for r in rows if r.get(key)}


RUN = [
    *SMALL_MODEL,
    "model.net.dropout=0.2",  # consumes torch's generator every step
    "trainer.max_epochs=2",
    "trainer.log_every_n_steps=1",
    "validate_best=false",
    "~callbacks.rich_progress_bar",
    "~callbacks.model_summary",
    "+trainer.enable_progress_bar=false",
    "+trainer.enable_model_summary=false",
    "~logger.tensorboard",
]


def resume_overrides(root: Path) -> list[str]:
    return [*data_overrides(root), *RUN]


def csv_logger(out: Path) -> list[str]:
    return [
        "+logger.csv._target_=pytorch_lightning.loggers.CSVLogger",
        f"+logger.csv.save_dir={out / 'csv'}",
        "+logger.csv.name=null",
        "+logger.csv.version=''",
    ]


@pytest.mark.slow
@pytest.mark.parametrize("weight_average", [False, True])
def test_resume_after_an_epoch_equals_an_uninterrupted_run(toy_root, tmp_path, weight_average):
    """2 epochs straight == epoch 1, stop, resume from last.ckpt for epoch 2: same weights,
    optimiser state, per-step losses, learning rates and val metrics, bit for bit (dropout and
    augmentation included: the random generators are restored; num_workers=0). With the weight
    average on, the checkpoint's state_dict is the average and the raw weights ride in the
    callback state: both must come back."""
    base = [
        *resume_overrides(toy_root),
        f"callbacks.weight_average.enabled={str(weight_average).lower()}",
    ]
    straight = tmp_path / "straight"
    train(compose_train([*base, *csv_logger(straight)], straight))

    first = tmp_path / "first"
    stop = "+callbacks.stop._target_=tests.test_resume.StopAfterFirstEpoch"
    train(compose_train([*base, *csv_logger(first), stop], first))
    ckpt = first / "checkpoints" / "last.ckpt"
    assert load(ckpt)["epoch"] == 0
    second = tmp_path / "second"
    train(compose_train([*base, *csv_logger(second), f"ckpt_path={ckpt}"], second))

    a, b = load(straight / "checkpoints" / "last.ckpt"), load(second / "checkpoints" / "last.ckpt")
    assert a["global_step"] == b["global_step"] > load(ckpt)["global_step"]
    for name, tensor in a["state_dict"].items():
        assert torch.equal(tensor, b["state_dict"][name]), name
    if weight_average:
        raw_a = a["callbacks"]["WeightAverage"]["raw_state_dict"]
        raw_b = b["callbacks"]["WeightAverage"]["raw_state_dict"]
        assert any(not torch.equal(raw_a[k], a["state_dict"][k]) for k in raw_a)
        for name, tensor in raw_a.items():
            assert torch.equal(tensor, raw_b[name]), name
    opt_a, opt_b = a["optimizer_states"][0]["state"], b["optimizer_states"][0]["state"]
    for i in opt_a:
        for key in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(opt_a[i][key], opt_b[i][key]), (i, key)
    assert a["lr_schedulers"] == b["lr_schedulers"]

    rows_a, rows_b = read_metrics(straight / "csv"), read_metrics(second / "csv")
    resumed_steps = sorted(logged(rows_b, "train/loss"))
    assert resumed_steps and resumed_steps[0] > 0
    for key in ("train/loss", "lr"):
        want = {s: v for s, v in logged(rows_a, key).items() if s >= resumed_steps[0]}
        assert logged(rows_b, key) == want, key
    assert logged(rows_b, "val/miou") == {
        s: v for s, v in logged(rows_a, "val/miou").items() if s >= resumed_steps[0]
    }


def _train_cli(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "HYDRA_FULL_ERROR": "1"}
    return subprocess.Popen(
        [sys.executable, str(PROJECT_ROOT / "train.py"), *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.slow
def test_sigkill_mid_epoch_then_ckpt_path_last_resumes_the_run(tmp_path):
    """train.py is SIGKILLed in epoch 1 right after a step checkpoint; `train.py ckpt_path=last`
    finds that run's last.ckpt, continues in the same run folder from the saved step with the
    saved optimiser and schedule, and finishes."""
    steps_per_epoch, every, epochs = 12, 4, 2
    root = write_toy_dataset(tmp_path / "toy", {0: steps_per_epoch, 1: 1}, points=1500)
    args = [
        *data_overrides(root),
        "data.batch_size=1",
        *SMALL_MODEL,
        f"trainer.max_epochs={epochs}",
        f"checkpoint_every_n_steps={every}",
        f"paths.log_dir={tmp_path / 'logs'}",
        "validate_best=false",
        "model.log_images=0",
        "~callbacks.rich_progress_bar",
        "+trainer.enable_progress_bar=false",
    ]
    runs = tmp_path / "logs" / "train" / "runs"

    first = _train_cli(args, tmp_path)
    deadline = time.monotonic() + 240
    try:
        while not list(runs.glob("*/checkpoints/last.ckpt")):
            assert first.poll() is None, first.stdout.read()[-3000:]
            assert time.monotonic() < deadline, "no step checkpoint within 240 s"
            time.sleep(0.02)
        first.send_signal(signal.SIGKILL)
    finally:
        first.kill()
        first.wait(timeout=60)
    (last,) = runs.glob("*/checkpoints/last.ckpt")
    run_dir = last.parent.parent
    killed = load(last)
    step = killed["global_step"]
    assert killed["epoch"] == 0 and 0 < step < steps_per_epoch, "not killed mid-epoch 1"
    assert step % every == 0
    assert killed["lr_schedulers"][0]["last_epoch"] == step
    assert {float(s["step"]) for s in killed["optimizer_states"][0]["state"].values()} == {step}
    assert not list(run_dir.glob("checkpoints/epoch_*.ckpt"))  # no epoch finished

    second = _train_cli([*args, "ckpt_path=last"], tmp_path)
    out, _ = second.communicate(timeout=400)
    assert second.returncode == 0, out[-5000:]
    assert f"Restoring states from the checkpoint path at {last}" in out
    assert "into its run folder" in out

    done = load(last)  # the same run folder's last.ckpt, now at the end of training
    total = steps_per_epoch * epochs
    assert done["global_step"] == total and done["epoch"] == epochs - 1  # saved in its val
    # A fresh optimiser / schedule would have counted only the steps after the restart.
    assert done["lr_schedulers"][0]["last_epoch"] == total
    assert {float(s["step"]) for s in done["optimizer_states"][0]["state"].values()} == {total}
    assert len(list(run_dir.glob("checkpoints/epoch_*.ckpt"))) == 1
    assert sorted(p.parent.parent for p in runs.glob("*/checkpoints/*.ckpt")) == [run_dir] * 2
