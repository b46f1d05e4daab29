"""Training-time augmentation of one scan, in the sensor frame.

Geometric transforms are small callables ``t(coord, rng) -> coord`` on ``coord`` (P, 3) float32
and a ``numpy.random.Generator``; :class:`RandomRemissionDrop` changes the remission channel
instead (``t.scan(coord, remission, rng) -> (coord, remission)``, remission (P,) float32).
Labels are unchanged by all of them. They are plain classes so Hydra configs build them with
``_target_`` (one ``data.augment.transforms`` list) and tests call them directly. The dataset
calls :meth:`Compose.scan`, which gives every transform the part of the scan it works on. The
dataset draws ``rng`` from torch's per-worker seed, so ``seed_everything(workers=True)`` makes
augmentation reproducible.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pcseg.data.features import REMISSION_FREE_VALUE


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


class RandomRemissionDrop:
    """With probability ``p`` per scan, replace the whole remission channel by
    :data:`~pcseg.data.features.REMISSION_FREE_VALUE` (0.3, the mean): the scan looks exactly like one
    whose file has no (or a constant) intensity, which the dataset feeds the network the same
    way at training and inference time. The network thus learns geometry-only cues instead of
    collapsing when a ``.pcd``/``.ply`` scan carries no intensity.

    ``p = 0.25`` (the default config's choice, not tuned): one scan in four is remission-free,
    so the 7-epoch ``make train`` run (100 scans per epoch) takes ~175 geometry-only steps,
    enough to learn that mode, while three steps in four keep the remission cue the
    with-intensity path needs. It is drawn after the geometric transforms, so it leaves their
    random draws unchanged. Coordinates and labels are never changed.
    """

    def __init__(self, p: float = 0.25) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must lie in [0, 1], got {p}")
        self.p = float(p)

    def scan(
        self, coord: np.ndarray, remission: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """coord (P, 3), remission (P,) -> the same coord, remission dropped or unchanged."""
        if rng.random() < self.p:
            remission = np.full_like(remission, REMISSION_FREE_VALUE, dtype=np.float32)
        return coord, remission

    def __repr__(self) -> str:
        return f"RandomRemissionDrop(p={self.p})"


def _scan_step(
    t, coord: np.ndarray, remission: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Apply one transform to a scan: its ``scan`` method if it has one, else ``t(coord, rng)``."""
    if hasattr(t, "scan"):
        return t.scan(coord, remission, rng)
    return t(coord, rng), remission


class Compose:
    """Apply transforms in order.

    ``scan(coord, remission, rng)`` applies every transform (the dataset's call);
    calling it, ``compose(coord, rng)``, applies the geometric ones only and returns coord.
    """

    def __init__(self, transforms: Sequence) -> None:
        self.transforms = list(transforms)

    def scan(
        self, coord: np.ndarray, remission: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """coord (P, 3) float32, remission (P,) float32 -> both augmented, float32."""
        for t in self.transforms:
            coord, remission = _scan_step(t, coord, remission, rng)
        return coord.astype(np.float32, copy=False), remission.astype(np.float32, copy=False)

    def __call__(self, coord: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        for t in self.transforms:
            if not hasattr(t, "scan"):
                coord = t(coord, rng)
        return coord.astype(np.float32, copy=False)

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"
