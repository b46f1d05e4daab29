"""Test-time augmentation: average the network's class probabilities over rotated/flipped views.

A LiDAR scene has no preferred heading and training rotates every scan about z (and mirrors
it), yet the continuous-conv kernels see neighbour offsets in the sensor frame, so the network
is not exactly invariant: its predictions on a rotated copy differ a little. Averaging over a
few views smooths those differences out.

View ``k`` of ``n`` (:func:`tta_views`): view 0 is the identity; views 1..n-1 rotate about the
sensor's vertical axis (z through the origin, as ``RandomRotateZ`` does in training) by an angle
stratified over the circle (``2*pi*k/n`` plus a seeded jitter of less than half a step) and mirror
x with a seeded coin flip (mirroring y too would only add a rotation by pi). The transform is
applied the way training applies augmentation: to the voxel coordinates, after voxelisation and
before the features, which are then recomputed from the transformed coordinates
(:func:`pcseg.data.features.compute_features`), so features of absolute x, y are correct for every
view. The voxels themselves, and so the map back to every original point, are unchanged: every
view predicts the same rows, and view results are averaged row by row.

What is averaged: softmax probabilities, not logits. Probabilities are on one scale for every
view; a view with a confidently wrong large logit cannot outvote the others as it can in a logit
mean. ``tta_logits`` returns ``log(mean_k softmax(logits_k))`` so that argmax gives the TTA label
and ``softmax`` of the result gives the mean probability exactly. ``n = 1`` returns the network's
own logits untouched (bit-identical to no TTA).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from pcseg.data.features import FEATURE_CHANNELS, compute_features
from pcseg.structures import PointBatch

__all__ = ["TTAView", "transform_coord", "tta_batch", "tta_logits", "tta_views"]


class TTAView(NamedTuple):
    """One test-time view: rotate by ``angle`` (rad) about z, then mirror x if ``flip_x``."""

    angle: float
    flip_x: bool

    @property
    def is_identity(self) -> bool:
        return self.angle == 0.0 and not self.flip_x


def tta_views(n: int, seed: int = 0) -> list[TTAView]:
    """The ``n`` views of TTA with ``seed``: view 0 the identity, then stratified angles.

    View k >= 1: angle ``2*pi*k/n + u_k`` with ``u_k`` uniform in ``(-pi/(2n), pi/(2n))`` and x
    mirrored with probability 1/2, both drawn from ``numpy.random.default_rng(seed)``.
    """
    if n < 1:
        raise ValueError(f"tta must be >= 1 views, got {n}")
    rng = np.random.default_rng(seed)
    views = [TTAView(0.0, False)]
    for k in range(1, n):
        jitter = rng.uniform(-math.pi / (2 * n), math.pi / (2 * n))
        views.append(TTAView(float(2 * math.pi * k / n + jitter), bool(rng.random() < 0.5)))
    return views


def transform_coord(coord: np.ndarray, view: TTAView) -> np.ndarray:
    """Apply ``view`` to ``coord`` (P, 3) float32 -> (P, 3) float32, in numpy float32 exactly as
    :class:`pcseg.data.transforms.RandomRotateZ` and ``RandomFlip`` do in training."""
    if view.is_identity:
        return coord
    c, s = np.cos(view.angle), np.sin(view.angle)
    rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=np.float32)
    out = np.asarray(coord, dtype=np.float32) @ rot.T
    if view.flip_x:
        out = out * np.array([-1.0, 1.0, 1.0], dtype=np.float32)
    return out.astype(np.float32, copy=False)


def _feature_columns(names: Sequence[str]) -> dict[str, slice]:
    columns, start = {}, 0
    for name in names:
        if name not in FEATURE_CHANNELS:
            raise ValueError(f"unknown feature {name!r}; known: {sorted(FEATURE_CHANNELS)}")
        columns[name] = slice(start, start + FEATURE_CHANNELS[name])
        start += FEATURE_CHANNELS[name]
    return columns


def tta_batch(batch: PointBatch, view: TTAView, features: Sequence[str]) -> PointBatch:
    """``batch`` seen from ``view``: coordinates transformed, features recomputed from them.

    Every feature of :mod:`pcseg.data.features` is a function of the coordinates and the
    remission; the remission is read back from its columns of ``batch.feat`` (it does not move
    with the view). ``features``: the names ``batch.feat`` was built from, in order (the run's
    ``data.features``); a feature width that does not match raises ``ValueError``. The identity
    view returns ``batch`` itself. Same rows, offsets and inverse: results map back unchanged.
    """
    if view.is_identity:
        return batch
    columns = _feature_columns(features)
    width = sum(FEATURE_CHANNELS[n] for n in features)
    if batch.feat.shape[1] != width:
        raise ValueError(
            f"batch has {batch.feat.shape[1]} feature channels but features {list(features)} "
            f"make {width}"
        )
    coord = transform_coord(batch.coord.detach().cpu().numpy(), view)
    if "remission" in columns:
        remission = batch.feat[:, columns["remission"]].detach().cpu().numpy().reshape(-1)
    else:  # no feature reads it
        remission = np.zeros(coord.shape[0], dtype=np.float32)
    feat = compute_features(coord, remission, features)
    device = batch.coord.device
    return replace(
        batch,
        coord=torch.from_numpy(coord).to(device, batch.coord.dtype),
        feat=torch.from_numpy(feat).to(device, batch.feat.dtype),
    )


@torch.no_grad()
def tta_logits(
    model: nn.Module,
    batch: PointBatch,
    n: int = 1,
    seed: int = 0,
    features: Sequence[str] | None = None,
) -> torch.Tensor:
    """Scores (N, C) of ``model`` on ``batch`` with ``n``-view test-time augmentation.

    n = 1: ``model(batch)``, the logits, untouched. n > 1: ``log(mean_k softmax(model(view_k)))``
    over :func:`tta_views` ``(n, seed)``; argmax is the TTA prediction and softmax the mean
    probability. ``features``: the feature names of ``batch.feat`` (needed for n > 1, see
    :func:`tta_batch`). ``model`` should be in eval mode; rows follow ``batch``'s points, so
    ``full_resolution_predictions`` carries the result to every original point.
    """
    if n < 1:
        raise ValueError(f"tta must be >= 1 views, got {n}")
    if n == 1:
        return model(batch)
    if features is None:
        raise ValueError("tta > 1 needs the feature names of batch.feat to recompute them")
    total: torch.Tensor | None = None
    for view in tta_views(n, seed):
        probs = torch.softmax(model(tta_batch(batch, view, features)).float(), dim=1)
        total = probs if total is None else total.add_(probs)
    assert total is not None
    return torch.log(total / n)
