"""Segmentation losses: cross-entropy plus the Lovász-softmax surrogate of the IoU.

Cross-entropy weighs points; the benchmark weighs classes (mIoU). The Lovász-softmax loss
(Berman, Rannen Triki and Blaschko, CVPR 2018) is the convex (Lovász) extension of the
per-class Jaccard loss evaluated on the softmax probabilities, so its gradient pushes directly
on the IoU of each class, rare ones included. LiDAR segmentation networks commonly train on the
sum of both.
"""

from __future__ import annotations

import torch
from torch import nn


def lovasz_grad(fg_sorted: torch.Tensor) -> torch.Tensor:
    """Gradient of the Lovász extension of the Jaccard loss w.r.t. sorted errors.

    fg_sorted (P,) float: ground-truth membership (0/1) in the order of decreasing error.
    Returns (P,): J(1..i) - J(1..i-1), with J(1..i) the Jaccard loss when the i largest errors
    are counted as mistakes.
    """
    gts = fg_sorted.sum()
    intersection = gts - fg_sorted.cumsum(0)
    union = gts + (1.0 - fg_sorted).cumsum(0)
    jaccard = 1.0 - intersection / union
    if fg_sorted.numel() > 1:
        jaccard[1:] = jaccard[1:] - jaccard[:-1]
    return jaccard


def lovasz_softmax(
    probs: torch.Tensor, labels: torch.Tensor, ignore_index: int | None = None
) -> torch.Tensor:
    """Mean over the classes present in ``labels`` of the Lovász extension of 1 - IoU.

    probs (P, C) float softmax probabilities; labels (P,) int64. Points labelled
    ``ignore_index`` are left out. Returns a scalar (0 when no point is left).
    """
    if ignore_index is not None:
        keep = labels != ignore_index
        probs, labels = probs[keep], labels[keep]
    if labels.numel() == 0:
        return probs.sum() * 0.0
    losses = []
    for c in torch.unique(labels).tolist():
        fg = (labels == c).to(probs.dtype)
        errors = (fg - probs[:, c]).abs()
        errors_sorted, perm = torch.sort(errors, descending=True)
        losses.append(torch.dot(errors_sorted, lovasz_grad(fg[perm])))
    return torch.stack(losses).mean()


class CrossEntropyLovasz(nn.Module):
    """``ce(logits, y; class weights) + lovasz_weight * lovasz_softmax(softmax(logits), y)``.

    Args:
        weight: (C,) class weights for the cross-entropy term, or None.
        ignore_index: label left out of both terms ('unlabeled').
        lovasz_weight: factor of the Lovász term; 0 gives plain cross-entropy.
    """

    def __init__(
        self,
        weight: torch.Tensor | None = None,
        ignore_index: int = -100,
        lovasz_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.ce = nn.CrossEntropyLoss(weight=weight, ignore_index=ignore_index)
        self.ignore_index = ignore_index
        self.lovasz_weight = float(lovasz_weight)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """logits (P, C), labels (P,) int64 -> scalar loss."""
        loss = self.ce(logits, labels)
        if self.lovasz_weight:
            probs = torch.softmax(logits.float(), dim=1)
            loss = loss + self.lovasz_weight * lovasz_softmax(probs, labels, self.ignore_index)
        return loss
