"""KNN through Open3D: ``open3d.ml.torch.ops.knn_search`` on CPU, ``open3d.core.nns`` on CUDA.

CPU: one batched call; the clouds travel as row splits (``[0, *offset]``), Open3D builds a
nanoflann tree per cloud and returns a ragged list (fewer than K neighbours where a cloud is
small, none for an empty cloud), which is scattered here into the padded (M, K) layout.
CUDA: ``open3d.ml.torch.ops.knn_search`` has no CUDA kernel, so the CUDA build of ``open3d``
is used through ``open3d.core.nns.NearestNeighborSearch`` per cloud, zero-copy via DLPack
(``_knn_open3d_core``; device-generic, so the tests run it on CPU where no GPU is present).
Open3D's L2 distances are already squared.
"""

from __future__ import annotations

import torch

from pcseg.ops._knn_common import cloud_ranges, empty_result, order_ties


def is_available(device: torch.device) -> bool:
    """True when Open3D can search tensors on ``device`` (CUDA needs the CUDA ``open3d`` wheel)."""
    try:
        if device.type == "cpu":
            import open3d.ml.torch  # noqa: F401

            return True
        if device.type == "cuda":
            import open3d.core as o3c

            return bool(o3c.cuda.is_available())
    except (ImportError, OSError, RuntimeError):
        # The CUDA `open3d` wheel beside a CPU torch raises on import of its ml ops.
        return False
    return False


def _ragged_to_padded(
    neighbors: torch.Tensor, row_splits: torch.Tensor, distances: torch.Tensor, m: int, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Open3D's ragged output (row i owns ``neighbors[row_splits[i]:row_splits[i+1]]``, at most
    k entries) -> padded idx (M, k) int64 and dist2 (M, k)."""
    idx, dist2 = empty_result(m, k, distances.dtype, distances.device)
    counts = torch.diff(row_splits)
    if bool((counts == k).all()):
        return neighbors.view(m, k).to(torch.int64), distances.view(m, k)
    rows = torch.repeat_interleave(torch.arange(m), counts)
    cols = torch.arange(neighbors.shape[0]) - torch.repeat_interleave(row_splits[:-1], counts)
    idx[rows, cols] = neighbors.to(torch.int64)
    dist2[rows, cols] = distances
    return idx, dist2


def _knn_open3d_cpu(
    query: torch.Tensor,
    support: torch.Tensor,
    k: int,
    query_offset: torch.Tensor,
    support_offset: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    import open3d.ml.torch as ml3d

    zero = torch.zeros(1, dtype=torch.int64)
    ans = ml3d.ops.knn_search(
        support.detach().contiguous(),
        query.detach().contiguous(),
        k,
        torch.cat([zero, support_offset.cpu()]),
        torch.cat([zero, query_offset.cpu()]),
        metric="L2",
        ignore_query_point=False,
        return_distances=True,
        index_dtype=torch.int64,
    )
    return _ragged_to_padded(
        ans.neighbors_index,
        ans.neighbors_row_splits,
        ans.neighbors_distance,
        query.shape[0],
        k,
    )


def _knn_open3d_core(
    query: torch.Tensor,
    support: torch.Tensor,
    k: int,
    query_offset: torch.Tensor,
    support_offset: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``open3d.core.nns`` per cloud, on the tensors' own device (CUDA in production)."""
    import open3d.core as o3c
    from torch.utils.dlpack import from_dlpack, to_dlpack

    def to_o3d(t: torch.Tensor) -> o3c.Tensor:
        return o3c.Tensor.from_dlpack(to_dlpack(t.detach().contiguous()))

    idx, dist2 = empty_result(query.shape[0], k, query.dtype, query.device)
    for q0, q1, s0, s1 in cloud_ranges(query_offset, support_offset):
        n = s1 - s0
        if q1 == q0 or n == 0:
            continue
        kk = min(k, n)
        nns = o3c.nns.NearestNeighborSearch(to_o3d(support[s0:s1]))
        if not nns.knn_index():
            raise RuntimeError("open3d.core.nns: building the KNN index failed")
        i, d = nns.knn_search(to_o3d(query[q0:q1]), kk)
        idx[q0:q1, :kk] = from_dlpack(i.to_dlpack()).to(torch.int64).view(q1 - q0, kk) + s0
        dist2[q0:q1, :kk] = from_dlpack(d.to_dlpack()).to(query.dtype).view(q1 - q0, kk)
    return idx, dist2


def knn_open3d(
    query: torch.Tensor,
    support: torch.Tensor,
    k: int,
    query_offset: torch.Tensor,
    support_offset: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """query (M, 3), support (N, 3), offsets (B,) int64 -> idx (M, k) int64, dist2 (M, k)."""
    fn = _knn_open3d_cpu if query.device.type == "cpu" else _knn_open3d_core
    idx, dist2 = fn(query, support, k, query_offset, support_offset)
    return order_ties(idx, dist2)
