"""Small SemanticKITTI-layout datasets written with pcseg's own writers, for fast tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pcseg.data.io import write_labels, write_scan

# Raw ids of a toy street: road, sidewalk, building, vegetation, car, pole.
TOY_CLASSES = (40, 48, 50, 70, 10, 80)


def toy_scan(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A toy scene whose classes are separable by geometry, so a network can learn it:
    ground (road |y| < 4, sidewalk beyond), a building wall, a bush, a car box, a pole.
    Returns xyz (n, 3) float32, remission (n,) float32, raw semantic ids (n,)."""
    parts = rng.choice(len(TOY_CLASSES), size=n, p=[0.3, 0.2, 0.2, 0.15, 0.1, 0.05])
    xyz = np.zeros((n, 3), dtype=np.float32)
    for c in range(len(TOY_CLASSES)):
        m = parts == c
        k = int(m.sum())
        if c == 0:  # road
            p = np.c_[rng.uniform(-20, 20, k), rng.uniform(-4, 4, k), np.full(k, -1.7)]
        elif c == 1:  # sidewalk, raised 15 cm
            side = rng.choice([-1, 1], k)
            p = np.c_[rng.uniform(-20, 20, k), side * rng.uniform(4, 7, k), np.full(k, -1.55)]
        elif c == 2:  # building facade
            p = np.c_[rng.uniform(-20, 20, k), np.full(k, 7.5), rng.uniform(-1.5, 6, k)]
        elif c == 3:  # bush: a noisy ball
            p = rng.normal([5, -6, -0.8], 0.6, (k, 3))
        elif c == 4:  # car: box surface
            p = np.c_[rng.uniform(-8, -4, k), rng.uniform(-3, -1.2, k), rng.uniform(-1.6, -0.2, k)]
        else:  # pole
            p = np.c_[rng.normal(10, 0.05, k), rng.normal(-5, 0.05, k), rng.uniform(-1.6, 3, k)]
        xyz[m] = p + rng.normal(0, 0.02, p.shape)
    remission = rng.uniform(0, 0.6, n).astype(np.float32)
    return xyz, remission, np.asarray(TOY_CLASSES)[parts]


def write_toy_dataset(
    root: Path, frames: dict[int, int], points: int = 3000, seed: int = 0
) -> Path:
    """``frames``: sequence id -> scan count. Writes ROOT/sequences/NN/{velodyne,labels}."""
    rng = np.random.default_rng(seed)
    for seq, count in frames.items():
        for i in range(count):
            xyz, rem, sem = toy_scan(rng, points)
            write_scan(root / "sequences" / f"{seq:02d}" / "velodyne" / f"{i:06d}.bin", xyz, rem)
            write_labels(root / "sequences" / f"{seq:02d}" / "labels" / f"{i:06d}.label", sem)
    return root
