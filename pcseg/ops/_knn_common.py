"""Helpers shared by the KNN backends: per-cloud row ranges, padded outputs, tie order.

Every backend receives offsets that are already validated (``(B,) int64`` cumulative END
indices, ``offset[-1]`` equal to the row count) and returns ``(idx, dist2)`` in the layout
documented by :func:`pcseg.ops.knn.knn`: ``idx (M, K) int64`` global support rows, ``-1``
padding, ``dist2 (M, K)`` in the input dtype, ``+inf`` padding, ascending by ``(dist2, idx)``.
"""

from __future__ import annotations

import numpy as np
import torch

from pcseg.structures import offset_to_starts

PAD_INDEX = -1
PAD_DIST2 = float("inf")


def cloud_ranges(
    query_offset: torch.Tensor, support_offset: torch.Tensor
) -> list[tuple[int, int, int, int]]:
    """(B,) query and support offsets -> one ``(q_start, q_end, s_start, s_end)`` per cloud.

    Python ints, because every backend slices per cloud on the host: one device sync here
    instead of one per cloud.
    """
    q_start = offset_to_starts(query_offset).tolist()
    s_start = offset_to_starts(support_offset).tolist()
    return list(zip(q_start, query_offset.tolist(), s_start, support_offset.tolist(), strict=True))


def empty_result(
    m: int, k: int, dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fully padded outputs: idx (M, K) int64 of -1, dist2 (M, K) ``dtype`` of +inf."""
    idx = torch.full((m, k), PAD_INDEX, dtype=torch.int64, device=device)
    dist2 = torch.full((m, k), PAD_DIST2, dtype=dtype, device=device)
    return idx, dist2


def order_ties(idx: torch.Tensor, dist2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Reorder, IN PLACE, the rows that hold equal distances by ``(dist2, idx)``.

    idx (M, K) int64, dist2 (M, K), each row already ascending in dist2; both freshly made by
    a backend (they are modified and returned). Tree backends return equidistant neighbours
    (duplicate points, symmetric grids) in traversal order; sorting those rows by index makes
    the order independent of the traversal. Only rows with a tie are touched: on a real scan
    they are a handful, so the cost is one comparison pass, not a sort of every row. Padding
    (+inf, -1) stays at the end of its row.
    """
    m, k = dist2.shape
    if k < 2 or m == 0:
        return idx, dist2
    if dist2.device.type == "cpu":
        _order_ties_numpy(idx.numpy(), dist2.numpy())
        return idx, dist2
    # Compare neighbours in the flat, contiguous buffer (a strided (M, K-1) comparison is
    # several times slower); pairs that straddle two rows are discarded afterwards.
    flat = dist2.reshape(-1)
    pos = ((flat[1:] == flat[:-1]) & torch.isfinite(flat[1:])).nonzero().squeeze(1)
    pos = pos[pos % k != k - 1]
    if pos.numel() == 0:
        return idx, dist2
    rows = torch.unique(pos // k)
    sub_idx, sub_d = idx[rows], dist2[rows]
    # Lexicographic sort: by index first, then a stable sort by distance keeps index order
    # among equal distances. Padding sorts first by index (-1) but last by distance (+inf).
    by_idx = torch.argsort(sub_idx, dim=1, stable=True)
    sub_idx, sub_d = sub_idx.gather(1, by_idx), sub_d.gather(1, by_idx)
    by_d = torch.argsort(sub_d, dim=1, stable=True)
    idx[rows] = sub_idx.gather(1, by_d)
    dist2[rows] = sub_d.gather(1, by_d)
    return idx, dist2


def _order_ties_numpy(idx: np.ndarray, dist2: np.ndarray) -> None:
    """CPU twin of :func:`order_ties`, in numpy: on 2 cores torch's elementwise ops over the
    (M, K) outputs of a 120k scan cost ~10x more than numpy's (thread start-up per op)."""
    k = dist2.shape[1]
    flat = dist2.reshape(-1)
    pos = np.flatnonzero(flat[1:] == flat[:-1])
    pos = pos[(pos % k != k - 1) & np.isfinite(flat[pos])]
    if pos.size == 0:
        return
    rows = np.unique(pos // k)
    sub_idx, sub_d = idx[rows], dist2[rows]
    order = np.lexsort((sub_idx, sub_d), axis=-1)  # primary key: the last one, distance
    idx[rows] = np.take_along_axis(sub_idx, order, axis=-1)
    dist2[rows] = np.take_along_axis(sub_d, order, axis=-1)
