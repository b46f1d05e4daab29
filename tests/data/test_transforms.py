"""Augmentations: the geometry they promise, reproducible from the generator."""

from __future__ import annotations

import numpy as np
import pytest

from pcseg.data.transforms import Compose, RandomFlip, RandomJitter, RandomRotateZ, RandomScale


@pytest.fixture
def coord() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(500, 3)).astype(np.float32) * 10


def test_rotation_keeps_z_and_horizontal_distances(coord):
    out = RandomRotateZ()(coord, np.random.default_rng(1))
    np.testing.assert_allclose(out[:, 2], coord[:, 2])
    np.testing.assert_allclose(
        np.linalg.norm(out[:, :2], axis=1), np.linalg.norm(coord[:, :2], axis=1), rtol=1e-5
    )
    assert not np.allclose(out, coord)


def test_flip_mirrors_only_horizontal_axes(coord):
    seen = set()
    for seed in range(20):
        out = RandomFlip(p=0.5)(coord, np.random.default_rng(seed))
        signs = tuple(np.sign(out[0, :2] / coord[0, :2]).astype(int))
        np.testing.assert_array_equal(np.abs(out), np.abs(coord))
        np.testing.assert_array_equal(out[:, 2], coord[:, 2])
        seen.add(signs)
    assert seen == {(1, 1), (-1, 1), (1, -1), (-1, -1)}


def test_scale_within_bounds(coord):
    out = RandomScale(0.9, 1.1)(coord, np.random.default_rng(2))
    ratio = out / coord
    assert np.allclose(ratio, ratio[0, 0]) and 0.9 <= ratio[0, 0] <= 1.1
    with pytest.raises(ValueError):
        RandomScale(1.2, 1.1)


def test_jitter_is_clipped(coord):
    out = RandomJitter(sigma=1.0, clip=0.05)(coord, np.random.default_rng(3))
    delta = np.abs(out - coord)
    assert delta.max() <= 0.05 + 1e-5 and delta.mean() > 0.01


def test_compose_is_reproducible(coord):
    aug = Compose([RandomRotateZ(), RandomFlip(), RandomScale(), RandomJitter()])
    a = aug(coord, np.random.default_rng(7))
    b = aug(coord, np.random.default_rng(7))
    c = aug(coord, np.random.default_rng(8))
    assert a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
