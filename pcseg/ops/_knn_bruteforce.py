"""Exact brute-force KNN in plain PyTorch, tiled over query chunks, per cloud.

The ground truth for the other backends and the GPU fallback when Open3D has no CUDA build.
Distances are the literal ``sum((q - s) ** 2)`` in the input dtype (no ``|q|^2 + |s|^2 - 2 q.s``
expansion: that cancels catastrophically for nearby points far from the origin, exactly the
case of LiDAR neighbours at 50 m). Memory stays bounded: each tile holds at most
``_tile_elements(device)`` query-support pairs, whatever the cloud size.

Ties are canonical: the K neighbours are the first K support points in the order
``(dist2, support index)``, so equidistant points are chosen and listed by ascending index.
"""

from __future__ import annotations

import torch

from pcseg.ops._knn_common import cloud_ranges, empty_result, order_ties

# Pairs per tile. A tile holds two (Q, N) planes (distances and a scratch difference) plus
# topk's workspace: 2**22 float32 pairs is ~32 MB on CPU; a GPU has the memory and the
# bandwidth for 2**26 (~0.5 GB).
_CPU_TILE = 2**22
_GPU_TILE = 2**26


def _tile_elements(device: torch.device) -> int:
    return _CPU_TILE if device.type == "cpu" else _GPU_TILE


def _knn_tile(q: torch.Tensor, s_t: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """q (Q, 3), s_t (3, N) (support transposed), 1 <= k <= N -> local idx (Q, k) int64,
    dist2 (Q, k), canonical.

    One coordinate at a time on (Q, N) planes: summing a (Q, N, 3) tensor over its tiny last
    axis is several times slower in PyTorch and needs 3x the memory.
    """
    d = (q[:, 0:1] - s_t[0]).square_()
    tmp = torch.empty_like(d)
    for c in (1, 2):
        torch.sub(q[:, c : c + 1], s_t[c], out=tmp)
        d.addcmul_(tmp, tmp)
    vals, idx = torch.topk(d, k, dim=1, largest=False, sorted=True)
    if k < d.shape[1]:
        # topk picks an arbitrary subset of points tied at the k-th distance; rows where more
        # points tie there than fit are redone with a stable sort (ascending index wins).
        overfull = (d <= vals[:, -1:]).sum(dim=1) > k
        rows = overfull.nonzero().squeeze(1)
        if rows.numel():
            v, i = torch.sort(d[rows], dim=1, stable=True)
            vals[rows], idx[rows] = v[:, :k], i[:, :k]
    return idx, vals


def knn_bruteforce(
    query: torch.Tensor,
    support: torch.Tensor,
    k: int,
    query_offset: torch.Tensor,
    support_offset: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """query (M, 3), support (N, 3), offsets (B,) int64 -> idx (M, k) int64, dist2 (M, k).

    Global support indices, -1 / +inf padding where a cloud has fewer than k points.
    Works on any device; inputs are assumed validated by :func:`pcseg.ops.knn.knn`.
    """
    idx, dist2 = empty_result(query.shape[0], k, query.dtype, query.device)
    tile = _tile_elements(query.device)
    for q0, q1, s0, s1 in cloud_ranges(query_offset, support_offset):
        n = s1 - s0
        if q1 == q0 or n == 0:
            continue
        kk = min(k, n)
        s_t = support[s0:s1].t().contiguous()
        chunk = max(1, tile // n)
        for c0 in range(q0, q1, chunk):
            c1 = min(c0 + chunk, q1)
            i, d = _knn_tile(query[c0:c1], s_t, kk)
            idx[c0:c1, :kk] = i + s0
            dist2[c0:c1, :kk] = d
    return order_ties(idx, dist2)
