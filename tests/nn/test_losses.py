"""Lovász-softmax: equals 1 - IoU on hard predictions, and combines with cross-entropy."""

from __future__ import annotations

import torch

from pcseg.nn.losses import CrossEntropyLovasz, lovasz_softmax


def iou_loss(pred: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean over classes present in labels of 1 - IoU, by counting."""
    losses = []
    for c in labels.unique().tolist():
        inter = ((pred == c) & (labels == c)).sum().item()
        union = ((pred == c) | (labels == c)).sum().item()
        losses.append(1.0 - inter / union)
    return sum(losses) / len(losses)


def test_equals_one_minus_iou_on_one_hot_probabilities():
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        labels = torch.randint(0, 4, (300,), generator=g)
        pred = torch.where(
            torch.rand(300, generator=g) < 0.6, labels, torch.randint(0, 5, (300,), generator=g)
        )
        probs = torch.nn.functional.one_hot(pred, 5).double()
        assert abs(lovasz_softmax(probs, labels).item() - iou_loss(pred, labels)) < 1e-12


def test_ignored_points_are_left_out():
    labels = torch.tensor([1, 1, 0, 0, 2])
    pred = torch.tensor([1, 2, 2, 1, 2])
    probs = torch.nn.functional.one_hot(pred, 3).double()
    got = lovasz_softmax(probs, labels, ignore_index=0).item()
    assert abs(got - iou_loss(pred[labels != 0], labels[labels != 0])) < 1e-12
    assert lovasz_softmax(probs[:0], labels[:0]).item() == 0.0


def test_combined_loss_is_cross_entropy_plus_lovasz_and_trains():
    g = torch.Generator().manual_seed(1)
    labels = torch.randint(1, 4, (200,), generator=g)
    logits = torch.randn(200, 4, generator=g, requires_grad=True)
    loss_fn = CrossEntropyLovasz(ignore_index=0, lovasz_weight=0.5)
    ce = torch.nn.functional.cross_entropy(logits, labels, ignore_index=0)
    lov = lovasz_softmax(torch.softmax(logits, 1), labels, ignore_index=0)
    torch.testing.assert_close(loss_fn(logits, labels), ce + 0.5 * lov)
    opt = torch.optim.SGD([logits], lr=5.0)
    first = loss_fn(logits, labels).item()
    for _ in range(40):
        opt.zero_grad()
        loss_fn(logits, labels).backward()
        opt.step()
    assert loss_fn(logits, labels).item() < 0.7 * first
