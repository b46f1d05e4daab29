"""Per-point input features for the network, by name.

The paper feeds (x, y, z, remission, range); the data config lists the names, so a model's
input width is ``feature_channels(names)`` and adding a feature touches only this module.

Scans without intensity: many ``.pcd``/``.ply`` files carry none (the reader then gives zeros)
and some sensors write a constant. :func:`remission_missing` detects such a scan; the dataset
warns once per file and feeds it remission :data:`REMISSION_FREE_VALUE` everywhere, which is
exactly what :class:`~pcseg.data.transforms.RandomRemissionDrop` feeds the network in
training, so a remission-free scan at inference is a case the model has seen. A model that
should never depend on intensity: ``data.features=[height,range]`` (geometry only).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

FEATURE_CHANNELS = {"xyz": 3, "remission": 1, "range": 1, "height": 1}
#: Remission of every point of a scan without intensity, in training (remission dropout) and at
#: inference alike: the mean remission of LiDAR scans (SemanticKITTI 0.29, the embedded
#: dataset 0.31), i.e. mean imputation. The networks' input normalisation
#: (:class:`pcseg.nn.pccn.InputNorm`) leaves such a scan-constant channel out of its statistics
#: and normalises it with the running ones in training as in evaluation, so the mean maps to ~0
#: in both. (With plain BatchNorm and a fill of 0, a zeroed scan read as "dark everywhere",
#: i.e. car: 0.2 % mIoU on real scans.) Intensities on another scale (e.g. 0-255) need their
#: own mean here.
REMISSION_FREE_VALUE = 0.3


def remission_missing(remission: np.ndarray) -> bool:
    """True when a scan's remission (P,) carries no information: absent (read as zeros) or the
    same value at every point. A real sensor's intensity always varies across a scan."""
    return remission.size == 0 or bool(remission.min() == remission.max())


def feature_channels(names: Sequence[str]) -> int:
    """Total channels C of the features ``names``."""
    _check(names)
    return sum(FEATURE_CHANNELS[n] for n in names)


def _check(names: Sequence[str]) -> None:
    unknown = [n for n in names if n not in FEATURE_CHANNELS]
    if unknown:
        raise ValueError(f"unknown features {unknown}; choose from {sorted(FEATURE_CHANNELS)}")


def compute_features(coord: np.ndarray, remission: np.ndarray, names: Sequence[str]) -> np.ndarray:
    """coord (N, 3), remission (N,) -> (N, C) float32 in the order of ``names``.

    ``range`` is the distance to the sensor in the horizontal plane plus height (Euclidean
    norm); ``height`` is z alone.
    """
    _check(names)
    columns = {
        "xyz": lambda: coord,
        "remission": lambda: remission[:, None],
        "range": lambda: np.linalg.norm(coord, axis=1, keepdims=True),
        "height": lambda: coord[:, 2:3],
    }
    if not names:
        return np.zeros((coord.shape[0], 0), dtype=np.float32)
    return np.concatenate([columns[n]() for n in names], axis=1).astype(np.float32)
