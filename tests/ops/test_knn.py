"""pcseg.ops.knn: every backend against a naive per-query loop, on ragged batches.

The naive reference sorts every support point of the query's own cloud by (distance, index)
and keeps the first k: the canonical answer. Exact distances of the k nearest are unique
whatever the tie-breaking, so every backend must match them; indices must match wherever the
reference has no tie, and everywhere for the bruteforce backend (canonical ties).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import pcseg.ops
from pcseg.data.io import read_scan
from pcseg.ops import _knn_bruteforce, _knn_grid
from pcseg.ops.knn import KNNResult, available_backends, knn, resolve_backend
from pcseg.structures import lengths_to_offset, offset_to_starts

CPU_BACKENDS = available_backends("cpu")
CUDA = torch.cuda.is_available()
EXACT = ("bruteforce", "grid")  # canonical ties: (dist2, index), like the naive reference


def naive_knn(
    query: torch.Tensor,
    support: torch.Tensor,
    k: int,
    query_offset: torch.Tensor,
    support_offset: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One query at a time, float64, ties to the smaller index: (M, k) idx and dist2."""
    m = query.shape[0]
    idx = torch.full((m, k), -1, dtype=torch.int64)
    dist2 = torch.full((m, k), float("inf"), dtype=torch.float64)
    q_starts, s_starts = offset_to_starts(query_offset), offset_to_starts(support_offset)
    for b in range(len(query_offset)):
        s0, s1 = int(s_starts[b]), int(support_offset[b])
        cloud = support[s0:s1].double()
        for i in range(int(q_starts[b]), int(query_offset[b])):
            d = ((cloud - query[i].double()) ** 2).sum(dim=1).tolist()
            order = sorted(range(len(d)), key=lambda j, d=d: (d[j], j))[:k]
            idx[i, : len(order)] = torch.tensor(order, dtype=torch.int64) + s0
            dist2[i, : len(order)] = torch.tensor([d[j] for j in order], dtype=torch.float64)
    return idx, dist2


def ragged(
    sizes: list[int], seed: int, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clouds of the given sizes packed end to end -> points (N, 3), offset (B,)."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.tensor(sizes, dtype=torch.int64)
    # Each cloud sits at its own place, so a neighbour taken from the wrong cloud would also
    # be far off in distance.
    shift = torch.repeat_interleave(torch.arange(len(sizes), dtype=dtype) * 0.5, lengths)
    pts = torch.rand(int(lengths.sum()), 3, generator=gen, dtype=dtype) + shift[:, None]
    return pts, lengths_to_offset(lengths)


def check_invariants(
    res: KNNResult,
    query: torch.Tensor,
    support: torch.Tensor,
    k: int,
    query_offset: torch.Tensor,
    support_offset: torch.Tensor,
) -> None:
    """Layout, padding, cloud membership, recomputed distances, order: true of any backend."""
    idx, dist2 = res.idx.cpu(), res.dist2.cpu()
    query, support = query.cpu(), support.cpu()
    assert idx.shape == (query.shape[0], k) and dist2.shape == (query.shape[0], k)
    assert idx.dtype == torch.int64 and dist2.dtype == query.dtype
    q_starts, s_starts = offset_to_starts(query_offset.cpu()), offset_to_starts(support_offset)
    for b in range(len(query_offset)):
        q0, q1 = int(q_starts[b]), int(query_offset[b])
        s0, s1 = int(s_starts[b].cpu()), int(support_offset[b])
        valid = min(k, s1 - s0)
        rows_idx, rows_d = idx[q0:q1], dist2[q0:q1]
        # Padding exactly where the cloud runs out of points.
        assert (rows_idx[:, valid:] == -1).all()
        assert torch.isinf(rows_d[:, valid:]).all() and (rows_d[:, valid:] > 0).all()
        got = rows_idx[:, :valid]
        # No neighbour crosses a cloud.
        assert ((got >= s0) & (got < s1)).all(), f"cloud {b}: neighbour outside [{s0}, {s1})"
        if valid == 0 or q1 == q0:
            continue
        # No point twice in a row.
        assert (got.sort(dim=1).values.diff(dim=1) != 0).all()
        recomputed = ((query[q0:q1, None, :] - support[got]) ** 2).sum(dim=-1)
        torch.testing.assert_close(rows_d[:, :valid], recomputed)
        d = rows_d[:, :valid]
        assert (d.diff(dim=1) >= 0).all(), "dist2 not ascending"
        tied = d.diff(dim=1) == 0
        assert (got.diff(dim=1)[tied] > 0).all(), "equal distances not ordered by index"


def check_against_naive(
    res: KNNResult,
    query: torch.Tensor,
    support: torch.Tensor,
    k: int,
    query_offset: torch.Tensor,
    support_offset: torch.Tensor,
    exact_ties: bool,
    expect_untied_rows: bool = True,
) -> None:
    check_invariants(res, query, support, k, query_offset, support_offset)
    # One naive pass for k + 1: its first k columns are the k-answer, the last one tells
    # whether the k-th distance is tied with the next point.
    full_idx, full_d = naive_knn(query.cpu(), support.cpu(), k + 1, query_offset, support_offset)
    ref_idx, ref_d = full_idx[:, :k], full_d[:, :k]
    idx, dist2 = res.idx.cpu(), res.dist2.cpu().double()
    torch.testing.assert_close(dist2, ref_d, rtol=1e-5, atol=1e-6)
    if exact_ties:
        assert torch.equal(idx, ref_idx)
        return
    # Rows where the reference's k+1 smallest distances are all distinct: one right answer.
    finite = torch.isfinite(full_d)
    gaps = full_d.diff(dim=1)
    unique = ((gaps > 1e-6) | ~finite[:, 1:]).all(dim=1)
    assert unique.any() or not expect_untied_rows, "test data should have untied rows"
    assert torch.equal(idx[unique], ref_idx[unique])


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_ragged_batch_matches_naive(backend: str) -> None:
    # A cloud smaller than k, an empty support cloud that still has queries, a one-point cloud.
    support, s_off = ragged([60, 3, 0, 150, 1], seed=0)
    query, q_off = ragged([25, 5, 4, 30, 2], seed=1)
    res = knn(query, support, 8, q_off, s_off, backend=backend)
    assert isinstance(res, KNNResult)
    check_against_naive(res, query, support, 8, q_off, s_off, exact_ties=backend in EXACT)
    assert (res.idx[30:34] == -1).all(), "queries of the empty cloud must be all padding"


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_no_neighbour_crosses_a_cloud(backend: str) -> None:
    # Two clouds on top of each other: the globally nearest points are in the other cloud.
    gen = torch.Generator().manual_seed(2)
    a = torch.rand(40, 3, generator=gen)
    b = a + 1e-3  # each point of b has its twin in a, much closer than anything in b
    pts = torch.cat([a, b])
    off = torch.tensor([40, 80])
    res = knn(pts, pts, 5, off, off, backend=backend)
    assert (res.idx[:40] < 40).all() and (res.idx[40:] >= 40).all()
    check_against_naive(res, pts, pts, 5, off, off, exact_ties=backend in EXACT)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_queries_differ_from_support(backend: str) -> None:
    support, s_off = ragged([120, 80, 40], seed=3)
    lengths = torch.diff(s_off, prepend=torch.zeros(1, dtype=torch.int64))
    # Every third point of each cloud, plus jitter: queries with their own offsets.
    keep = torch.cat(
        [torch.arange(int(s), int(e), 3) for s, e in zip(s_off - lengths, s_off, strict=True)]
    )
    query = support[keep] + 0.01
    q_off = lengths_to_offset((lengths + 2) // 3)
    res = knn(query, support, 6, q_off, s_off, backend=backend)
    check_against_naive(res, query, support, 6, q_off, s_off, exact_ties=backend in EXACT)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_duplicate_points_and_grid_ties(backend: str) -> None:
    # Integer grid, every point three times: whole rows of equal distances, ties at the k-th.
    grid = torch.stack(torch.meshgrid(*(torch.arange(4.0),) * 3, indexing="ij"), dim=-1).reshape(
        -1, 3
    )
    pts = grid.repeat(3, 1)[torch.randperm(192, generator=torch.Generator().manual_seed(4))]
    off = torch.tensor([100, 192])
    res = knn(pts, pts, 10, off, off, backend=backend)
    check_against_naive(
        res, pts, pts, 10, off, off, backend == "bruteforce", expect_untied_rows=False
    )
    again = knn(pts, pts, 10, off, off, backend=backend)
    assert torch.equal(res.idx, again.idx) and torch.equal(res.dist2, again.dist2)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_float64_and_single_cloud(backend: str) -> None:
    support, _ = ragged([300], seed=5, dtype=torch.float64)
    query, _ = ragged([50], seed=6, dtype=torch.float64)
    res = knn(query, support, 4, backend=backend)
    assert res.dist2.dtype == torch.float64
    m, n = torch.tensor([50]), torch.tensor([300])
    check_against_naive(res, query, support, 4, m, n, exact_ties=backend in EXACT)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_strided_input_as_read_from_a_scan(backend: str) -> None:
    # (N, 4) x, y, z, remission sliced to (N, 3): a non-contiguous view.
    scan = torch.rand(150, 4, generator=torch.Generator().manual_seed(16))
    xyz = scan[:, :3]
    assert not xyz.is_contiguous()
    res = knn(xyz, xyz, 5, backend=backend)
    one = torch.tensor([150])
    check_against_naive(res, xyz, xyz, 5, one, one, exact_ties=backend in EXACT)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_k_one_and_empty_inputs(backend: str) -> None:
    pts, off = ragged([30, 20], seed=7)
    res = knn(pts, pts, 1, off, off, backend=backend)
    assert torch.equal(res.idx[:, 0], torch.arange(50)), "a point is its own nearest neighbour"
    assert (res.dist2 == 0).all()
    empty = knn(torch.zeros(0, 3), pts, 3, backend=backend)
    assert empty.idx.shape == (0, 3) and empty.dist2.shape == (0, 3)
    no_support = knn(pts, torch.zeros(0, 3), 3, backend=backend)
    assert (no_support.idx == -1).all() and torch.isinf(no_support.dist2).all()
    # A batch whose query cloud is empty while its support cloud is not.
    q_off, s_off = torch.tensor([0, 20]), torch.tensor([30, 50])
    res = knn(pts[30:], pts, 4, q_off, s_off, backend=backend)
    check_against_naive(res, pts[30:], pts, 4, q_off, s_off, exact_ties=backend in EXACT)


@pytest.mark.skipif("open3d" not in CPU_BACKENDS, reason="open3d is not installed")
def test_open3d_core_path_of_cuda_backend_on_cpu() -> None:
    # The CUDA backend goes through open3d.core.nns + DLPack; the same code runs on CPU here.
    from pcseg.ops._knn_common import order_ties
    from pcseg.ops._knn_open3d import _knn_open3d_core

    support, s_off = ragged([60, 3, 0, 150], seed=14)
    query, q_off = ragged([25, 5, 4, 30], seed=15)
    res = KNNResult(*order_ties(*_knn_open3d_core(query, support, 8, q_off, s_off)))
    check_against_naive(res, query, support, 8, q_off, s_off, exact_ties=False)


def test_bruteforce_tiles_match_one_tile(monkeypatch: pytest.MonkeyPatch) -> None:
    pts, off = ragged([200, 90], seed=8)
    whole = knn(pts, pts, 7, off, off, backend="bruteforce")
    monkeypatch.setattr(_knn_bruteforce, "_CPU_TILE", 200 * 7)  # 7 queries per tile
    tiled = knn(pts, pts, 7, off, off, backend="bruteforce")
    assert torch.equal(whole.idx, tiled.idx) and torch.equal(whole.dist2, tiled.dist2)


@pytest.mark.parametrize(("rounds", "budget"), [(4, 1 << 22), (1, 1000), (0, 1 << 22)])
def test_grid_coarsens_and_falls_back_exactly(monkeypatch, rounds, budget) -> None:
    """A dense cluster beside sparse far points: the first grid (cell ~ the cluster's k-th
    distance) cannot certify the far points, so they go to coarser grids or, with fewer
    rounds, to the brute force; small budgets split the candidates into several chunks."""
    gen = torch.Generator().manual_seed(3)
    dense = torch.rand(400, 3, generator=gen)
    sparse = torch.rand(40, 3, generator=gen) * 200 + 50
    pts = torch.cat([dense, sparse])
    pts[5] = pts[4]  # a duplicate: a tie at distance 0
    off = torch.tensor([len(pts)])
    monkeypatch.setattr(_knn_grid, "ROUNDS", rounds)
    monkeypatch.setitem(_knn_grid._BUDGET, "cpu", budget)
    query = torch.cat([pts[::3], torch.tensor([[1000.0, 0.0, 0.0], [-5.0, 0.5, 0.5]])])
    q_off = torch.tensor([len(query)])
    res = knn(query, pts, 9, q_off, off, backend="grid")
    check_against_naive(res, query, pts, 9, q_off, off, exact_ties=True)


def test_backends_agree_on_a_real_scan(real_root) -> None:
    xyz = read_scan(real_root / "sequences/00/velodyne/000000.bin")[0]
    support = torch.from_numpy(np.ascontiguousarray(xyz))
    query = support[torch.randperm(len(support), generator=torch.Generator().manual_seed(9))[:300]]
    ref = knn(query, support, 16, backend="bruteforce")
    off_q, off_s = torch.tensor([300]), torch.tensor([len(support)])
    check_invariants(ref, query, support, 16, off_q, off_s)
    for backend in CPU_BACKENDS:
        res = knn(query, support, 16, backend=backend)
        torch.testing.assert_close(res.dist2, ref.dist2)
        # Real scans hold exact duplicates; where the k-th distance is untied the sets agree.
        same = (res.idx.sort(dim=1).values == ref.idx.sort(dim=1).values).all(dim=1)
        assert same.float().mean() > 0.99, backend


def test_auto_backend_and_public_entry_point() -> None:
    assert resolve_backend(None, "cpu") == resolve_backend("auto", "cpu")
    assert resolve_backend(None, "cpu") in CPU_BACKENDS
    pts, off = ragged([40, 25], seed=10)
    # pcseg.ops.knn is the function, also after its submodule was imported.
    first = pcseg.ops.knn(pts, pts, 4, off, off)
    second = pcseg.ops.knn(pts, pts, 4, off, off)
    assert torch.equal(first.idx, second.idx)
    check_against_naive(first, pts, pts, 4, off, off, exact_ties=False)


def test_no_gradient_and_inputs_requiring_grad() -> None:
    pts = torch.rand(30, 3, requires_grad=True)
    res = knn(pts, pts, 3)
    assert not res.idx.requires_grad and not res.dist2.requires_grad


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda p, o: knn(p[:, :2], p, 3), ValueError, "query must have shape"),
        (lambda p, o: knn(p, p[None], 3), ValueError, "support must have shape"),
        (lambda p, o: knn(p.long(), p.long(), 3), TypeError, "float32 or float64"),
        (lambda p, o: knn(p.half(), p.half(), 3), TypeError, "float32 or float64"),
        (lambda p, o: knn(p, p.double(), 3), TypeError, "query is torch.float32"),
        (lambda p, o: knn(p, p, 0), ValueError, "k must be >= 1"),
        (lambda p, o: knn(p, p, 2.0), TypeError, "k must be an int"),
        (lambda p, o: knn(p, p, True), TypeError, "k must be an int"),
        (lambda p, o: knn(p, p, 3, o, None), ValueError, "both"),
        (lambda p, o: knn(p, p, 3, o.int(), o), TypeError, "query_offset must be int64"),
        (lambda p, o: knn(p, p, 3, o, o - 1), ValueError, "support_offset must end at 10"),
        (lambda p, o: knn(p, p, 3, torch.tensor([6, 4, 10]), o), ValueError, "non-decreasing"),
        (lambda p, o: knn(p, p, 3, torch.tensor([10]), o), ValueError, "clouds"),
        (lambda p, o: knn(p, p, 3, o[:0], o[:0]), ValueError, "B >= 1"),
        (lambda p, o: knn(p, p, 3, o[None], o[None]), ValueError, r"shape \(B,\)"),
        (lambda p, o: knn(p.numpy(), p, 3), TypeError, "torch.Tensor"),
        (lambda p, o: knn(p, p, 3, backend="faiss"), ValueError, "unknown KNN backend"),
    ],
)
def test_validation_errors(call, error, match) -> None:
    pts, off = ragged([4, 6], seed=11)
    with pytest.raises(error, match=match):
        call(pts, off)


def test_non_finite_coordinates_are_rejected() -> None:
    pts = torch.rand(10, 3)
    pts[3, 1] = float("nan")
    with pytest.raises(ValueError, match="query contains NaN"):
        knn(pts, torch.rand(10, 3), 2)
    huge = torch.full((10, 3), 3e38)  # finite entries whose sum overflows: still accepted
    assert knn(huge, huge, 2).idx.shape == (10, 2)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("backend", ["auto", *available_backends("cuda")])
def test_cuda_backends_match_cpu_reference(backend: str) -> None:
    support, s_off = ragged([500, 3, 0, 700], seed=12)
    query, q_off = ragged([100, 5, 7, 90], seed=13)
    res = knn(query.cuda(), support.cuda(), 8, q_off.cuda(), s_off.cuda(), backend=backend)
    assert res.idx.is_cuda and res.dist2.is_cuda
    check_against_naive(res, query, support, 8, q_off, s_off, exact_ties=False)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_cuda_rejects_mixed_devices_and_cpu_only_backends() -> None:
    pts = torch.rand(10, 3)
    with pytest.raises(ValueError, match="support is on"):
        knn(pts.cuda(), pts, 2)
    with pytest.raises(RuntimeError, match="not available"):
        knn(pts.cuda(), pts.cuda(), 2, backend="pykdtree")
