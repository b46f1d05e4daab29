"""CPU KNN through pykdtree (OpenMP kd-tree), one tree per cloud.

Why pykdtree on CPU: on a 124k-point SemanticKITTI scan with K = 16 on 2 cores it is the
fastest exact search we measured (``scripts/bench_knn.py``): ~1.5-2x faster than Open3D's
nanoflann-based ``knn_search`` and than ``scipy.spatial.cKDTree(workers=-1)``. The tree build
takes a few ms; the queries run in parallel over ``OMP_NUM_THREADS`` threads.

The glue stays in numpy on purpose: torch elementwise ops run on torch's own OpenMP pool, whose
threads keep spinning for a moment after each op and then compete for the cores with
pykdtree's pool (2 cores here). Outputs are numpy buffers handed to torch without a copy.
"""

from __future__ import annotations

import numpy as np
import torch

from pcseg.ops._knn_common import PAD_DIST2, PAD_INDEX, cloud_ranges, order_ties

# Points per leaf. 16 (pykdtree's default) and 32 measured within noise of each other on a real
# scan; 32 was ahead more often and builds a smaller tree.
_LEAFSIZE = 32


def is_available() -> bool:
    try:
        import pykdtree.kdtree  # noqa: F401
    except ImportError:
        return False
    return True


def knn_pykdtree(
    query: torch.Tensor,
    support: torch.Tensor,
    k: int,
    query_offset: torch.Tensor,
    support_offset: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """query (M, 3), support (N, 3) on CPU, offsets (B,) int64 -> idx (M, k), dist2 (M, k).

    pykdtree reports missing neighbours with index N and distance FLT_MAX; we never ask for
    more neighbours than a cloud has, so those never appear: the tail is padded here instead.
    """
    from pykdtree.kdtree import KDTree

    # pykdtree wants C-contiguous rows; a strided view such as scan[:, :3] is copied once here.
    q_np = np.ascontiguousarray(query.detach().numpy())
    s_np = q_np if support is query else np.ascontiguousarray(support.detach().numpy())
    ranges = cloud_ranges(query_offset, support_offset)
    m = q_np.shape[0]
    if len(ranges) == 1 and 0 < k <= s_np.shape[0] and m > 0:
        # One cloud with enough points: pykdtree's arrays are the result, no padding copy.
        d, i = KDTree(s_np, leafsize=_LEAFSIZE).query(q_np, k=k, sqr_dists=True)
        idx, dist2 = i.reshape(m, k).astype(np.int64), d.reshape(m, k)
    else:
        idx = np.full((m, k), PAD_INDEX, dtype=np.int64)
        dist2 = np.full((m, k), PAD_DIST2, dtype=q_np.dtype)
        for q0, q1, s0, s1 in ranges:
            n = s1 - s0
            if q1 == q0 or n == 0:
                continue
            kk = min(k, n)
            tree = KDTree(s_np[s0:s1], leafsize=_LEAFSIZE)
            d, i = tree.query(q_np[q0:q1], k=kk, sqr_dists=True)
            np.add(i.reshape(q1 - q0, kk), s0, out=idx[q0:q1, :kk], casting="unsafe")
            dist2[q0:q1, :kk] = d.reshape(q1 - q0, kk)
    return order_ties(torch.from_numpy(idx), torch.from_numpy(dist2))
