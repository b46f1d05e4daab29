"""Adaptation to unlabelled real scans: pseudo-label thresholds, mixing, the whole stage."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import open_dict

from pcseg import PROJECT_ROOT
from pcseg.adapt import ADAPTED_CHECKPOINT
from pcseg.checkpoint_loading import load_checkpoint
from pcseg.data.errors import DatasetFileError
from pcseg.data.io import read_labels, read_scan, write_scan
from pcseg.data.labels import load_label_map
from pcseg.data.mixing import Cloud, MixedDataset, cosmix, inclination, lasermix
from pcseg.data.pseudo_labels import (
    class_thresholds,
    select_pseudo_labels,
    stage_scans,
    write_pseudo_labels,
)
from pcseg.evaluate import evaluate
from pcseg.train import train
from tests.helpers import toy_scan, write_toy_dataset
from tests.test_train import SMALL_MODEL, compose_train, data_overrides

# --------------------------------------------------------------------------- thresholds


def _probs(pred: np.ndarray, conf: np.ndarray, num_classes: int) -> np.ndarray:
    """(V, C) rows with probability ``conf`` on ``pred`` and the rest spread evenly elsewhere
    (class 0, the ignored one, included: it must never win)."""
    prob = np.tile(((1 - conf) / (num_classes - 1))[:, None], (1, num_classes))
    prob[np.arange(len(pred)), pred] = conf
    return prob


def test_thresholds_are_per_class_quantiles():
    rng = np.random.default_rng(0)
    # class 1 frequent and sure, class 2 rare and unsure: one global threshold would drop 2
    pred = np.r_[np.full(900, 1), np.full(100, 2)]
    conf = np.r_[rng.uniform(0.8, 1.0, 900), rng.uniform(0.3, 0.5, 100)]
    thr = class_thresholds(conf, pred, 4, keep_fraction=0.5, max_threshold=1.0, ignore_index=0)
    assert thr[1] == pytest.approx(np.quantile(conf[:900], 0.5))
    assert thr[2] == pytest.approx(np.quantile(conf[900:], 0.5))
    assert np.isinf(thr[0]) and np.isinf(thr[3])  # ignored, never predicted
    # capped: a prediction at least max_threshold sure is kept whatever its class
    capped = class_thresholds(conf, pred, 4, keep_fraction=0.1, max_threshold=0.85)
    assert capped[1] == 0.85 and capped[2] == pytest.approx(np.quantile(conf[900:], 0.9))
    floored = class_thresholds(conf, pred, 4, keep_fraction=0.5, min_confidence=0.45)
    assert floored[2] == 0.45
    with pytest.raises(ValueError, match="keep_fraction"):
        class_thresholds(conf, pred, 4, keep_fraction=0.0)


def _capped_reference(conf, pred, base, share):
    """Plain loop: per class, the points at or above its base threshold, most confident first,
    truncated to floor(share * V) (ties with the last kept one kept too)."""
    keep = np.zeros(conf.shape[0], dtype=bool)
    for c in np.unique(pred):
        if not np.isfinite(base[c]):
            continue
        idx = [i for i in range(conf.shape[0]) if pred[i] == c and conf[i] >= base[c]]
        idx.sort(key=lambda i: -conf[i])
        allowed = int(np.floor(share[c] * conf.shape[0]))
        if len(idx) > allowed:
            last = conf[idx[allowed - 1]] if allowed > 0 else np.inf
            idx = [i for i in idx if conf[i] >= last]
        keep[idx] = True
    return keep


def test_share_caps_keep_the_most_confident_up_to_the_prior():
    rng = np.random.default_rng(3)
    # class 1 over-predicted and sure (the source model's car on real scans), 2 and 3 not
    pred = rng.choice([1, 2, 3], size=3000, p=[0.6, 0.3, 0.1])
    conf = np.where(pred == 1, rng.uniform(0.9, 1.0, 3000), rng.uniform(0.3, 0.95, 3000))
    share = np.array([0.0, 0.1, 0.5, 0.0])  # class 3: no label at all
    kwargs = {"keep_fraction": 0.5, "max_threshold": 0.9, "ignore_index": 0}
    base = class_thresholds(conf, pred, 4, **kwargs)
    capped = class_thresholds(conf, pred, 4, **kwargs, max_share=share)
    keep = conf >= capped[pred]
    assert (keep == _capped_reference(conf, pred, base, share)).all()
    assert (keep & (pred == 1)).sum() == 300  # 10 % of all 3000, not the 1800 max_threshold keeps
    assert capped[2] == base[2]  # a cap above what the base keeps changes nothing
    assert np.isinf(capped[3]) and not (keep & (pred == 3)).any()
    result = select_pseudo_labels(_probs(pred, conf, 4), max_share=share, **kwargs)
    assert (result.label == 1).sum() == 300 and not (result.label == 3).any()
    with pytest.raises(ValueError, match="max_share has shape"):
        class_thresholds(conf, pred, 4, **kwargs, max_share=share[:3])


def test_class_shares_fold_the_yaml_content_through_the_learning_map():
    lm = load_label_map()
    shares = lm.class_shares()
    assert shares.shape == (lm.num_classes,) and shares[lm.ignore_index] == 0.0
    assert shares.sum() == pytest.approx(1.0)
    learned = {raw: r for raw, r in lm.content.items() if lm.learning_map[raw] != 0}
    car = sum(r for raw, r in learned.items() if lm.learning_map[raw] == 1)
    assert shares[1] == pytest.approx(car / sum(learned.values()))
    assert shares[lm.class_names.index("road")] > 0.1 > shares[lm.class_names.index("bicycle")]


def test_pseudo_labels_keep_every_predicted_class():
    rng = np.random.default_rng(1)
    num_classes = 5
    pred = rng.choice([1, 2, 3], size=2000, p=[0.85, 0.13, 0.02])
    conf = np.where(pred == 1, rng.uniform(0.7, 1.0, 2000), rng.uniform(0.25, 0.6, 2000))
    result = select_pseudo_labels(_probs(pred, conf, num_classes), keep_fraction=0.4)
    assert (result.prediction == pred).all()
    kept, predicted = result.coverage(num_classes)
    for c in (1, 2, 3):  # each class keeps about 40 % of its points, the rare ones included
        assert abs(kept[c] / predicted[c] - 0.4) < 0.05, (c, kept, predicted)
    ignored = result.label == 0
    assert (result.confidence[ignored] < result.thresholds[pred[ignored]]).all()
    assert (result.label[~ignored] == pred[~ignored]).all()
    # a single global threshold at the same coverage would have dropped the rare classes
    global_thr = np.quantile(conf, 0.6)
    assert (conf[pred == 3] >= global_thr).sum() == 0


def test_ignored_class_is_never_a_pseudo_label():
    prob = np.array([[0.9, 0.06, 0.04], [0.5, 0.1, 0.4]])
    result = select_pseudo_labels(prob, keep_fraction=1.0)
    assert result.prediction.tolist() == [1, 2]
    assert result.confidence == pytest.approx([0.6, 0.8])


# --------------------------------------------------------------------------- mixing


def _cloud(rng: np.random.Generator, n: int, classes: list[int], z: float = 0.0) -> Cloud:
    coord = rng.normal(0, 10, (n, 3)).astype(np.float32)
    coord[:, 2] = rng.uniform(-3, 3, n) + z
    return Cloud(coord, rng.uniform(0, 1, n).astype(np.float32), rng.choice(classes, n))


def test_lasermix_takes_alternate_inclination_bands():
    rng = np.random.default_rng(2)
    a, b = _cloud(rng, 500, [1, 2]), _cloud(rng, 400, [3, 4])
    mixed, from_a = lasermix(a, b, bands=4)
    assert mixed.coord.shape[0] == mixed.remission.shape[0] == mixed.label.shape[0]
    # every point is one of the inputs', labels travel with their points
    assert set(mixed.label[from_a]) <= {1, 2} and set(mixed.label[~from_a]) <= {3, 4}
    inc = inclination(mixed.coord)
    lo = min(inclination(a.coord).min(), inclination(b.coord).min())
    hi = max(inclination(a.coord).max(), inclination(b.coord).max())
    band = np.clip(((inc - lo) / (hi - lo) * 4).astype(int), 0, 3)
    assert (band[from_a] % 2 == 0).all() and (band[~from_a] % 2 == 1).all()
    # the complementary mix takes exactly the points this one left out
    _, other_from_a = lasermix(a, b, bands=4, a_first=False)
    assert from_a.sum() + other_from_a.sum() == 500
    assert (~from_a).sum() + (~other_from_a).sum() == 400


def test_cosmix_pastes_whole_classes():
    rng = np.random.default_rng(3)
    dst, src = _cloud(rng, 300, [1, 2]), _cloud(rng, 600, [0, 3, 4, 5, 6])
    mixed, from_src = cosmix(dst, src, rng, share=0.5, ignore_index=0)
    np.testing.assert_array_equal(mixed.coord[:300], dst.coord)  # the base is untouched
    np.testing.assert_array_equal(mixed.label[:300], dst.label)
    pasted = set(mixed.label[from_src].tolist())
    assert len(pasted) == 2 and 0 not in pasted  # ceil(0.5 * 4 classes), never 'unlabeled'
    for c in pasted:  # every point of a chosen class, with its own position and remission
        assert (mixed.label[from_src] == c).sum() == (src.label == c).sum()
    assert mixed.coord.shape[0] == 300 + sum((src.label == c).sum() for c in pasted)
    np.testing.assert_array_equal(
        mixed.remission[from_src], src.remission[np.isin(src.label, list(pasted))]
    )


def _item(cloud: Cloud, name: str) -> dict:
    return {
        "coord": torch.from_numpy(cloud.coord),
        "feat": torch.from_numpy(np.c_[cloud.coord, cloud.remission].astype(np.float32)),
        "label": torch.from_numpy(cloud.label),
        "inverse": torch.arange(len(cloud.label)),
        "meta": {"scan_path": name, "sequence": "00", "frame": name},
    }


@pytest.mark.parametrize("mode", ["cosmix", "lasermix", "none"])
def test_mixed_dataset_items_are_consistent(mode):
    rng = np.random.default_rng(4)
    sim = [_item(_cloud(rng, 200, [1, 2, 3]), f"sim{i}") for i in range(3)]
    real = [_item(_cloud(rng, 150, [0, 4, 5]), f"real{i}") for i in range(2)]
    ds = MixedDataset(
        sim, real, ["height", "remission", "range"], length=20, mode=mode, mix_prob=1.0
    )
    torch.manual_seed(0)
    mixed = 0
    for i in range(len(ds)):
        item = ds[i]
        n = item["coord"].shape[0]
        assert item["feat"].shape == (n, 3) and item["label"].shape == (n,)
        assert torch.equal(item["inverse"], torch.arange(n)) and item["meta"]["num_points"] == n
        assert torch.allclose(item["feat"][:, 0], item["coord"][:, 2])  # height from the mix
        assert torch.allclose(item["feat"][:, 2], item["coord"].norm(dim=1))
        mixed += item["meta"]["mixed_with"] is not None
        base = {1, 2, 3} if item["meta"]["domain"] == "sim" else {0, 4, 5}
        if mode == "none":
            assert set(item["label"].tolist()) <= base
    assert (mixed == 0) if mode == "none" else (mixed == len(ds))


# --------------------------------------------------------------------------- staging


def test_stage_loose_folder_and_kitti_root(tmp_path):
    rng = np.random.default_rng(5)
    loose = tmp_path / "loose"
    for name in ("b.bin", "a.ply"):
        xyz, rem, _ = toy_scan(rng, 500)
        write_scan(loose / name, xyz, rem)
    (loose / "notes.txt").write_text("not a scan")
    staged = stage_scans(loose, tmp_path / "out")
    assert [(s.sequence, s.frame) for s in staged] == [("00", "a"), ("00", "b")]
    assert all(s.path.exists() and s.path.parent.name == "velodyne" for s in staged)
    np.testing.assert_array_equal(read_scan(staged[1].path)[0], read_scan(loose / "b.bin")[0])

    kitti = write_toy_dataset(tmp_path / "kitti", {3: 2, 4: 1}, points=300)
    staged = stage_scans(kitti, tmp_path / "out2", sequences=[4])
    assert [(s.sequence, s.frame) for s in staged] == [("04", "000000")]
    assert not (tmp_path / "out2" / "sequences" / "04" / "labels").exists()  # labels not read

    write_scan(loose / "a.bin", *toy_scan(rng, 200)[:2])
    with pytest.raises(DatasetFileError, match="share the name 'a'"):
        stage_scans(loose, tmp_path / "out3")
    with pytest.raises(DatasetFileError, match="no scans"):
        stage_scans(tmp_path / "out3" / "sequences", tmp_path / "out4")
    with pytest.raises(DatasetFileError, match="not a folder"):
        stage_scans(tmp_path / "missing", tmp_path / "out5")


def test_pseudo_label_file_holds_raw_ids(tmp_path):
    lm = load_label_map()
    path = write_pseudo_labels(tmp_path, "00", "x", np.array([0, 1, 9, 0]), lm)
    sem, _ = read_labels(path, num_points=4)
    assert sem.tolist() == [0, lm.learning_map_inv[1], lm.learning_map_inv[9], 0]
    assert lm.to_train(sem).tolist() == [0, 1, 9, 0]


# --------------------------------------------------------------------------- the stage


@pytest.fixture(scope="module")
def real_folder(tmp_path_factory) -> Path:
    """Three unlabelled 'real' scans, a .bin, a .ply and a .pcd, shifted and re-scaled from the
    toy scenes (a small domain gap)."""
    folder = tmp_path_factory.mktemp("real")
    rng = np.random.default_rng(7)
    for name in ("000000.bin", "000001.ply", "000002.pcd"):
        xyz, rem, _ = toy_scan(rng, 2500)
        write_scan(folder / name, xyz * 1.05 + np.float32([0.5, 0.0, 0.1]), rem * 0.8)
    return folder


def _adapt_overrides(root: Path, real: Path) -> list[str]:
    return [
        *data_overrides(root),
        *SMALL_MODEL,
        "trainer.max_epochs=1",
        "data.num_workers=0",
        f"adapt.root={real}",
        "adapt.rounds=2",
        "adapt.samples_per_epoch=2",
        "adapt.tta=2",
        "model.log_images=0",
    ]


@pytest.fixture(scope="module")
def adapted_run(tmp_path_factory, real_folder) -> tuple[Path, Path, dict]:
    """A tiny simulated training followed by 2 adaptation rounds: (run dir, toy root, metrics)."""
    tmp = tmp_path_factory.mktemp("adapt")
    toy = write_toy_dataset(tmp / "toy", {0: 2, 1: 1}, points=2000)
    cfg = compose_train(_adapt_overrides(toy, real_folder), tmp / "run")
    return tmp / "run", toy, train(cfg)


@pytest.mark.slow
def test_train_with_adapt_root_end_to_end(adapted_run, real_folder, tmp_path):
    run, toy, metrics = adapted_run
    assert (run / "checkpoints" / "last.ckpt").is_file()  # the simulated stage ran first
    assert 0.0 < metrics["adapt/pseudo_coverage"] <= 1.0
    assert "adapt/val/miou" in metrics and "adapt/val_full/miou" in metrics

    # pseudo-labels: one raw id per ORIGINAL point of every scan, a good share labelled
    pseudo = run / "adapt" / "pseudo" / "sequences" / "00"
    lm = load_label_map()
    for scan in sorted(real_folder.iterdir()):
        n = read_scan(scan)[0].shape[0]
        sem, _ = read_labels(pseudo / "labels" / f"{scan.stem}.label", num_points=n)
        assert 0.2 < (lm.to_train(sem) != 0).mean() <= 1.0
    rounds = json.loads((run / "adapt" / "rounds.json").read_text())
    assert [r["round"] for r in rounds] == [0, 1] and all(r["scans"] == 3 for r in rounds)
    assert sorted(p.name for p in (run / "adapt" / "checkpoints").glob("*.ckpt")) == [
        "round_0.ckpt",
        "round_1.ckpt",
    ]

    # the adapted checkpoint loads with weights_only=True and evaluates on labelled scans
    adapted = run / "checkpoints" / ADAPTED_CHECKPOINT
    run_cfg = load_checkpoint(adapted).config
    assert run_cfg.adapt.root == str(real_folder) and run_cfg.adapt.source_ckpt.endswith(".ckpt")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "configs"), version_base="1.3"):
        ecfg = compose(
            config_name="evaluate",
            overrides=[
                f"ckpt_path={adapted}",
                f"data.root={toy}",
                "data.sequences={valid:[1]}",
                "device=cpu",
            ],
        )
    with open_dict(ecfg):
        ecfg.paths.output_dir = str(tmp_path / "eval")
    result = evaluate(ecfg)
    assert 0.0 <= result["miou"] <= 1.0


@pytest.mark.slow
def test_adapt_from_checkpoint_skips_simulated_training(adapted_run, real_folder, tmp_path):
    run, toy, _ = adapted_run
    scans = sorted(real_folder.iterdir())
    xyz = {p.stem: read_scan(p)[0] for p in scans}
    max_range = float(np.median(np.hypot(*np.concatenate(list(xyz.values()))[:, :2].T)))
    cfg = compose_train(
        [
            *_adapt_overrides(toy, real_folder),
            f"adapt.from_ckpt={run / 'checkpoints' / ADAPTED_CHECKPOINT}",
            "adapt.rounds=1",
            "adapt.samples_per_epoch=1",
            "adapt.tta=1",
            "adapt.mix=lasermix",
            "adapt.validate=false",
            "adapt.prior_slack=1.5",
            "adapt.prior=content",  # pseudo-labels under SemanticKITTI's class mix
            f"adapt.max_range={max_range}",
        ],
        tmp_path / "second",
    )
    metrics = train(cfg)
    assert "adapt/val_full/miou" not in metrics and "adapt/val/miou" not in metrics
    assert not (tmp_path / "second" / "checkpoints" / "last.ckpt").exists()
    assert (tmp_path / "second" / "checkpoints" / ADAPTED_CHECKPOINT).is_file()
    # the class-frequency prior capped every class at 1.5 x its SemanticKITTI share of voxels
    (first,) = json.loads((tmp_path / "second" / "adapt" / "rounds.json").read_text())
    lm = load_label_map()
    shares = dict(zip(lm.class_names, lm.class_shares(), strict=True))
    for name, c in first["classes"].items():
        assert c["kept"] <= np.floor(1.5 * shares[name] * first["voxels"]) + 1, name
    # adapt.max_range: no pseudo-label beyond it (0.1 m voxels: a margin for the voxel centres)
    labels = tmp_path / "second" / "adapt" / "pseudo" / "sequences" / "00" / "labels"
    near_labelled = 0
    for stem, points in xyz.items():
        sem, _ = read_labels(labels / f"{stem}.label", num_points=len(points))
        r = np.hypot(points[:, 0], points[:, 1])
        assert not sem[r > max_range + 0.2].any(), stem
        near_labelled += int((sem[r < max_range - 0.2] != 0).sum())
    assert near_labelled > 0
