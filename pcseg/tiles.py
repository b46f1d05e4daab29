"""Split a large cloud into overlapping xy tiles so the network never sees more than it can hold.

An aggregated map of millions of points does not fit one forward pass (the network's memory grows
with the point count). :func:`plan_tiles` cuts the cloud's xy extent into square cores of
``size`` metres; the network runs on each core plus a margin of ``overlap`` metres on every side
(the context), and labels only the core's points. Cores partition the points, so every point is
labelled exactly once, by the tile whose core contains it, and always with context on all sides
up to ``overlap`` metres. A tile whose context still has more than ``max_points`` points (a dense
patch) is split into four quarter cores, recursively; a quarter's margin is at most its own side,
so the context shrinks with the core and every pass stays under ``max_points`` (short of a core
of one point or identical points: voxelised clouds have none). Dense patches thus trade margin
width for memory.

What tiling preserves: the rows are those of the whole cloud (callers voxelise and featurise the
whole cloud first, then tile the voxels), each tile's rows stay in the cloud's order, and a
single tile covering everything is the untiled pass. What it cannot preserve: anything the
network computes from the whole cloud (the per-cloud max-pooled context of pcseg's networks),
and neighbourhoods that reach past the margin. So a point's prediction equals the untiled one
exactly only for a network whose receptive field is local and smaller than the margin around it.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["Tile", "plan_tiles"]

#: Deepest quad split of one grid cell (4**12 sub-tiles: far beyond any real density).
_MAX_DEPTH = 12


class Tile(NamedTuple):
    """rows: (T,) int64 sorted rows of the cloud the network sees (core and margin);
    core: (T,) bool, the rows this tile labels; box: (x0, y0, x1, y1) of the core, metres;
    margin: metres of context around the box (``overlap``, less in split dense patches)."""

    rows: np.ndarray
    core: np.ndarray
    box: tuple[float, float, float, float]
    margin: float


def plan_tiles(
    xy: np.ndarray, size: float, overlap: float, max_points: int | None = None
) -> list[Tile]:
    """Tiles covering ``xy`` (N, 2) (or (N, 3); z is ignored).

    size: core side (m); overlap: margin (m) around each core, ``0 <= overlap <= size``;
    max_points: split tiles whose context has more points (None: never split).
    Every row lies in exactly one tile's core (a partition); cores and contexts never are empty.
    """
    xy = np.asarray(xy, dtype=np.float64)
    if xy.ndim != 2 or xy.shape[1] not in (2, 3) or xy.shape[0] == 0:
        raise ValueError(f"xy must be a non-empty (N, 2) or (N, 3) array, got {xy.shape}")
    xy = xy[:, :2]
    if not size > 0:
        raise ValueError(f"tile size must be positive, got {size}")
    if not 0 <= overlap <= size:
        raise ValueError(f"tile overlap must lie in [0, size={size}], got {overlap}")
    if max_points is not None and max_points < 1:
        raise ValueError(f"max_points must be >= 1 or None, got {max_points}")

    lo = xy.min(axis=0)
    cells = np.floor((xy - lo) / size).astype(np.int64)
    ny = int(cells[:, 1].max()) + 1
    key = cells[:, 0] * ny + cells[:, 1]
    order = np.argsort(key, kind="stable")
    keys, starts = np.unique(key[order], return_index=True)
    members = dict(zip(keys.tolist(), np.split(order, starts[1:]), strict=True))

    tiles: list[Tile] = []
    for k in keys.tolist():
        cx, cy = divmod(k, ny)
        # overlap <= size: the context lies within the 3 x 3 block of cells around this one
        near = [
            members[(cx + dx) * ny + cy + dy]
            for dx in (-1, 0, 1)
            for dy in (-1, 0, 1)
            if 0 <= cy + dy < ny and (cx + dx) * ny + cy + dy in members
        ]
        x0, y0 = lo[0] + cx * size, lo[1] + cy * size
        box = (x0, y0, x0 + size, y0 + size)
        _tile(xy, np.sort(members[k]), np.concatenate(near), box, overlap, max_points, 0, tiles)
    return tiles


def _tile(
    xy: np.ndarray,
    core_rows: np.ndarray,
    candidates: np.ndarray,
    box: tuple[float, float, float, float],
    overlap: float,
    max_points: int | None,
    depth: int,
    out: list[Tile],
) -> None:
    """Append the tile of ``core_rows`` (sorted) with context from ``candidates``, or its split."""
    x0, y0, x1, y1 = box
    p = xy[candidates]
    inside = (
        (p[:, 0] >= x0 - overlap)
        & (p[:, 0] < x1 + overlap)
        & (p[:, 1] >= y0 - overlap)
        & (p[:, 1] < y1 + overlap)
    )
    # the union keeps every core row in its own context whatever floating point says
    rows = np.union1d(candidates[inside], core_rows)
    too_big = max_points is not None and rows.shape[0] > max_points
    if not too_big or core_rows.shape[0] <= 1 or depth >= _MAX_DEPTH:
        out.append(Tile(rows, np.isin(rows, core_rows, assume_unique=True), box, overlap))
        return
    xm, ym = (x0 + x1) / 2, (y0 + y1) / 2
    right = xy[core_rows, 0] >= xm
    upper = xy[core_rows, 1] >= ym
    quarters = (
        (~right & ~upper, (x0, y0, xm, ym)),
        (right & ~upper, (xm, y0, x1, ym)),
        (~right & upper, (x0, ym, xm, y1)),
        (right & upper, (xm, ym, x1, y1)),
    )
    margin = min(overlap, (x1 - x0) / 2)  # at most the quarter's side: context shrinks too
    for mask, sub in quarters:
        if mask.any():
            _tile(xy, core_rows[mask], rows, sub, margin, max_points, depth + 1, out)
