"""Parametric continuous convolution (Wang et al., CVPR 2018): public function -> autograd
Function -> backend chosen by the tensor's device.

For query x_i with neighbours y_j = support[idx[i, k]] (idx (M, K) int64, -1 = padding) and the
offset z_ij = x_i - y_j, a kernel MLP g maps z to kernel values and

    full:       out_i = (1/K_i) sum_j  feat_j @ g(z_ij).view(C_in, C_out)
    separable:  out_i = (1/K_i) sum_j  (feat_j @ weight) * g(z_ij)        g emits C_out values

summing over the K_i valid neighbours (1/K_i only with ``normalize``; a query with no valid
neighbour gets zeros). Both backends split g into its hidden part phi (R^3 -> R^H) and its last
Linear W ((H+1) rows with the bias), reduce A_i = sum_j [phi_ij, 1] (outer) feat_j, and apply W
once per query, so nothing of size M x K x C_in x C_out is built. The autograd Function saves
only its inputs (features, positions, idx, W, the MLP's parameters) and per-query counts;
backward recomputes the per-neighbour kernel values, so no M x K x H tensor is kept:

- ``"triton"`` (CUDA tensors when triton is installed and the MLP is supported):
  :mod:`pcseg.ops._conv_triton`, the hidden MLP evaluated inside fused Triton kernels.
- ``"chunked"`` (CPU, and any other case): :mod:`pcseg.ops._conv_chunked`, PyTorch ops on
  cache-sized query chunks run by worker threads.

References for tests and benchmarks: :func:`continuous_conv_reference` (the formula, literally)
and ``pcseg.ops._conv_reference.continuous_conv_composed`` (plain autograd ops).

Mixed precision: under ``torch.autocast`` the op is a float32 island: low-precision inputs are
upcast, sums accumulate in float32, the result is float32 (float64 stays float64); the next
Linear casts it down as usual. Gradients have the dtypes of the tensors they belong to.
"""

from __future__ import annotations

import contextlib
import importlib.util
from typing import Any, Literal

import torch
from torch import nn

from pcseg.ops import _conv_chunked, _conv_triton
from pcseg.ops._conv_chunked import FULL, SEPARABLE, Needs
from pcseg.ops._conv_reference import continuous_conv_reference

__all__ = ["continuous_conv", "continuous_conv_reference", "validate_inputs"]

Kernel = Literal["full", "separable"]
Impl = Literal["auto", "chunked", "triton"]
IMPLS = ("auto", "chunked", "triton")
_ALIASES = {"fused": "chunked", "primitives": "auto"}  # names before issue 12
LOW_PRECISION = (torch.float16, torch.bfloat16)


def split_kernel_mlp(kernel_mlp: nn.Sequential) -> tuple[nn.Module, nn.Linear]:
    """(hidden part, last Linear) of a kernel MLP; raises TypeError if it does not end in Linear."""
    if not isinstance(kernel_mlp, nn.Sequential) or len(kernel_mlp) == 0:
        raise TypeError(
            f"continuous_conv: kernel_mlp must be a non-empty nn.Sequential ending in nn.Linear, "
            f"got {type(kernel_mlp).__name__}"
        )
    last = kernel_mlp[-1]
    if not isinstance(last, nn.Linear):
        raise TypeError(f"continuous_conv: kernel_mlp must end in nn.Linear, its last is {last!r}")
    return kernel_mlp[:-1], last


def _check_tensors(
    feat: torch.Tensor, support: torch.Tensor, query: torch.Tensor, idx: torch.Tensor
) -> None:
    for name, t in (("feat", feat), ("support", support), ("query", query)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(
                f"continuous_conv: {name} must be a torch.Tensor, got {type(t).__name__}"
            )
        if not t.is_floating_point():
            raise TypeError(
                f"continuous_conv: {name} must be a floating-point tensor, got {t.dtype}"
            )
    if feat.dim() != 2:
        raise ValueError(
            f"continuous_conv: feat must have shape (N, C_in), got {tuple(feat.shape)}"
        )
    n = feat.shape[0]
    if support.shape != (n, 3):
        raise ValueError(
            f"continuous_conv: support must have shape (N, 3) = ({n}, 3) to match feat, "
            f"got {tuple(support.shape)}"
        )
    if query.dim() != 2 or query.shape[1] != 3:
        raise ValueError(f"continuous_conv: query must have shape (M, 3), got {tuple(query.shape)}")
    if not isinstance(idx, torch.Tensor) or idx.dtype not in (torch.int64, torch.int32):
        got = idx.dtype if isinstance(idx, torch.Tensor) else type(idx).__name__
        raise TypeError(f"continuous_conv: idx must be an int64 tensor (M, K), got {got}")
    if idx.dim() != 2 or idx.shape[0] != query.shape[0]:
        raise ValueError(
            f"continuous_conv: idx must have shape (M, K) = ({query.shape[0]}, K) to match "
            f"query, got {tuple(idx.shape)}"
        )
    if len({t.device for t in (feat, support, query, idx)}) != 1:
        raise ValueError("continuous_conv: feat, support, query and idx must be on one device")


def _check_head(c_in: int, last: nn.Linear, kernel: str, weight: torch.Tensor | None) -> int:
    """C_out implied by the last Linear (and ``weight`` for separable)."""
    if kernel == FULL:
        if weight is not None:
            raise ValueError("continuous_conv: weight is only used by kernel='separable'")
        if last.out_features % c_in:
            raise ValueError(
                f"continuous_conv: kernel_mlp's last Linear emits {last.out_features} values, "
                f"not a multiple of C_in={c_in} (full kernel: C_in * C_out)"
            )
        return last.out_features // c_in
    if weight is None or weight.dim() != 2 or weight.shape[0] != c_in:
        got = None if weight is None else tuple(weight.shape)
        raise ValueError(
            f"continuous_conv: separable kernel needs weight of shape (C_in={c_in}, C_out), got {got}"
        )
    if last.out_features != weight.shape[1]:
        raise ValueError(
            f"continuous_conv: kernel_mlp's last Linear emits {last.out_features} values but "
            f"weight has C_out={weight.shape[1]} columns (separable: one value per channel)"
        )
    return weight.shape[1]


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
        raise ValueError(f"continuous_conv: kernel must be 'full' or 'separable', got {kernel!r}")
    _check_tensors(feat, support, query, idx)
    n = feat.shape[0]
    if check_bounds and idx.numel() > 0:
        lo, hi = (int(v) for v in torch.aminmax(idx))
        if lo < -1 or hi >= n:
            raise IndexError(
                f"continuous_conv: idx entries must be -1 (padding) or in [0, N={n}), "
                f"found values in [{lo}, {hi}]"
            )
    _, last = split_kernel_mlp(kernel_mlp)
    return _check_head(feat.shape[1], last, kernel, weight)


def _triton_runs(device: torch.device) -> bool:
    """Whether the Triton kernels can run on ``device`` (CUDA, or CPU under the interpreter)."""
    if importlib.util.find_spec("triton") is None:
        return False
    from pcseg.ops.kernels import triton_available

    return triton_available(device)


def resolve_impl(impl: str, hidden: nn.Module, device: torch.device) -> str:
    """The backend ``continuous_conv`` runs: "triton" or "chunked" (see the module docstring)."""
    impl = _ALIASES.get(impl, impl)
    if impl not in IMPLS:
        raise ValueError(f"continuous_conv: impl must be one of {IMPLS}, got {impl!r}")
    if impl == "chunked":
        return impl
    if impl == "auto":
        ok = device.type == "cuda" and _conv_triton.supports(hidden) and _triton_runs(device)
        return "triton" if ok else "chunked"
    if not _conv_triton.supports(hidden):
        raise ValueError(
            "continuous_conv: impl='triton' needs a hidden kernel MLP Linear(3, a), ReLU"
            f"[, Linear(a, b), ReLU] with biases, got {hidden}"
        )
    if not _triton_runs(device):
        raise RuntimeError(
            f"continuous_conv: impl='triton' needs triton and CUDA tensors (or CPU tensors with "
            f"TRITON_INTERPRET=1 set before the kernels are imported); got {device} tensors"
        )
    return impl


def _no_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast off: the backends compute in their inputs' dtype (backward may run inside an
    autocast region too)."""
    if device.type in ("cpu", "cuda", "xpu", "mps"):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


class _ContinuousConv(torch.autograd.Function):
    """Inputs: feat (N, C) (features, or feat @ weight for separable); query (M, 3); support
    (N, 3); idx (M, K) int64, -1 padding; head: (H+1)*C x C_out (full) or (H+1, C_out)
    (separable), the last Linear with its bias as a last row; inv_count: (M,) 1/K_i (or 1),
    0 for queries without neighbours; then the hidden MLP, the mode, the backend name, the
    chunked backend's worker count and the hidden MLP's parameters.
    Saves the tensor inputs only: nothing per neighbour."""

    @staticmethod
    def forward(
        ctx: Any,
        feat: torch.Tensor,
        query: torch.Tensor,
        support: torch.Tensor,
        idx: torch.Tensor,
        head: torch.Tensor,
        inv_count: torch.Tensor,
        hidden: nn.Module,
        mode: str,
        impl: str,
        workers: int | None,
        *params: torch.Tensor,
    ) -> torch.Tensor:
        with _no_autocast(feat.device):
            if impl == "triton":
                out = _conv_triton.forward(feat, query, support, idx, head, inv_count, mode, params)
            else:
                out = _conv_chunked.forward(
                    feat, query, support, idx, head, inv_count, hidden, mode, workers
                )
        ctx.save_for_backward(feat, query, support, idx, head, inv_count, *params)
        ctx.hidden, ctx.mode, ctx.impl, ctx.workers = hidden, mode, impl, workers
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        feat, query, support, idx, head, inv_count, *params = ctx.saved_tensors
        need = ctx.needs_input_grad
        needs = Needs(need[0], need[1], need[2], need[4], tuple(bool(x) for x in need[10:]))
        args = (grad_out.contiguous(), feat, query, support, idx, head, inv_count)
        with _no_autocast(feat.device):
            if ctx.impl == "triton":
                grads = _conv_triton.backward(*args, ctx.mode, tuple(params), needs)
            else:
                grads = _conv_chunked.backward(
                    *args, ctx.hidden, ctx.mode, tuple(params), needs, ctx.workers
                )
        g_feat, g_query, g_support, g_head, *g_params = grads
        return (g_feat, g_query, g_support, None, g_head, None, None, None, None, None, *g_params)


def _upcast(t: torch.Tensor | None) -> torch.Tensor | None:
    """float16/bfloat16 -> float32; other dtypes (and None) unchanged."""
    return t.float() if t is not None and t.dtype in LOW_PRECISION else t


def _inverse_count(valid: torch.Tensor, normalize: bool, dtype: torch.dtype) -> torch.Tensor:
    """(M,) 1/K_i (normalize) or 1, and 0 where a query has no valid neighbour."""
    count = valid.sum(1).to(dtype)
    if normalize:
        return torch.where(count > 0, 1.0 / count.clamp(min=1), torch.zeros_like(count))
    return (count > 0).to(dtype)


def continuous_conv(
    feat: torch.Tensor,
    support: torch.Tensor,
    query: torch.Tensor,
    idx: torch.Tensor,
    kernel_mlp: nn.Sequential,
    kernel: Kernel = FULL,
    weight: torch.Tensor | None = None,
    normalize: bool = True,
    *,
    impl: Impl = "auto",
    check_bounds: bool = True,
    workers: int | None = None,
) -> torch.Tensor:
    """Continuous convolution of ``feat`` on ``support`` evaluated at ``query``; exact, lean.

    Args:
        feat: (N, C_in) float, features of the support points.
        support: (N, 3) float, support positions.
        query: (M, 3) float, query positions (may be ``support`` itself).
        idx: (M, K) int64 global support indices of each query's neighbours, -1 = padding
            (e.g. ``pcseg.ops.knn(query, support, K).idx``).
        kernel_mlp: nn.Sequential ending in nn.Linear mapping z = query_i - support_j (3,) to
            C_in*C_out kernel values (full, read as a (C_in, C_out) matrix) or C_out (separable).
            Its hidden part must be stateless (it is evaluated again in backward).
        kernel: "full" or "separable" (see the module docstring).
        weight: (C_in, C_out) for "separable"; None for "full".
        normalize: divide by the number of valid neighbours K_i (mean instead of sum).
        impl: "auto" (Triton for CUDA tensors when triton is installed and the hidden MLP is
            ``Linear, ReLU[, Linear, ReLU]``; "chunked" otherwise), "chunked" or "triton".
        check_bounds: verify idx in [-1, N) (one reduction); False on a trusted hot path.
        workers: worker threads of the chunked backend on CPU (None: torch.get_num_threads()).

    Returns (M, C_out) in feat's dtype; under ``torch.autocast`` float32 (float64 stays).
    float16/bfloat16 inputs are computed in float32 in any case (and cast back without autocast).
    Queries without a valid neighbour get zeros. Memory kept for backward: the inputs and
    (M,) counts, O(N*C_in + M*K) index entries; no per-neighbour kernel values.
    """
    validate_inputs(feat, support, query, idx, kernel_mlp, kernel, weight, check_bounds)
    hidden, last = split_kernel_mlp(kernel_mlp)
    backend = resolve_impl(impl, hidden, feat.device)
    autocast = feat.device.type in ("cpu", "cuda") and torch.is_autocast_enabled(feat.device.type)
    out_dtype = torch.float32 if autocast and feat.dtype in LOW_PRECISION else feat.dtype
    with _no_autocast(feat.device):  # float32 island (module docstring)
        feat, support, query, weight = (_upcast(t) for t in (feat, support, query, weight))
        idx = idx.long()
        c_in = feat.shape[1]
        bias = last.bias if last.bias is not None else last.weight.new_zeros(last.out_features)
        # Last layer with its bias as one extra row: (H+1, C_in*C_out) or (H+1, C_out).
        head = torch.cat([last.weight.t(), bias.unsqueeze(0)], dim=0).to(feat.dtype)
        if kernel == FULL:
            head = head.reshape(-1, last.out_features // c_in)  # ((H+1)*C_in, C_out)
        inv_count = _inverse_count(idx >= 0, normalize, feat.dtype)
        src = feat if kernel == FULL else feat @ weight.to(feat.dtype)
        params = tuple(hidden.parameters())
        out = _ContinuousConv.apply(
            src, query, support, idx, head, inv_count, hidden, kernel, backend, workers, *params
        )
        return out.to(out_dtype)
