"""Per-point input features for the network, by name.

The paper feeds (x, y, z, remission, range); the data config lists the names, so a model's
input width is ``feature_channels(names)`` and adding a feature touches only this module.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

FEATURE_CHANNELS = {"xyz": 3, "remission": 1, "range": 1, "height": 1}


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
