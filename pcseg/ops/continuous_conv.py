"""Parametric continuous convolution (Wang et al., CVPR 2018): the specification and the fast op.

For query x_i with neighbours y_j = support[idx[i, k]] (idx (M, K) int64, -1 = padding) and the
offset z_ij = x_i - y_j, a kernel MLP g maps z to kernel values and

    full:       out_i = (1/K_i) sum_j  feat_j @ g(z_ij).view(C_in, C_out)
    separable:  out_i = (1/K_i) sum_j  (feat_j @ weight) * g(z_ij)        g emits C_out values

summing over the K_i valid neighbours (1/K_i only with ``normalize``; a query with no valid
neighbour gets zeros). :func:`continuous_conv_reference` is that formula, literally: it builds
an M x K x C_in x C_out tensor and exists for tests. :func:`continuous_conv` computes the same
numbers without ever doing so:

- ``impl="fused"`` (the default off CUDA): one chunked autograd Function (``_conv_fused``) that
  factorises the MLP's last Linear out of the neighbour sum (A_i = sum_j phi_ij (x) f_j, then
  one dense matmul), saves nothing of size M x K and recomputes per chunk in backward.
- ``impl="primitives"`` (the default on CUDA): the hidden MLP with plain autograd, then the
  gather-reduce primitives (``gather_outer_reduce`` / ``gather_mul_reduce``) behind autograd
  Functions; ``backend`` picks their implementation: ``"auto"`` the Triton kernels of
  ``pcseg.ops.kernels`` for CUDA tensors when triton is installed, else their PyTorch twins in
  ``_conv_primitives``; ``"torch"`` the twins on any device (the plain-PyTorch GPU baseline of
  ``scripts/bench_gpu.py``); ``"triton"`` the kernels or an error.

Mixed precision (``torch.autocast``, e.g. Lightning's ``precision=bf16-mixed`` / ``16-mixed``):
the op behaves like autocast's float32 reductions: sums accumulate in float32 and the result is
float32 (float64 stays float64), whatever the autocast dtype; the next Linear casts it down as
usual. ``fused`` runs entirely in float32 with autocast disabled (its inputs are upcast).
``primitives`` runs the hidden MLP and the last layer's matmul in the autocast dtype (as
autocast would) and hands the gather-reduce its inputs in that dtype, to halve the memory
traffic; the Triton kernels and the twins accumulate in float32. Gradients have the dtypes of
the tensors they belong to (float32 parameters get float32 gradients).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Literal

import torch
from torch import nn

from pcseg.ops._conv_fused import FULL, SEPARABLE, FusedContinuousConv
from pcseg.ops._conv_primitives import (
    BACKENDS,
    GatherMulReduce,
    GatherOuterReduce,
    gather_mul_reduce,
    gather_mul_reduce_backward,
    gather_outer_reduce,
    gather_outer_reduce_backward,
    split_index,
)

__all__ = [
    "continuous_conv",
    "continuous_conv_reference",
    "gather_mul_reduce",
    "gather_mul_reduce_backward",
    "gather_outer_reduce",
    "gather_outer_reduce_backward",
    "split_kernel_mlp",
    "validate_inputs",
]

Kernel = Literal["full", "separable"]
Impl = Literal["auto", "fused", "primitives"]
Backend = Literal["auto", "triton", "torch"]
LOW_PRECISION = (torch.float16, torch.bfloat16)


def split_kernel_mlp(kernel_mlp: nn.Sequential) -> tuple[nn.Module, nn.Linear]:
    """(hidden part, last Linear) of a kernel MLP; raises TypeError if it does not end in Linear."""
    if not isinstance(kernel_mlp, nn.Sequential) or len(kernel_mlp) == 0:
        raise TypeError(
            f"kernel_mlp must be a non-empty nn.Sequential ending in nn.Linear, "
            f"got {type(kernel_mlp).__name__}"
        )
    last = kernel_mlp[-1]
    if not isinstance(last, nn.Linear):
        raise TypeError(f"kernel_mlp must end in nn.Linear, its last module is {last!r}")
    return kernel_mlp[:-1], last


def validate_inputs(
    feat: torch.Tensor,
    support: torch.Tensor,
    query: torch.Tensor,
    idx: torch.Tensor,
    kernel_mlp: nn.Sequential,
    kernel: str = FULL,
    weight: torch.Tensor | None = None,
    check_bounds: bool = True,
) -> int:
    """Check shapes, dtypes, devices and index range; return C_out.

    Raises ValueError (shapes, kernel name, MLP widths), TypeError (dtypes, module types) or
    IndexError (idx entries outside [-1, N)), each naming the offending argument.
    """
    if kernel not in (FULL, SEPARABLE):
        raise ValueError(f"kernel must be 'full' or 'separable', got {kernel!r}")
    for name, t in (("feat", feat), ("support", support), ("query", query)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
    if feat.dim() != 2:
        raise ValueError(f"feat must have shape (N, C_in), got {tuple(feat.shape)}")
    n, c_in = feat.shape
    if support.shape != (n, 3):
        raise ValueError(
            f"support must have shape (N, 3) = ({n}, 3) to match feat, got {tuple(support.shape)}"
        )
    if query.dim() != 2 or query.shape[1] != 3:
        raise ValueError(f"query must have shape (M, 3), got {tuple(query.shape)}")
    m = query.shape[0]
    if not isinstance(idx, torch.Tensor) or idx.dtype not in (torch.int64, torch.int32):
        got = idx.dtype if isinstance(idx, torch.Tensor) else type(idx).__name__
        raise TypeError(f"idx must be an int64 tensor (M, K), got {got}")
    if idx.dim() != 2 or idx.shape[0] != m:
        raise ValueError(
            f"idx must have shape (M, K) = ({m}, K) to match query, got {tuple(idx.shape)}"
        )
    if len({t.device for t in (feat, support, query, idx)}) != 1:
        raise ValueError("feat, support, query and idx must be on one device")
    if check_bounds and idx.numel() > 0:
        lo, hi = (int(v) for v in torch.aminmax(idx))
        if lo < -1 or hi >= n:
            raise IndexError(
                f"idx entries must be -1 (padding) or in [0, N={n}), found values in [{lo}, {hi}]"
            )
    _, last = split_kernel_mlp(kernel_mlp)
    if kernel == FULL:
        if weight is not None:
            raise ValueError("weight is only used by kernel='separable'; pass None for 'full'")
        if last.out_features % c_in:
            raise ValueError(
                f"kernel_mlp's last Linear emits {last.out_features} values, "
                f"not a multiple of C_in={c_in} (full kernel: C_in * C_out)"
            )
        return last.out_features // c_in
    if weight is None or weight.dim() != 2 or weight.shape[0] != c_in:
        got = None if weight is None else tuple(weight.shape)
        raise ValueError(f"separable kernel needs weight of shape (C_in={c_in}, C_out), got {got}")
    if last.out_features != weight.shape[1]:
        raise ValueError(
            f"kernel_mlp's last Linear emits {last.out_features} values but weight has "
            f"C_out={weight.shape[1]} columns (separable kernel: one value per output channel)"
        )
    return weight.shape[1]


def autocast_dtype(device_type: str) -> torch.dtype | None:
    """The autocast dtype active for ``device_type`` in this thread, or None when off."""
    if device_type not in ("cpu", "cuda", "xpu", "mps") or not torch.is_autocast_enabled(
        device_type
    ):
        return None
    return torch.get_autocast_dtype(device_type)


def _upcast(t: torch.Tensor | None) -> torch.Tensor | None:
    """float16/bfloat16 -> float32; other dtypes (and None) unchanged."""
    return t.float() if t is not None and t.dtype in LOW_PRECISION else t


def _inverse_count(valid: torch.Tensor, normalize: bool, dtype: torch.dtype) -> torch.Tensor:
    """(M,) 1/K_i (normalize) or 1, and 0 where a query has no valid neighbour."""
    count = valid.sum(1).to(dtype)
    if normalize:
        return torch.where(count > 0, 1.0 / count.clamp(min=1), torch.zeros_like(count))
    return (count > 0).to(dtype)


def continuous_conv_reference(
    feat: torch.Tensor,
    support: torch.Tensor,
    query: torch.Tensor,
    idx: torch.Tensor,
    kernel_mlp: nn.Sequential,
    kernel: Kernel = FULL,
    weight: torch.Tensor | None = None,
    normalize: bool = True,
) -> torch.Tensor:
    """The specification, literally; materialises M x K x C_in x C_out. For tests only.

    feat: (N, C_in); support: (N, 3); query: (M, 3); idx: (M, K) int64, -1 = padding;
    kernel_mlp: nn.Sequential ending in nn.Linear, R^3 -> C_in*C_out (full) or C_out
    (separable); weight: (C_in, C_out) for separable, None for full. Returns (M, C_out).
    """
    c_out = validate_inputs(feat, support, query, idx, kernel_mlp, kernel, weight)
    m, k = idx.shape
    safe, valid = split_index(idx.long())
    mask = valid.unsqueeze(-1).to(feat.dtype)
    z = query.unsqueeze(1) - support[safe]  # (M, K, 3)
    g = kernel_mlp(z)  # (M, K, C_in*C_out) or (M, K, C_out)
    f = feat[safe] * mask  # (M, K, C_in)
    if kernel == FULL:
        g = g.view(m, k, feat.shape[1], c_out)
        out = torch.einsum("mkc,mkcd->md", f, g)
    else:
        out = ((f @ weight) * g).sum(1)
    count = valid.sum(1, keepdim=True).to(feat.dtype)
    return out / count.clamp(min=1) if normalize else out


def continuous_conv(
    feat: torch.Tensor,
    support: torch.Tensor,
    query: torch.Tensor,
    idx: torch.Tensor,
    kernel_mlp: nn.Sequential,
    kernel: Kernel = FULL,
    weight: torch.Tensor | None = None,
    normalize: bool = True,
    impl: Impl = "auto",
    check_bounds: bool = True,
    backend: Backend = "auto",
    compile_mlp: bool = False,
) -> torch.Tensor:
    """Continuous convolution of ``feat`` on ``support`` evaluated at ``query``; exact, fast.

    Args:
        feat: (N, C_in) float, features of the support points.
        support: (N, 3) float, support positions.
        query: (M, 3) float, query positions (may be ``support`` itself).
        idx: (M, K) int64 global support indices of each query's neighbours, -1 = padding
            (e.g. ``pcseg.ops.knn(query, support, K).idx``).
        kernel_mlp: nn.Sequential ending in nn.Linear mapping z = query_i - support_j (3,) to
            C_in*C_out kernel values (full, read as a (C_in, C_out) matrix) or C_out (separable).
            Its hidden part must be stateless (evaluated again in backward).
        kernel: "full" or "separable" (see the module docstring).
        weight: (C_in, C_out) for "separable"; None for "full".
        normalize: divide by the number of valid neighbours K_i (mean instead of sum).
        impl: "auto" (primitives on CUDA or with backend="triton", fused elsewhere), "fused" or
            "primitives".
        check_bounds: verify idx in [-1, N) (one reduction); False on a trusted hot path.
        backend: gather-reduce implementation of the primitives path: "auto" (Triton for CUDA
            tensors when available, else PyTorch), "torch" or "triton" (RuntimeError where the
            kernels cannot run). Ignored by ``impl="fused"``.
        compile_mlp: run the primitives path's per-neighbour part (offsets, hidden MLP, ones
            column) through ``torch.compile`` (one fused kernel on a GPU instead of a handful
            of M x K passes). Ignored by ``impl="fused"``, which evaluates the MLP per chunk.

    Returns (M, C_out) in feat's dtype; under ``torch.autocast`` in float32 (see the module
    docstring). Queries without a valid neighbour get zeros.
    Memory: O(M*C_out + N*C_in + parameters) beyond the inputs, plus one query chunk.
    """
    validate_inputs(feat, support, query, idx, kernel_mlp, kernel, weight, check_bounds)
    if impl not in ("auto", "fused", "primitives"):
        raise ValueError(f"impl must be 'auto', 'fused' or 'primitives', got {impl!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if impl == "auto":
        impl = "primitives" if feat.is_cuda or backend == "triton" else "fused"
    low = autocast_dtype(feat.device.type)
    if impl == "fused" and low is not None:
        # float32 island: upcast the inputs, no autocast inside (the chunk workers are other
        # threads and never see the caller's autocast state anyway; this keeps one thread
        # and several threads identical).
        with torch.autocast(feat.device.type, enabled=False):
            return continuous_conv(
                _upcast(feat),
                _upcast(support),
                _upcast(query),
                idx,
                kernel_mlp,
                kernel,
                _upcast(weight),
                normalize,
                impl="fused",
                check_bounds=False,
            )
    idx = idx.long()
    hidden, last = split_kernel_mlp(kernel_mlp)
    c_in = feat.shape[1]
    h = last.in_features
    bias = last.bias if last.bias is not None else last.weight.new_zeros(last.out_features)
    # Last layer with its bias as one extra row: (H+1, C_in*C_out) or (H+1, C_out).
    w_aug = torch.cat([last.weight.t(), bias.unsqueeze(0)], dim=0)
    _, valid = split_index(idx)
    # Under autocast, the float32 (or float64) count makes the result float32 (or float64).
    count_dtype = torch.promote_types(feat.dtype, torch.float32) if low is not None else feat.dtype
    inv_count = _inverse_count(valid, normalize, count_dtype)
    src = feat if kernel == FULL else feat @ weight
    if kernel == FULL:
        head = w_aug.view(h + 1, c_in, -1).reshape((h + 1) * c_in, -1)
    else:
        head = w_aug

    if impl == "fused":
        params = tuple(p for p in hidden.parameters())
        return FusedContinuousConv.apply(
            src, query, support, idx, head, inv_count, hidden, h + 1, kernel, *params
        )
    out = _via_primitives(
        src, support, query, idx, hidden, head, kernel, inv_count, backend, low, compile_mlp
    )
    return out if low is not None else out.to(feat.dtype)


def kernel_features(
    hidden: nn.Module, query: torch.Tensor, support: torch.Tensor, safe: torch.Tensor
) -> torch.Tensor:
    """[phi(z), 1] for every (query, neighbour): (M, K, H+1), z = query_i - support[safe[i, k]].

    query (M, 3), support (N, 3), safe (M, K) int64 without padding (-1 replaced by any row;
    the gather-reduce skips padded slots)."""
    z = query.unsqueeze(1) - support[safe]
    phi = hidden(z)
    return torch.cat([phi, phi.new_ones(*phi.shape[:-1], 1)], dim=-1)


@functools.cache
def _compiled_kernel_features() -> Callable[..., torch.Tensor]:
    """``kernel_features`` through ``torch.compile`` (built once; dynamic shapes: M, K, N vary;
    the hidden MLP's parameters are graph inputs, so layers of one shape share the graph)."""
    return torch.compile(kernel_features, dynamic=True)


def _via_primitives(
    src: torch.Tensor,
    support: torch.Tensor,
    query: torch.Tensor,
    idx: torch.Tensor,
    hidden: nn.Module,
    head: torch.Tensor,
    kernel: str,
    inv_count: torch.Tensor,
    backend: str = "auto",
    low: torch.dtype | None = None,
    compile_mlp: bool = False,
) -> torch.Tensor:
    """The unfused composition: MLP with autograd (M x K tensors), then a gather-reduce primitive.

    full:      A = gather_outer_reduce([phi, 1], feat, idx) (M, H+1, C_in); out = vec(A) @ W.
    separable: g = [phi, 1] @ W (M, K, C_out); out = gather_mul_reduce(g, feat @ weight, idx).
    ``low``: the autocast dtype, or None; the gather-reduce inputs are cast to it (autocast
    treats the primitive like the batched matmul it is; it accumulates in float32).
    """
    safe, _ = split_index(idx)
    features = _compiled_kernel_features() if compile_mlp else kernel_features
    phi_aug = features(hidden, query, support, safe)
    cast = (lambda t: t.to(low)) if low is not None else (lambda t: t)
    if kernel == FULL:
        a = GatherOuterReduce.apply(cast(phi_aug), cast(src), idx, backend)
        out = a.reshape(a.shape[0], head.shape[0]) @ head
    else:
        g = phi_aug @ head
        out = GatherMulReduce.apply(cast(g), cast(src), idx, backend)
    return out * inv_count.unsqueeze(1)
