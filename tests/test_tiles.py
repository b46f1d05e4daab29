"""Tiles for large clouds: a partition of the points into cores, complete margins, bounded size."""

from __future__ import annotations

import numpy as np
import pytest

from pcseg.tiles import plan_tiles


def _cloud(n: int = 4000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    dense = rng.normal([5.0, 5.0], 1.0, (n // 2, 2))  # a dense patch: forces quad splits
    sparse = rng.uniform(-20.0, 30.0, (n - n // 2, 2))
    return np.concatenate([dense, sparse]).astype(np.float32)


@pytest.mark.parametrize("max_points", [None, 400])
def test_cores_partition_the_points_and_contexts_are_complete(max_points):
    xy = _cloud()
    size, margin = 8.0, 2.0
    tiles = plan_tiles(xy, size, margin, max_points)
    owner = np.full(len(xy), -1)
    for t, tile in enumerate(tiles):
        assert tile.rows.dtype == np.int64 and np.all(np.diff(tile.rows) > 0)  # sorted, unique
        assert tile.core.any()
        core_rows = tile.rows[tile.core]
        assert (owner[core_rows] == -1).all(), "a point lies in two cores"
        owner[core_rows] = t
        # every point within the margin of the core box is in the context (brute force)
        x0, y0, x1, y1 = tile.box
        assert 0 < tile.margin <= margin
        overlap = tile.margin
        near = np.flatnonzero(
            (xy[:, 0] >= x0 - overlap)
            & (xy[:, 0] < x1 + overlap)
            & (xy[:, 1] >= y0 - overlap)
            & (xy[:, 1] < y1 + overlap)
        )
        assert np.isin(near, tile.rows).all()
        # and nothing farther (beyond float slack) is
        p = xy[tile.rows]
        slack = 1e-4
        assert (p[:, 0] >= x0 - overlap - slack).all() and (p[:, 0] < x1 + overlap + slack).all()
        assert (p[:, 1] >= y0 - overlap - slack).all() and (p[:, 1] < y1 + overlap + slack).all()
    assert (owner >= 0).all(), "a point is in no core"
    if max_points is not None:
        assert len(tiles) > len(plan_tiles(xy, size, margin, None))  # the dense patch split
        assert max(len(t.rows) for t in tiles) <= max_points


def test_one_tile_when_the_cloud_fits():
    xy = _cloud(500)
    (tile,) = plan_tiles(xy, 1000.0, 10.0)
    assert np.array_equal(tile.rows, np.arange(500)) and tile.core.all()


def test_bad_arguments_are_refused():
    xy = _cloud(100)
    with pytest.raises(ValueError, match="overlap"):
        plan_tiles(xy, 5.0, 6.0)
    with pytest.raises(ValueError, match="size"):
        plan_tiles(xy, 0.0, 0.0)
    with pytest.raises(ValueError, match="non-empty"):
        plan_tiles(np.zeros((0, 2)), 5.0, 1.0)
