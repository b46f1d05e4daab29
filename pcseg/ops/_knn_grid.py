"""Exact KNN on a uniform grid, in plain PyTorch: the GPU backend without an N x N matrix.

Per cloud: hash the support points into cubic cells of side ``cell`` (sorted cell keys, one
``searchsorted`` per lookup), gather for every query the points of the 3 x 3 x 3 cells around
its own, and keep the k nearest by a segmented sort of the candidates by (query, dist2, index).
A query's answer is CERTIFIED when its k-th distance is below the distance from the query to the
border of the searched block (no point outside it can be nearer). Queries that are not (sparse
regions, fewer than k candidates) are searched again on a grid 4x coarser, and after
:data:`ROUNDS` coarsenings the few left fall back to the brute-force reference.

``cell`` starts at the median k-th neighbour distance of an evenly spaced sample of support
points (brute force on the sample), so a block of 27 cells holds ~3-4 k candidates. Memory is
O(N + candidates of one query chunk), the chunk bounded by :data:`_BUDGET`. Runs on any device;
the tests run it on CPU against the brute force, ties included (the (dist2, index) order).
"""

from __future__ import annotations

import torch

from pcseg.ops._knn_bruteforce import knn_bruteforce
from pcseg.ops._knn_common import cloud_ranges, empty_result, order_ties

ROUNDS = 4  # grids of cell, 4 cell, 16 cell, 64 cell, then brute force
_COARSEN = 4.0
_SAMPLE = 256
_BUDGET = {"cpu": 1 << 22, "cuda": 1 << 25}  # candidate pairs per query chunk
_OFFSETS = torch.stack(torch.meshgrid(*[torch.arange(-1, 2)] * 3, indexing="ij"), -1).reshape(
    -1, 3
)  # (27, 3)


class _Grid:
    """Support points (N, 3) hashed into cells of side ``cell``: sorted keys and ranges."""

    def __init__(self, support: torch.Tensor, cell: float) -> None:
        self.support, self.cell = support, cell
        self.origin = support.min(0).values
        cells = self.cell_of(support)
        self.dims = cells.max(0).values + 1  # (3,) cells per axis
        keys = self.key(cells)
        keys, self.order = torch.sort(keys, stable=True)
        self.keys, counts = torch.unique_consecutive(keys, return_counts=True)
        self.counts = counts
        self.starts = torch.cumsum(counts, 0) - counts

    def cell_of(self, pts: torch.Tensor) -> torch.Tensor:
        return torch.floor((pts - self.origin) / self.cell).to(torch.int64)

    def key(self, cells: torch.Tensor) -> torch.Tensor:
        return (cells[..., 0] * self.dims[1] + cells[..., 1]) * self.dims[2] + cells[..., 2]

    def block(self, query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """For queries (Q, 3): starts and counts (Q, 27) of the 27 cells around each query's
        cell (count 0 for an empty or out-of-grid cell), and the distance (Q,) from each query
        to the border of that block."""
        qc = self.cell_of(query)
        nc = qc.unsqueeze(1) + _OFFSETS.to(query.device)
        inside = ((nc >= 0) & (nc < self.dims)).all(-1)
        keys = self.key(nc.clamp(min=0))
        pos = torch.searchsorted(self.keys, keys).clamp(max=self.keys.numel() - 1)
        hit = inside & (self.keys[pos] == keys)
        counts = torch.where(hit, self.counts[pos], 0)
        lo = self.origin + (qc - 1).to(query.dtype) * self.cell
        hi = self.origin + (qc + 2).to(query.dtype) * self.cell
        border = torch.minimum(query - lo, hi - query).min(1).values
        return self.starts[pos], counts, border


def _candidates(
    grid: _Grid, starts: torch.Tensor, counts: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(query row (L,), support row (L,)) of every candidate pair, grouped by query."""
    flat = counts.reshape(-1)
    seg = torch.repeat_interleave(torch.arange(flat.numel(), device=flat.device), flat)
    first = torch.cumsum(flat, 0) - flat
    within = torch.arange(seg.numel(), device=flat.device) - first[seg]
    rows = grid.order[starts.reshape(-1)[seg] + within]
    return seg // counts.shape[1], rows


def _nearest(
    query: torch.Tensor, support: torch.Tensor, qrow: torch.Tensor, srow: torch.Tensor, m: int,
    k: int,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """The k nearest candidates of each of ``m`` queries by (dist2, index): idx, dist2 (m, k),
    -1 / +inf where a query has fewer than k candidates."""
    diff = query[qrow] - support[srow]
    d = diff[:, 0].square()  # the brute force's arithmetic, term by term
    d.addcmul_(diff[:, 1], diff[:, 1])
    d.addcmul_(diff[:, 2], diff[:, 2])
    order = torch.argsort(srow, stable=True)
    if d.dtype == torch.float32:
        # One sort by (query, dist2): a non-negative float32's bits order like its value.
        key = (qrow[order] << 32) | d[order].view(torch.int32).to(torch.int64)
        order = order[torch.argsort(key, stable=True)]
    else:
        order = order[torch.argsort(d[order], stable=True)]
        order = order[torch.argsort(qrow[order], stable=True)]
    q_sorted = qrow[order]
    counts = torch.bincount(qrow, minlength=m)
    rank = (
        torch.arange(order.numel(), device=d.device) - (torch.cumsum(counts, 0) - counts)[q_sorted]
    )
    keep = rank < k
    idx, dist2 = empty_result(m, k, query.dtype, query.device)
    idx[q_sorted[keep], rank[keep]] = srow[order[keep]]
    dist2[q_sorted[keep], rank[keep]] = d[order[keep]]
    return idx, dist2


def _search_round(
    grid: _Grid, query: torch.Tensor, k: int, idx: torch.Tensor, dist2: torch.Tensor,
    pending: torch.Tensor,
) -> torch.Tensor:  # fmt: skip
    """Search ``pending`` query rows on ``grid``; write certified rows; return the others."""
    starts, counts, border = grid.block(query[pending])
    total = counts.sum(1)
    budget = _BUDGET.get(query.device.type, _BUDGET["cuda"])
    left = []
    bounds = torch.cumsum(total, 0) // budget
    for part in torch.unique_consecutive(bounds):
        sel = (bounds == part).nonzero().squeeze(1)
        qrow, srow = _candidates(grid, starts[sel], counts[sel])
        i, d = _nearest(query[pending[sel]], grid.support, qrow, srow, sel.numel(), k)
        ok = (total[sel] >= k) & (d[:, -1] < border[sel].square())
        rows = pending[sel[ok]]
        idx[rows], dist2[rows] = i[ok], d[ok]
        left.append(pending[sel[~ok]])
    return torch.cat(left) if left else pending[:0]


def _start_cell(support: torch.Tensor, k: int) -> float:
    """Median k-th neighbour distance of an evenly spaced sample (brute force on the sample)."""
    n = support.shape[0]
    sample = support[torch.linspace(0, n - 1, min(n, _SAMPLE), device=support.device).long()]
    one = torch.tensor([sample.shape[0]]), torch.tensor([n])
    _, d = knn_bruteforce(sample, support, k, *one)
    cell = float(d[:, -1].sqrt().median())
    extent = float((support.max(0).values - support.min(0).values).max())
    # At least a 2^-20 of the extent per cell (int64 keys), and never 0 (duplicate points).
    return max(cell, extent / (1 << 20), 1e-6)


def knn_grid(
    query: torch.Tensor,
    support: torch.Tensor,
    k: int,
    query_offset: torch.Tensor,
    support_offset: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """query (M, 3), support (N, 3), offsets (B,) int64 -> idx (M, k) int64, dist2 (M, k).

    Global support indices, -1 / +inf padding where a cloud has fewer than k points; exact,
    the same answer as :func:`knn_bruteforce`. Inputs validated by :func:`pcseg.ops.knn.knn`.
    """
    idx, dist2 = empty_result(query.shape[0], k, query.dtype, query.device)
    for q0, q1, s0, s1 in cloud_ranges(query_offset, support_offset):
        n = s1 - s0
        if q1 == q0 or n == 0:
            continue
        kk = min(k, n)
        q, s = query[q0:q1], support[s0:s1]
        i, d = empty_result(q1 - q0, kk, query.dtype, query.device)
        pending = torch.arange(q1 - q0, device=query.device)
        cell = _start_cell(s, kk)
        for _ in range(ROUNDS):
            pending = _search_round(_Grid(s, cell), q, kk, i, d, pending)
            if pending.numel() == 0:
                break
            cell *= _COARSEN
        if pending.numel():
            one = torch.tensor([pending.numel()]), torch.tensor([n])
            i[pending], d[pending] = knn_bruteforce(q[pending], s, kk, *one)
        idx[q0:q1, :kk] = torch.where(i >= 0, i + s0, i)
        dist2[q0:q1, :kk] = d
    return order_ties(idx, dist2)
