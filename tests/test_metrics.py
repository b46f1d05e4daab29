"""The SemanticKITTI IoU: hand-computed cases, the official algorithm as reference, accumulation
and cross-process merging, and the reports (table, JSON, PNG)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pcseg.data.labels import load_label_map
from pcseg.metrics import (
    SemanticKITTIIoU,
    iou_from_confusion,
    iou_table,
    metrics_to_dict,
    render_iou_table,
    save_confusion_png,
)


def official_ioueval(pred: np.ndarray, target: np.ndarray, n_classes: int, ignore: list[int]):
    """semantic-kitti-api's np_ioueval algorithm, restated: confusion by (pred, gt) pairs over
    ALL points, ignored gt columns zeroed, IoU with the 1e-15 epsilon, mean over the included
    classes, accuracy over the included prediction rows."""
    conf = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(conf, (pred, target), 1)
    conf[:, ignore] = 0
    include = np.array([c for c in range(n_classes) if c not in ignore])
    tp = np.diag(conf)
    fp = conf.sum(axis=1) - tp
    fn = conf.sum(axis=0) - tp
    union = tp + fp + fn + 1e-15
    iou = tp / union
    miou = (tp[include] / union[include]).mean()
    acc = tp.sum() / (tp[include].sum() + fp[include].sum() + 1e-15)
    return miou, iou[include], acc, conf


def pairs(*spec: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(pred, target, count) triples -> flat pred and target tensors."""
    pred = torch.cat([torch.full((n,), p) for p, _, n in spec])
    target = torch.cat([torch.full((n,), t) for _, t, n in spec])
    return pred, target


def test_hand_computed_ignore_and_prediction_of_unlabeled():
    # C = 4 (0 ignored; 1, 2, 3 evaluated). Class 3 appears nowhere.
    pred, target = pairs(
        (1, 1, 2),  # TP of 1
        (2, 1, 1),  # FN of 1, FP of 2
        (0, 1, 1),  # 'unlabeled' predicted on a car-like point: FN of 1, FP of no class
        (2, 2, 2),  # TP of 2
        (1, 0, 3),  # ground truth unlabeled: dropped (no FP of 1)
        (0, 0, 1),  # dropped
    )
    metric = SemanticKITTIIoU(num_classes=4, ignore_index=0)
    metric.update(pred, target)
    r = metric.compute()

    assert r.class_ids.tolist() == [1, 2, 3]
    torch.testing.assert_close(r.iou, torch.tensor([2 / 4, 2 / 3, 0.0], dtype=torch.float64))
    assert r.present.tolist() == [True, True, False]
    assert float(r.miou) == pytest.approx((0.5 + 2 / 3 + 0.0) / 3)  # absent class counts 0
    assert float(r.miou_present) == pytest.approx((0.5 + 2 / 3) / 2)
    assert float(r.acc) == pytest.approx(4 / 5)  # official: predictions of 0 leave the denominator
    torch.testing.assert_close(r.class_acc, torch.tensor([0.5, 1.0, 0.0], dtype=torch.float64))
    assert r.support.tolist() == [4, 2, 0]
    expected = torch.zeros(4, 4, dtype=torch.int64)
    expected[1, 1], expected[2, 1], expected[0, 1], expected[2, 2] = 2, 1, 1, 2
    assert torch.equal(r.confusion, expected)


def test_class_only_predicted_is_present_with_zero_iou():
    pred, target = pairs((1, 1, 3), (3, 1, 1))  # class 3 predicted once, never true
    r = SemanticKITTIIoU(num_classes=4, ignore_index=0)(pred, target)
    assert r.present.tolist() == [True, False, True]
    assert float(r.iou[2]) == 0.0 and float(r.iou[0]) == pytest.approx(3 / 4)
    assert float(r.miou_present) == pytest.approx((3 / 4 + 0.0) / 2)


def test_nothing_present_gives_nan_miou_present_and_zero_miou():
    r = iou_from_confusion(torch.zeros(4, 4, dtype=torch.int64), ignore_index=0)
    assert float(r.miou) == 0.0 and float(r.acc) == 0.0
    assert np.isnan(float(r.miou_present))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_official_algorithm_on_random_data(seed):
    rng = np.random.default_rng(seed)
    c, n = 20, 50_000
    # Skewed classes, some missing from ground truth and/or prediction; many unlabeled points.
    target = rng.choice(np.r_[0, 0, 0, np.arange(1, 15)], n)
    pred = np.where(rng.uniform(size=n) < 0.6, target, rng.choice(np.r_[0, np.arange(1, 17)], n))
    miou, iou, acc, conf = official_ioueval(pred, target, c, [0])

    metric = SemanticKITTIIoU(num_classes=c, ignore_index=0)
    for chunk in np.array_split(np.arange(n), 7):
        metric.update(torch.from_numpy(pred[chunk]), torch.from_numpy(target[chunk]))
    r = metric.compute()

    np.testing.assert_array_equal(r.confusion.numpy(), conf)
    np.testing.assert_allclose(r.iou.numpy(), iou, rtol=1e-12, atol=0)
    assert float(r.miou) == pytest.approx(miou, rel=1e-12)
    assert float(r.acc) == pytest.approx(acc, rel=1e-12)
    assert f"{float(r.miou):.6f}" == f"{miou:.6f}"
    assert r.present.sum() < c - 1  # the random data really has absent classes


def test_accumulating_updates_equals_one_update_on_concatenation():
    g = torch.Generator().manual_seed(0)
    preds = [torch.randint(0, 20, (n,), generator=g) for n in (10, 1000, 1, 333)]
    targets = [torch.randint(0, 20, p.shape, generator=g) for p in preds]
    many, one = SemanticKITTIIoU(), SemanticKITTIIoU()
    for p, t in zip(preds, targets, strict=True):
        many.update(p, t)
    one.update(torch.cat(preds), torch.cat(targets))
    assert torch.equal(many.compute().confusion, one.compute().confusion)
    assert float(many.compute().miou) == float(one.compute().miou)


def _halves():
    g = torch.Generator().manual_seed(1)
    pred = torch.randint(0, 20, (5000,), generator=g)
    # The halves see different classes, so averaging per-process IoUs would be wrong.
    target = torch.cat(
        [torch.randint(0, 8, (2500,), generator=g), torch.randint(8, 20, (2500,), generator=g)]
    )
    return pred, target


def test_merge_state_sums_confusions_not_ious():
    pred, target = _halves()
    whole, rank0, rank1 = SemanticKITTIIoU(), SemanticKITTIIoU(), SemanticKITTIIoU()
    whole.update(pred, target)
    rank0.update(pred[:2500], target[:2500])
    rank1.update(pred[2500:], target[2500:])
    per_rank = [float(iou_from_confusion(m.confusion).miou) for m in (rank0, rank1)]

    rank0.merge_state(rank1)
    merged = rank0.compute()
    assert torch.equal(merged.confusion, whole.compute().confusion)
    assert float(merged.miou) == float(whole.compute().miou)
    assert float(merged.miou) != pytest.approx(sum(per_rank) / 2)


def test_distributed_sync_sums_the_matrix():
    """compute() under DDP: torchmetrics gathers every process's state and applies
    dist_reduce_fx; here the gather is a stand-in that returns two processes' matrices."""
    pred, target = _halves()
    rank1 = SemanticKITTIIoU()
    rank1.update(pred[2500:], target[2500:])

    def gather(tensor: torch.Tensor, group=None) -> list[torch.Tensor]:
        return [tensor, rank1.confusion.clone()]

    rank0 = SemanticKITTIIoU(dist_sync_fn=gather, distributed_available_fn=lambda: True)
    rank0.update(pred[:2500], target[:2500])
    synced = rank0.compute()
    whole = SemanticKITTIIoU()(pred, target)
    assert torch.equal(synced.confusion, whole.confusion)
    assert float(synced.miou) == float(whole.miou)


def test_scores_defaults_reset_and_validation():
    metric = SemanticKITTIIoU()  # defaults from the label map
    assert (metric.num_classes, metric.ignore_index) == (20, 0)
    target = torch.tensor([1, 2, 3, 0])
    scores = torch.nn.functional.one_hot(torch.tensor([1, 2, 4, 5]), 20).float()
    r = metric(scores, target)  # (N, C) scores: argmax
    assert r.confusion[1, 1] == 1 and r.confusion[4, 3] == 1 and r.confusion[:, 0].sum() == 0
    metric.reset()
    assert metric.confusion.sum() == 0
    with pytest.raises(ValueError, match="lie in"):
        metric.update(torch.tensor([20]), torch.tensor([1]))
    with pytest.raises(ValueError, match="lie in"):
        metric.update(torch.tensor([1]), torch.tensor([-1]))
    with pytest.raises(TypeError):
        metric.update(torch.tensor([1.0]), torch.tensor([1]))


def test_out_of_range_ignore_index_drops_those_points():
    metric = SemanticKITTIIoU(num_classes=3, ignore_index=-100)
    r = metric(torch.tensor([0, 1, 2, 2]), torch.tensor([0, 1, -100, 2]))
    assert r.class_ids.tolist() == [0, 1, 2] and int(r.confusion.sum()) == 3
    assert float(r.miou) == 1.0


def test_update_handles_a_million_points_quickly():
    import time

    g = torch.Generator().manual_seed(0)
    pred = torch.randint(0, 20, (1_000_000,), generator=g)
    target = torch.randint(0, 20, (1_000_000,), generator=g)
    metric = SemanticKITTIIoU()
    start = time.perf_counter()
    metric.update(pred, target)
    assert time.perf_counter() - start < 2.0
    assert int(metric.confusion.sum()) == int((target != 0).sum())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    g = torch.Generator().manual_seed(0)
    pred, target = (
        torch.randint(0, 20, (100_000,), generator=g),
        torch.randint(0, 20, (100_000,), generator=g),
    )
    cpu = SemanticKITTIIoU()(pred, target)
    gpu = SemanticKITTIIoU().cuda()(pred.cuda(), target.cuda())
    assert torch.equal(gpu.confusion.cpu(), cpu.confusion)
    assert float(gpu.miou) == float(cpu.miou)


@pytest.fixture
def result_with_absent_class():
    pred, target = pairs((1, 1, 5), (2, 1, 1), (2, 2, 4), (9, 9, 2))
    return SemanticKITTIIoU()(pred, target)


def test_table_marks_absent_classes_na(result_with_absent_class):
    names = load_label_map().class_names
    text = render_iou_table(result_with_absent_class, names, width=120)
    lines = {line.split("│")[1].strip(): line for line in text.splitlines() if "│" in line}
    assert "n/a" in lines["trunk"] and "n/a" not in lines["car"]
    assert "83.3" in lines["car"]  # 5 / 6
    r = result_with_absent_class
    assert f"{100 * float(r.miou):.1f}" in lines["mIoU (official, 19 classes)"]
    assert "3/19" in text and f"{100 * float(r.miou_present):.1f}" in text
    assert len(iou_table(r, names).rows) == 19 + 3


def test_metrics_dict_round_trips_through_json(result_with_absent_class):
    names = load_label_map().class_names
    d = metrics_to_dict(result_with_absent_class, names)
    assert json.loads(json.dumps(d)) == d
    assert d["classes"]["trunk"] == {"iou": None, "acc": None, "support": 0}
    assert d["classes"]["car"]["iou"] == pytest.approx(5 / 6)
    assert set(d["classes"]) == set(names[1:])
    assert np.array_equal(np.array(d["confusion"]), result_with_absent_class.confusion.numpy())


def test_confusion_png_is_written(result_with_absent_class, tmp_path):
    from matplotlib.image import imread

    path = save_confusion_png(
        result_with_absent_class.confusion, load_label_map().class_names, tmp_path / "c" / "cm.png"
    )
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = imread(path)
    assert image.shape[0] > 500 and image.shape[1] > 500
    assert image[..., :3].std() > 0.05  # not a blank canvas
