"""Bad data never kills a long run silently: every bad-scan case under both policies.

``raise``: the specific error naming the file. ``skip``: the scan leaves its batch, the other
scans of the batch stay, the skip is recorded with file and reason, and a real ``trainer.fit``
completes its epochs with the skips counted in the logs; evaluation still raises.
"""

from __future__ import annotations

import csv
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict

import pcseg.config  # noqa: F401  (config resolvers)
from pcseg import PROJECT_ROOT
from pcseg.data.collate import collate_point_clouds
from pcseg.data.datamodule import SemanticKITTIDataModule
from pcseg.data.errors import DatasetFileError, ScanFormatError
from pcseg.data.semantickitti import SemanticKITTIDataset
from pcseg.data.validation import Problem, check_scan
from pcseg.evaluate import evaluate
from pcseg.train import train
from tests.bad_data import BAD_CASES, copy_root, frame_paths, plant
from tests.helpers import write_toy_dataset

SMALL_MODEL = [
    "model=pccn",
    "model.net.width=8",
    "model.net.depth=1",
    "model.net.k=8",
    "model.net.head_hidden=[8]",
    "model.net.kernel_hidden=[8]",
]


@pytest.fixture(scope="module")
def clean_root(tmp_path_factory) -> Path:
    """Sequence 00: three good 300-point frames."""
    return write_toy_dataset(tmp_path_factory.mktemp("clean"), {0: 3}, points=300)


@pytest.fixture(params=sorted(BAD_CASES))
def bad_root(request, clean_root, tmp_path) -> tuple[Path, str, Path]:
    """A copy of ``clean_root`` whose frame 1 has one bad case: (root, case, bad file)."""
    root = copy_root(clean_root, tmp_path / "root")
    return root, request.param, plant(root, 0, 1, request.param)


def _dataset(root: Path, policy: str) -> SemanticKITTIDataset:
    return SemanticKITTIDataset(
        root, [0], voxel_size=0.5, on_bad_scan=policy, min_points=100, min_voxels=100
    )


def test_raise_policy_names_the_file_and_problem(bad_root):
    root, case, bad_file = bad_root
    expected = BAD_CASES[case]
    message = re.escape(str(bad_file)) + ": " + expected.reason
    with pytest.raises(expected.error, match=message) as info:
        # A missing label file is found when the split is indexed, everything else when read.
        _dataset(root, "raise")[1]
    assert info.value.path == bad_file
    assert Problem.from_error(info.value).kind == expected.kind


def test_skip_policy_keeps_the_other_scans_and_records_the_skip(bad_root):
    root, case, bad_file = bad_root
    ds = _dataset(root, "skip")
    good = collate_point_clouds([ds[0], ds[2]])
    batch = collate_point_clouds([ds[0], ds[1], ds[2]])

    assert batch.num_clouds == 2
    assert [m["frame"] for m in batch.meta] == ["000000", "000002"]
    for name in ("coord", "feat", "label", "offset", "inverse", "inverse_offset"):
        assert torch.equal(getattr(batch, name), getattr(good, name)), name
    assert len(batch.skipped) == 1
    skip = batch.skipped[0]
    assert skip["scan_path"] == str(frame_paths(root, 0, 1)[0])
    assert skip["path"] == str(bad_file)
    assert skip["kind"] == BAD_CASES[case].kind
    assert re.search(BAD_CASES[case].reason, skip["reason"])


def test_check_scan_reports_each_case_once(bad_root):
    root, case, bad_file = bad_root
    ds = _dataset(root, "skip")
    rec = ds.records[1]
    problems = check_scan(rec.scan_path, rec.label_path, ds.label_map, 100, 0.5, 100)
    assert [(p.kind, p.path) for p in problems] == [(BAD_CASES[case].kind, bad_file)]
    good = ds.records[0]
    assert check_scan(good.scan_path, good.label_path, ds.label_map, 100, 0.5, 100) == []


def test_batch_of_only_bad_scans_is_empty_and_steps_skip_it(clean_root, tmp_path):
    root = copy_root(clean_root, tmp_path / "root")
    plant(root, 0, 0, "truncated_scan")
    plant(root, 0, 1, "unknown_label_ids")
    ds = _dataset(root, "skip")
    batch = collate_point_clouds([ds[0], ds[1]])
    assert batch.num_clouds == 0 and batch.coord.shape == (0, 3)
    assert batch.feat.shape == (0, 5)  # xyz, remission, range: the width the network expects
    assert [s["kind"] for s in batch.skipped] == ["scan_corrupt", "labels_unknown_ids"]

    model = instantiate(_compose_train(root, tmp_path, []).model)
    assert model.training_step(batch, 0) is None
    assert model.validation_step(batch, 0) is None
    assert int(model.val_iou.confusion.sum()) == 0  # nothing counted


def test_policy_and_min_points_are_validated(clean_root):
    with pytest.raises(ValueError, match=r"on_bad_scan must be one of raise, skip, got 'ignore'"):
        SemanticKITTIDataModule(root=clean_root, on_bad_scan="ignore")
    with pytest.raises(ValueError, match="min_points must be >= 0"):
        SemanticKITTIDataset(clean_root, [0], min_points=-1)
    # The min_points threshold is the FILE's point count (300 here), before voxelisation.
    ds = SemanticKITTIDataset(clean_root, [0], voxel_size=5.0, min_points=300)
    assert ds[0]["coord"].shape[0] < 100
    with pytest.raises(DatasetFileError, match="only 300 points, fewer than min_points=301"):
        SemanticKITTIDataset(clean_root, [0], min_points=301)[0]


# --------------------------------------------------------------------------- a real run


def _compose_train(root: Path, out: Path, extra: list[str]) -> DictConfig:
    overrides = [
        "data=semantickitti",
        f"data.root={root}",
        "data.sequences={train:[0],valid:[1],test:[1]}",
        "data.voxel_size=0.5",
        "data.batch_size=3",
        "data.val_batch_size=2",
        "data.persistent_workers=false",
        "data.augment=null",
        *SMALL_MODEL,
        *extra,
    ]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "configs"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
        cfg.paths.log_dir = str(out / "logs")
    return cfg


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def bad_run(tmp_path_factory) -> dict:
    """Two epochs of train() through the real configs on a root with planted bad scans.

    train (seq 00): frames 0, 2, 4 good; 1 truncated, 3 NaN points, 5 label file missing,
    6 and 7 degenerate (every point at one position; all in a 1 m cube:
    they stopped epoch 0 with a BatchNorm error before data.min_voxels);
    valid (seq 01): frames 0, 1 bad (one all-bad batch of 2), frame 2 good;
    seq 02 (unused by training, for evaluate): frame 0 good, frame 1 degenerate.
    One worker process loads the data, so skips cross a process boundary as in a real run.
    """
    tmp = tmp_path_factory.mktemp("bad_run")
    root = write_toy_dataset(tmp / "root", {0: 8, 1: 3, 2: 2}, points=300)
    bad = {
        "train": [
            plant(root, 0, 1, "truncated_scan"),
            plant(root, 0, 3, "nan_points"),
            plant(root, 0, 5, "missing_labels"),
            plant(root, 0, 6, "identical_points"),
            plant(root, 0, 7, "points_in_a_metre_cube"),
        ],
        "val": [plant(root, 1, 0, "empty_scan"), plant(root, 1, 1, "label_count_mismatch")],
        "eval": [plant(root, 2, 1, "identical_points")],
    }
    out = tmp / "out"
    cfg = _compose_train(
        root,
        out,
        [
            "data.num_workers=1",
            "trainer.max_epochs=2",
            "validate_best=false",
            "+logger.csv._target_=pytorch_lightning.loggers.CSVLogger",
            f"+logger.csv.save_dir={out}",
            "+logger.csv.name=csv",
        ],
    )
    handler = _Records()
    log = logging.getLogger("pcseg.callbacks.bad_scans")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        metrics = train(cfg)
    finally:
        log.removeHandler(handler)
    with open(next(out.glob("csv/version_*/metrics.csv"))) as f:
        rows = list(csv.DictReader(f))
    return {"root": root, "out": out, "bad": bad, "metrics": metrics, "rows": rows, "log": handler}


def test_fit_completes_and_counts_skips_every_epoch(bad_run):
    rows = bad_run["rows"]
    per_epoch = {
        int(r["epoch"]): float(r["data/skipped_scans"]) for r in rows if r["data/skipped_scans"]
    }
    assert per_epoch == {0: 5.0, 1: 5.0}
    val = [float(r["data/skipped_scans_val"]) for r in rows if r["data/skipped_scans_val"]]
    assert val == [2.0, 2.0]
    assert bad_run["metrics"]["data/skipped_scans"] == 5.0
    # The good scans were trained on (3 batches of 3 scans per epoch) and validated.
    assert torch.isfinite(torch.tensor(bad_run["metrics"]["train/loss"]))
    assert 0.0 <= bad_run["metrics"]["val/miou"] <= 1.0
    assert (bad_run["out"] / "checkpoints" / "last.ckpt").is_file()


def test_fit_warns_once_per_bad_file_with_its_reason(bad_run):
    warnings = [r.getMessage() for r in bad_run["log"].records if r.levelno == logging.WARNING]
    assert len(warnings) == 2, warnings  # epoch 0: train, val; epoch 1 lists nothing new
    train_msg = next(m for m in warnings if m.startswith("train epoch 0"))
    val_msg = next(m for m in warnings if m.startswith("val epoch 0"))
    for path in bad_run["bad"]["train"]:
        assert train_msg.count(str(path)) == 1
    assert "bytes is not a multiple of 16 (float32 x, y, z, remission) [scan_corrupt]" in train_msg
    assert "NaN/inf coordinates" in train_msg and "label file missing" in train_msg
    assert train_msg.count("[scan_degenerate]") == 2
    assert "in only 1 voxels at data.voxel_size=0.5 m, fewer than min_voxels=100" in train_msg
    for path in bad_run["bad"]["val"]:
        assert str(path) in val_msg
    infos = [r.getMessage() for r in bad_run["log"].records if r.levelno == logging.INFO]
    assert any(m.startswith("train epoch 1: skipped 5 bad scan(s)") for m in infos), infos


def _compose_eval(ckpt: Path, out: Path, extra: list[str]) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "configs"), version_base="1.3"):
        cfg = compose(config_name="evaluate", overrides=[f"ckpt_path={ckpt}", *extra])
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
    return cfg


def test_evaluation_raises_on_bad_scans_unless_told_to_skip(bad_run, tmp_path, capsys):
    ckpt = bad_run["out"] / "checkpoints" / "last.ckpt"
    empty = re.escape(str(bad_run["bad"]["val"][0]))
    with pytest.raises(DatasetFileError, match=empty + r": scan is empty"):
        evaluate(_compose_eval(ckpt, tmp_path / "a", ["data.num_workers=0"]))
    metrics = evaluate(
        _compose_eval(ckpt, tmp_path / "b", ["data.num_workers=0", "data.on_bad_scan=skip"])
    )
    assert 0.0 <= metrics["miou"] <= 1.0
    out = capsys.readouterr().out
    assert out.count("skipped (data.on_bad_scan=skip)") == 2


def test_evaluation_names_a_degenerate_scan(bad_run, tmp_path):
    ckpt = bad_run["out"] / "checkpoints" / "last.ckpt"
    degenerate = re.escape(str(bad_run["bad"]["eval"][0]))
    overrides = ["data.num_workers=0", f"data.root={bad_run['root']}", "data.sequences={valid:[2]}"]
    with pytest.raises(
        ScanFormatError, match=degenerate + r": degenerate scan: 300 points in only 1"
    ):
        evaluate(_compose_eval(ckpt, tmp_path / "a", overrides))


def test_voxels_fewer_than_k_and_bad_voxel_sizes_are_named(clean_root, tmp_path):
    # data.voxel_size=20: a 40 m toy scene is a handful of voxels, fewer than the model's k
    ds = SemanticKITTIDataset(clean_root, [0], voxel_size=20.0, min_voxels=8)
    with pytest.raises(ScanFormatError, match=r"000000.bin: degenerate scan: 300 points in only "):
        ds[0]
    # ... and through the real configs: the DataModule asks for min_voxels >= model.net.k
    cfg = _compose_train(clean_root, tmp_path, ["data.voxel_size=20"])
    assert instantiate(cfg.data).dataset("train")[0]["skipped"]["kind"] == "scan_degenerate"
    with pytest.raises(Exception, match=r"data.min_voxels=5 is below the model's k=8"):
        instantiate(_compose_train(clean_root, tmp_path, ["data.min_voxels=5"]).data)
    for size in ("0", "-0.1"):
        cfg = _compose_train(clean_root, tmp_path, [f"data.voxel_size={size}"])
        with pytest.raises(Exception, match=r"data.voxel_size must be > 0 metres, got -?0"):
            instantiate(cfg.data)
    cfg = _compose_train(clean_root, tmp_path, ["data.voxel_size=null"])  # every point
    assert instantiate(cfg.data).dataset("train")[0]["coord"].shape[0] == 300


def test_training_on_only_bad_scans_completes_without_a_step(clean_root, tmp_path):
    root = copy_root(clean_root, tmp_path / "root")
    for frame, case in enumerate(("truncated_scan", "nan_points", "unknown_label_ids")):
        plant(root, 0, frame, case)
    cfg = _compose_train(
        root,
        tmp_path / "out",
        [
            "data.sequences={train:[0],valid:[0],test:[0]}",
            "data.num_workers=0",
            "data.batch_size=2",
            "trainer.max_epochs=1",
            "+trainer.limit_val_batches=0",
            "validate_best=false",
            "~logger",
        ],
    )
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model)
    before = [p.detach().clone() for p in model.parameters()]
    callbacks = [instantiate(cfg.callbacks.bad_scans)]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=False)
    trainer.fit(model, datamodule=datamodule)
    assert trainer.current_epoch == 1  # the epoch ran to its end
    assert trainer.callback_metrics["data/skipped_scans"] == 3.0
    # No loss, no gradients: the optimiser left every weight alone (grads stay None).
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


@pytest.mark.slow
def test_two_ddp_processes_skip_bad_scans_and_count_them_together(tmp_path):
    """Two CPU processes (gloo) through train.py: a rank whose batch is all bad still joins the
    gradient all-reduce (no hang), and the skips of both ranks are counted and listed once."""
    root = write_toy_dataset(tmp_path / "root", {0: 4, 1: 3}, points=300)
    bad = [plant(root, 0, 1, "truncated_scan"), plant(root, 0, 2, "unknown_label_ids")]
    bad_val = plant(root, 1, 0, "nan_points")
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            str(PROJECT_ROOT / "train.py"),
            "data=semantickitti",
            f"data.root={root}",
            "data.sequences={train:[0],valid:[1],test:[1]}",
            "data.num_workers=0",
            "data.voxel_size=0.5",
            "data.batch_size=1",  # 2 scans per rank: every bad scan is a whole batch
            "data.val_batch_size=1",
            *SMALL_MODEL,
            "trainer=ddp",
            "trainer.accelerator=cpu",
            "trainer.devices=2",
            "trainer.sync_batchnorm=false",
            "trainer.max_epochs=1",
            "validate_best=false",
            "+logger.csv._target_=pytorch_lightning.loggers.CSVLogger",
            f"+logger.csv.save_dir={run_dir}",
            "+logger.csv.name=csv",
            f"hydra.run.dir={run_dir}",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    with open(next(run_dir.glob("csv/version_*/metrics.csv"))) as f:
        rows = list(csv.DictReader(f))
    assert [float(r["data/skipped_scans"]) for r in rows if r["data/skipped_scans"]] == [2.0]
    val = [float(r["data/skipped_scans_val"]) for r in rows if r["data/skipped_scans_val"]]
    assert val == [1.0]
    log_text = (run_dir / "train.log").read_text()
    warning = next(line for line in log_text.splitlines() if "train epoch 0: skipped" in line)
    assert "skipped 2 bad scan(s)" in warning and "2 newly found" in warning
    for path in [*bad, bad_val]:
        assert log_text.count(str(path)) == 1, log_text
