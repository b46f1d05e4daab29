"""Training-time augmentation of one scan, in the sensor frame.

Each transform is a small callable ``t(coord, rng) -> coord`` on ``coord`` (P, 3) float32 and a
``numpy.random.Generator``; labels and remission are unchanged by all of them. They are plain
classes so Hydra configs build them with ``_target_`` and tests call them directly. The
dataset draws ``rng`` from torch's per-worker seed, so ``seed_everything(workers=True)``
makes augmentation reproducible.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class RandomRotateZ:
    """Rotate about the vertical axis by an angle uniform in ``[-max_angle, max_angle]`` (rad);
    the default covers the full circle: a LiDAR scene has no preferred heading."""

    def __init__(self, max_angle: float = np.pi) -> None:
        self.max_angle = float(max_angle)

    def __call__(self, coord: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        a = rng.uniform(-self.max_angle, self.max_angle)
        c, s = np.cos(a), np.sin(a)
        rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=np.float32)
        return coord @ rot.T


class RandomFlip:
    """Mirror x and/or y, each with probability ``p`` (z never: the ground stays down)."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = float(p)

    def __call__(self, coord: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        sign = np.where(rng.random(2) < self.p, -1.0, 1.0).astype(np.float32)
        return coord * np.array([sign[0], sign[1], 1.0], dtype=np.float32)


class RandomScale:
    """Scale all coordinates by one factor uniform in ``[low, high]``."""

    def __init__(self, low: float = 0.95, high: float = 1.05) -> None:
        if not 0 < low <= high:
            raise ValueError(f"need 0 < low <= high, got low={low}, high={high}")
        self.low, self.high = float(low), float(high)

    def __call__(self, coord: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return coord * np.float32(rng.uniform(self.low, self.high))


class RandomJitter:
    """Add Gaussian noise of std ``sigma`` (m) to every coordinate, clipped to ``±clip``."""

    def __init__(self, sigma: float = 0.01, clip: float = 0.05) -> None:
        self.sigma, self.clip = float(sigma), float(clip)

    def __call__(self, coord: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        noise = np.clip(rng.normal(0.0, self.sigma, coord.shape), -self.clip, self.clip)
        return coord + noise.astype(np.float32)


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: Sequence) -> None:
        self.transforms = list(transforms)

    def __call__(self, coord: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        for t in self.transforms:
            coord = t(coord, rng)
        return coord.astype(np.float32, copy=False)

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"
