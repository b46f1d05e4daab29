"""predict.py: loose files in every format, the same labels as evaluate.py, bad files, tiles."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict

import pcseg.config  # noqa: F401
from pcseg import PROJECT_ROOT
from pcseg.data.collate import collate_point_clouds
from pcseg.data.io import read_labels, read_scan, write_scan
from pcseg.data.labels import load_label_map
from pcseg.data.semantickitti import SemanticKITTIDataset
from pcseg.evaluate import evaluate
from pcseg.inference import CloudPredictor
from pcseg.nn.pccn import PCCN
from pcseg.ops import knn
from pcseg.predict_files import predict
from pcseg.train import train
from tests.cli import run_cli
from tests.helpers import write_toy_dataset

SMALL_MODEL = [
    "model.net.width=8",
    "model.net.depth=2",
    "model.net.k=8",
    "model.net.head_hidden=[16]",
    "model.net.kernel_hidden=[8]",
]


def _compose(name: str, overrides: list[str], out: Path) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "configs"), version_base="1.3"):
        cfg = compose(config_name=name, overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
        cfg.paths.log_dir = str(out / "logs")
    return cfg


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory) -> tuple[Path, Path]:
    """(dataset root, checkpoint) of a tiny model trained one epoch on a toy dataset."""
    tmp = tmp_path_factory.mktemp("predict")
    root = write_toy_dataset(tmp / "toy", {0: 2, 1: 2}, points=2000)
    run = tmp / "run"
    cfg = _compose(
        "train",
        [
            "data=semantickitti",
            f"data.root={root}",
            "data.sequences={train:[0],valid:[1],test:[1]}",
            "data.num_workers=0",
            "data.persistent_workers=false",
            "data.voxel_size=0.1",
            *SMALL_MODEL,
            "model.net.levels=1",
            "trainer.max_epochs=1",
            "validate_best=false",
            "~logger",
            "~callbacks.rich_progress_bar",
            "~callbacks.model_summary",
        ],
        run,
    )
    train(cfg)
    return root, run / "checkpoints" / "last.ckpt"


@pytest.mark.parametrize("prior", ["null", "content"])
def test_predict_gives_the_labels_evaluate_exports(toy_run, tmp_path, prior):
    """Also under prior=content (the label-shift bias): both commands apply it alike."""
    root, ckpt = toy_run
    ev = _compose(
        "evaluate",
        [
            f"ckpt_path={ckpt}",
            "data.split=test",
            "export=true",
            "data.num_workers=0",
            f"prior={prior}",
        ],
        tmp_path / "eval",
    )
    with open_dict(ev):
        ev.export_dir = str(tmp_path / "submission")
    evaluate(ev)
    velodyne = root / "sequences" / "01" / "velodyne"
    pr = _compose(
        "predict",
        [
            f"ckpt_path={ckpt}",
            f"input={velodyne}",
            f"output={tmp_path / 'pred'}",
            "ply=false",
            f"prior={prior}",
        ],
        tmp_path / "predict",
    )
    summary = predict(pr)
    assert not summary.failed and len(summary.files) == 2
    for scan in sorted(velodyne.glob("*.bin")):
        exported, _ = read_labels(
            tmp_path / "submission/sequences/01/predictions" / scan.name.replace(".bin", ".label")
        )
        predicted, _ = read_labels(tmp_path / "pred" / f"{scan.stem}.label")
        assert predicted.shape == (read_scan(scan)[0].shape[0],)
        np.testing.assert_array_equal(predicted, exported)


def test_tta_and_probabilities_through_predict(toy_run, tmp_path):
    root, ckpt = toy_run
    scan = root / "sequences" / "01" / "velodyne" / "000000.bin"
    out = {}
    for tta in (1, 3):
        cfg = _compose(
            "predict",
            [
                f"ckpt_path={ckpt}",
                f"input={scan}",
                f"output={tmp_path / str(tta)}",
                f"tta={tta}",
                "ply=false",
                "save_probs=true",
            ],
            tmp_path / f"run{tta}",
        )
        assert not predict(cfg).failed
        out[tta] = np.load(tmp_path / str(tta) / "000000.probs.npy")
        labels, _ = read_labels(tmp_path / str(tta) / "000000.label")
        assert labels.shape[0] == out[tta].shape[0] == read_scan(scan)[0].shape[0]
    assert out[3].dtype == np.float16 and out[3].shape[1] == 20
    np.testing.assert_allclose(out[3].astype(np.float32).sum(1), 1.0, atol=1e-2)


def _receptive_safe(coord: torch.Tensor, k: int, depth: int, inside: np.ndarray) -> np.ndarray:
    """Rows whose whole depth-hop KNN neighbourhood (in the full cloud) lies in ``inside``: a
    local network sees exactly the same inputs for them in the tile as in the full cloud."""
    offset = torch.tensor([coord.shape[0]])
    idx = knn(coord, coord, k, offset, offset).idx.numpy()
    safe = inside.copy()
    for _ in range(depth):
        safe = inside & np.where(idx >= 0, safe[np.clip(idx, 0, None)], True).all(axis=1)
    return safe


def test_tiles_label_every_point_and_match_the_untiled_pass_inside(tmp_path):
    """Exactness of tiling: every point gets a label; wherever a point's receptive field lies in
    its tile, the tiled logits equal the untiled ones. A freshly built PCCN has a zero context
    projection, so its receptive field is its depth-hop KNN neighbourhood (no global term)."""
    root = write_toy_dataset(tmp_path / "big", {0: 1}, points=6000)
    ds = SemanticKITTIDataset(root, [0], voxel_size=0.1, features=("height", "remission", "range"))
    batch = collate_point_clouds([ds[0]])
    torch.manual_seed(0)
    net = PCCN(3, 20, width=8, depth=2, k=8, kernel_hidden=[8], head_hidden=[16]).eval()
    label_map = load_label_map()
    features = ("height", "remission", "range")
    whole = CloudPredictor(net, label_map, features, max_points=None).predict(batch, True)
    tiled_predictor = CloudPredictor(
        net, label_map, features, max_points=1500, tile_size=8.0, tile_overlap=3.0
    )
    tiled = tiled_predictor.predict(batch, True)
    assert tiled.tiles > 2 and whole.tiles == 1
    n = batch.inverse.shape[0]
    assert tiled.labels.shape == whole.labels.shape == (n,)
    assert tiled.labels.min() >= 0 and tiled.labels.max() < 20

    # per voxel: compare where the receptive field stays inside the tile that labels the voxel
    vox_whole = torch.from_numpy(whole.probs)[_first_point(batch)]
    vox_tiled = torch.from_numpy(tiled.probs)[_first_point(batch)]
    checked = 0
    for tile in tiled_predictor.plan(batch):
        inside = np.zeros(batch.coord.shape[0], dtype=bool)
        inside[tile.rows] = True
        safe = _receptive_safe(batch.coord, 8, 2, inside)
        rows = tile.rows[tile.core & safe[tile.rows]]
        torch.testing.assert_close(vox_tiled[rows], vox_whole[rows], rtol=1e-4, atol=1e-5)
        checked += rows.shape[0]
    assert checked > 0.5 * batch.coord.shape[0]


def _first_point(batch) -> torch.Tensor:
    """(V,) one original point of each voxel (to read per-voxel values from per-point arrays)."""
    first = torch.full((batch.coord.shape[0],), -1, dtype=torch.int64)
    first[batch.inverse.flip(0)] = torch.arange(batch.inverse.shape[0] - 1, -1, -1)
    return first


def _write_loose_files(folder: Path, xyz: np.ndarray, remission: np.ndarray) -> dict[str, int]:
    import open3d as o3d

    folder.mkdir(parents=True)
    write_scan(folder / "a.bin", xyz, remission)
    write_scan(folder / "b.pcd", xyz[:1500], remission[:1500])
    o3d.io.write_point_cloud(  # positions only: no intensity field
        str(folder / "c.ply"),
        o3d.geometry.PointCloud(o3d.utility.Vector3dVector(xyz[:1200].astype(np.float64))),
    )
    (folder / "nested").mkdir()
    np.save(folder / "nested" / "d.npy", np.c_[xyz[:1000], remission[:1000]])
    np.save(folder / "e.npy", xyz[:800].astype(np.float64))  # x, y, z only
    (folder / "bad.bin").write_bytes(b"\x00" * 30)
    return {"a": 2000, "b": 1500, "c": 1200, "nested/d": 1000, "e": 800}


@pytest.mark.slow
def test_predict_cli_on_loose_files(toy_run, tmp_path):
    root, ckpt = toy_run
    xyz, remission = read_scan(root / "sequences" / "01" / "velodyne" / "000000.bin")
    counts = _write_loose_files(tmp_path / "in", xyz, remission)
    run = tmp_path / "run"
    proc = run_cli(
        "predict.py",
        f"ckpt_path={ckpt.parent.parent}",  # a run folder
        f"input={tmp_path / 'in'}",
        f"output={tmp_path / 'out'}",
        "png=true",
        "save_probs=true",
        f"hydra.run.dir={run}",
        cwd=tmp_path,
        expect=None,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out  # one bad file: the others are predicted, the exit says so
    assert "bad.bin" in out and "not a multiple of 16" in out
    assert "c.ply: no intensity" in out and "e.npy: no intensity" in out and "remission 0" in out
    assert "points/s" in out
    for stem, n in counts.items():
        labels, _ = read_labels(tmp_path / "out" / f"{stem}.label", num_points=n)
        assert set(np.unique(labels)) <= set(load_label_map().learning_map_inv.values())
        probs = np.load(tmp_path / "out" / f"{stem}.probs.npy")
        assert probs.shape == (n, 20) and probs.dtype == np.float16
        assert (tmp_path / "out" / f"{stem}.png").stat().st_size > 0
        ply = tmp_path / "out" / f"{stem}.pred.ply"
        assert read_scan(ply)[0].shape[0] == n
        assert b"property int label" in ply.read_bytes()[:400]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert len(summary["files"]) == 5 and summary["failed"][0]["path"].endswith("bad.bin")


@pytest.mark.slow
def test_evaluate_tta(toy_run, tmp_path):
    """evaluate.py tta=1 is the plain score exactly; tta=4 scores every labelled point too."""
    _, ckpt = toy_run
    metrics = {}
    for tta in (None, 1, 4):
        overrides = [f"ckpt_path={ckpt}", "data.num_workers=0"]
        overrides += [] if tta is None else [f"tta={tta}"]
        cfg = _compose("evaluate", overrides, tmp_path / str(tta))
        if tta is None:
            with open_dict(cfg):
                del cfg["tta"]
        metrics[tta] = evaluate(cfg)
    assert metrics[1] == metrics[None]
    assert 0.0 <= metrics[4]["miou"] <= 1.0
    assert np.sum(metrics[4]["confusion"]) == np.sum(metrics[1]["confusion"])


class _Payload:
    """Unpickling this creates a file: what a malicious checkpoint could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_predict_refuses_a_checkpoint_that_would_run_code(toy_run, tmp_path):
    from pcseg.checkpoint_loading import UnsafeCheckpointError

    root, _ = toy_run
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    torch.save({"pcseg_config": {}, "state_dict": {}, "x": _Payload(marker)}, evil)
    cfg = _compose(
        "predict",
        [f"ckpt_path={evil}", f"input={root / 'sequences'}", f"output={tmp_path / 'out'}"],
        tmp_path / "run",
    )
    with pytest.raises(UnsafeCheckpointError, match=r"evil\.ckpt"):
        predict(cfg)
    assert not marker.exists() and not (tmp_path / "out").exists()
