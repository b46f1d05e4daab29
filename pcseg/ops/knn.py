"""K nearest neighbours within each cloud of a packed batch.

``knn`` (validates, documents) -> ``_KNNFunction`` (an autograd.Function that marks its outputs
non-differentiable) -> a backend chosen by the tensor's device:

=============  ==========================================================================
backend        where / why
=============  ==========================================================================
``pykdtree``   CPU, ``auto``'s first choice: the fastest exact search measured on a real
               120k scan on 2 cores (``scripts/bench_knn.py``), OpenMP-parallel queries.
``open3d``     CPU: ``open3d.ml.torch.ops.knn_search`` (one batched call, nanoflann);
               CUDA: ``open3d.core.nns`` when the CUDA ``open3d`` wheel is installed.
``grid``       any device: exact search on a uniform grid in PyTorch (27 cells around each
               query, coarser grids where that cannot certify the answer); CUDA's default
               when Open3D has no CUDA build. O(N) memory, no N x N distance matrix.
``bruteforce`` any device: exact tiled search in PyTorch; the reference for the tests.
=============  ==========================================================================

``auto`` (or ``None``): CPU -> pykdtree, else open3d, else grid; CUDA -> open3d (CUDA build)
else grid.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch

from pcseg.ops import _knn_open3d, _knn_pykdtree
from pcseg.ops._knn_bruteforce import knn_bruteforce
from pcseg.ops._knn_grid import knn_grid

BackendFn = Callable[
    [torch.Tensor, torch.Tensor, int, torch.Tensor, torch.Tensor],
    tuple[torch.Tensor, torch.Tensor],
]

BACKENDS = ("bruteforce", "grid", "open3d", "pykdtree")


class KNNResult(NamedTuple):
    """idx: (M, K) int64 global support rows, -1 = padding (the cloud has fewer than K points).
    dist2: (M, K) squared distances in the input dtype, ascending, +inf = padding; no gradient.
    """

    idx: torch.Tensor
    dist2: torch.Tensor


def _backend_available(name: str, device: torch.device) -> bool:
    if name in ("bruteforce", "grid"):
        return True
    if name == "open3d":
        return _knn_open3d.is_available(device)
    if name == "pykdtree":
        return device.type == "cpu" and _knn_pykdtree.is_available()
    raise ValueError(f"unknown KNN backend {name!r}; expected one of {(*BACKENDS, 'auto')}")


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """Names of the backends that can run on ``device`` here (tests and benchmarks loop them)."""
    device = torch.device(device)
    return [name for name in BACKENDS if _backend_available(name, device)]


def resolve_backend(backend: str | None, device: torch.device | str) -> str:
    """The backend ``knn`` runs for ``backend`` (None / 'auto' / a name) on ``device``."""
    device = torch.device(device)
    if backend is None or backend == "auto":
        preference = ("pykdtree", "open3d") if device.type == "cpu" else ("open3d",)
        for name in preference:
            if _backend_available(name, device):
                return name
        return "grid"
    if not _backend_available(backend, device):
        raise RuntimeError(
            f"KNN backend {backend!r} is not available for {device.type} tensors here "
            f"(available: {available_backends(device)})"
        )
    return backend


def _backend_fn(name: str) -> BackendFn:
    return {
        "bruteforce": knn_bruteforce,
        "grid": knn_grid,
        "open3d": _knn_open3d.knn_open3d,
        "pykdtree": _knn_pykdtree.knn_pykdtree,
    }[name]


class _KNNFunction(torch.autograd.Function):
    """Runs a backend; both outputs are non-differentiable (indices; distances detached)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        query: torch.Tensor,
        support: torch.Tensor,
        k: int,
        query_offset: torch.Tensor,
        support_offset: torch.Tensor,
        fn: BackendFn,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        idx, dist2 = fn(query, support, k, query_offset, support_offset)
        ctx.mark_non_differentiable(idx, dist2)
        return idx, dist2

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, *grads: torch.Tensor) -> tuple:
        return (None,) * 6


def _check_points(name: str, x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"knn: {name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 2 or x.shape[1] != 3:
        raise ValueError(f"knn: {name} must have shape (rows, 3), got {tuple(x.shape)}")
    if x.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"knn: {name} must be float32 or float64, got {x.dtype}")
    if not _all_finite(x):
        raise ValueError(f"knn: {name} contains NaN or inf coordinates")


def _all_finite(x: torch.Tensor) -> bool:
    """True when every entry of ``x`` is finite.

    A finite sum proves it at the cost of one reduction; only a non-finite sum (NaN/inf
    somewhere, or an overflow of huge values) pays for the elementwise check. On CPU the sum
    runs in numpy, single-threaded: a torch reduction this size wakes torch's second OpenMP
    thread, which on a busy 2-core machine can wait a whole scheduler slice (~12 ms measured,
    against 0.1 ms for the sum itself).
    """
    if x.device.type == "cpu":
        a = x.detach().numpy()
        with np.errstate(over="ignore", invalid="ignore"):  # an overflowing sum is expected
            total = a.sum()
        return bool(np.isfinite(total)) or bool(np.isfinite(a).all())
    return bool(torch.isfinite(x.sum())) or bool(torch.isfinite(x).all())


def _check_offset(name: str, offset: torch.Tensor, rows: int, points: torch.Tensor) -> None:
    if not isinstance(offset, torch.Tensor):
        raise TypeError(f"knn: {name} must be a torch.Tensor, got {type(offset).__name__}")
    if offset.dtype != torch.int64:
        raise TypeError(f"knn: {name} must be int64, got {offset.dtype}")
    if offset.ndim != 1 or offset.shape[0] == 0:
        raise ValueError(f"knn: {name} must have shape (B,) with B >= 1, got {tuple(offset.shape)}")
    if offset.device.type != "cpu" and offset.device != points.device:
        raise ValueError(
            f"knn: {name} is on {offset.device} but the points are on {points.device} "
            "(offsets may live on the CPU or beside the points)"
        )
    lengths = torch.diff(offset, prepend=offset.new_zeros(1))
    if bool((lengths < 0).any()):
        raise ValueError(f"knn: {name} must be non-decreasing and >= 0, got {offset.tolist()}")
    if int(offset[-1]) != rows:
        raise ValueError(f"knn: {name} must end at {rows} (its point count), got {int(offset[-1])}")


def knn(
    query: torch.Tensor,
    support: torch.Tensor,
    k: int,
    query_offset: torch.Tensor | None = None,
    support_offset: torch.Tensor | None = None,
    *,
    backend: str | None = None,
) -> KNNResult:
    """The k nearest support points of every query point, within its own cloud.

    query: (M, 3) float32/float64; support: (N, 3), same dtype and device.
    k: number of neighbours, >= 1.
    query_offset, support_offset: (B,) int64 cumulative END index of each cloud (see
        :mod:`pcseg.structures`), both given with the same B or both None (one cloud). Query
        cloud b searches support cloud b only; empty clouds are allowed. They may live on the
        CPU or on the points' device.
    backend: None / "auto" (by device, see the module docstring), "bruteforce", "grid",
        "open3d", "pykdtree".

    Returns ``KNNResult(idx, dist2)``:
        idx: (M, k) int64 GLOBAL support rows; -1 where the cloud has fewer than k points.
        dist2: (M, k) squared Euclidean distances in the input dtype, ascending; +inf where
            idx is -1. Detached (no gradient): recompute ``(query - support[idx]) ** 2`` where a
            differentiable distance is needed.
    Ties: rows are ordered by (dist2, idx), so equidistant neighbours (duplicate points) are
    listed by ascending index and the result is deterministic. The bruteforce backend also
    breaks a tie AT the k-th distance by the smaller index; tree backends keep whichever
    equidistant point their traversal meets (same inputs -> same output), so across backends
    the sets can differ only among points exactly at the k-th distance.
    """
    _check_points("query", query)
    if support is not query:
        _check_points("support", support)
    if support.dtype != query.dtype:
        raise TypeError(f"knn: query is {query.dtype} but support is {support.dtype}")
    if support.device != query.device:
        raise ValueError(f"knn: query is on {query.device} but support is on {support.device}")
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"knn: k must be an int, got {type(k).__name__}")
    if k < 1:
        raise ValueError(f"knn: k must be >= 1, got {k}")
    if (query_offset is None) != (support_offset is None):
        raise ValueError("knn: give both query_offset and support_offset, or neither")
    if query_offset is None or support_offset is None:
        query_offset = torch.tensor([query.shape[0]], dtype=torch.int64)
        support_offset = torch.tensor([support.shape[0]], dtype=torch.int64)
    else:
        _check_offset("query_offset", query_offset, query.shape[0], query)
        _check_offset("support_offset", support_offset, support.shape[0], support)
        if query_offset.shape != support_offset.shape:
            raise ValueError(
                f"knn: query_offset has {query_offset.shape[0]} clouds but support_offset has "
                f"{support_offset.shape[0]}"
            )
    fn = _backend_fn(resolve_backend(backend, query.device))
    idx, dist2 = _KNNFunction.apply(query, support, k, query_offset, support_offset, fn)
    return KNNResult(idx, dist2)
