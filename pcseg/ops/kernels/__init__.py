"""Triton GPU kernels for the continuous-convolution gather-reduce (optional ``triton`` extra).

The four primitives below are what :mod:`pcseg.ops.continuous_conv` calls for CUDA tensors; the
autograd wiring (and the PyTorch path for everything else) lives there. Importing this package
never imports triton: each function imports its kernel module on first call, and raises an
ImportError naming ``pip install 'pcseg[triton]'`` when triton is missing.

Notation: M queries, K neighbours, N support points, H hidden width (including the ones column
that carries the last layer's bias), C channels. ``idx`` (M, K) int64 (int32 accepted) holds
support indices, -1 for padding: a padded slot contributes nothing and receives zero gradient.

Dtypes: float16, bfloat16, float32 and float64 inputs. Sums accumulate in float32 (float64 when
any input is float64, so ``gradcheck`` can run through the kernels). A forward result has
``torch.promote_types`` of its two inputs' dtypes (feat's dtype when they agree); each gradient
has the dtype of the tensor it belongs to.

Devices: CUDA tensors, or CPU tensors when Triton runs in interpreter mode (``TRITON_INTERPRET=1``
set before the first kernel call: Triton fixes the mode when the kernels are defined). All
tensors of a call must share one device. ``check_bounds=True`` (default) verifies idx in
[-1, N) with one reduction (one device sync); pass False on a hot path whose idx is trusted.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from types import ModuleType

import torch

__all__ = [
    "gather_mul_reduce",
    "gather_mul_reduce_backward",
    "gather_outer_reduce",
    "gather_outer_reduce_backward",
    "triton_available",
]


def _interpreter_requested() -> bool:
    """Interpreter mode: frozen once the kernels are defined, else read from the environment."""
    utils = sys.modules.get(f"{__name__}._triton_utils")
    if utils is not None:
        return bool(utils.INTERPRETED)
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def triton_available(device: torch.device | str | None = None) -> bool:
    """Whether the kernels can run: triton installed and a device that can execute them.

    Without ``device``: triton importable and (a CUDA device present, or ``TRITON_INTERPRET=1``).
    With ``device``: for a CUDA device, triton importable and CUDA available (interpreter mode
    also runs CUDA tensors, slowly); for a CPU device, triton importable and the interpreter on.
    Does not import triton (only looks it up), so it is cheap to call per forward.
    """
    if importlib.util.find_spec("triton") is None:
        return False
    if device is None:
        return torch.cuda.is_available() or _interpreter_requested()
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.is_available()
    if dev.type == "cpu":
        return _interpreter_requested()
    return False


def _module(name: str) -> ModuleType:
    """Import a kernel module (and so triton) on first use."""
    return importlib.import_module(f"{__name__}.{name}")


def gather_outer_reduce(
    phi: torch.Tensor, feat: torch.Tensor, idx: torch.Tensor, *, check_bounds: bool = True
) -> torch.Tensor:
    """Gather + outer product + reduce, the core of the factorised "full" continuous conv.

    ``A[i] = sum_k phi[i, k, :, None] * feat[idx[i, k], None, :]`` over valid k, so that
    ``out_i = vec(A_i) @ W`` afterwards (a dense matmul in torch) equals the naive per-neighbour
    F_in x F_out kernel without ever materialising it.

    Args:
        phi: (M, K, H) hidden kernel-MLP features per (query, neighbour).
        feat: (N, C) support features.
        idx: (M, K) support indices, -1 = padding.
    Returns:
        A: (M, H, C); all-zero for a query with no valid neighbour.
    """
    return _module("outer_reduce").gather_outer_reduce(phi, feat, idx, check_bounds=check_bounds)


def gather_outer_reduce_backward(
    grad_a: torch.Tensor,
    phi: torch.Tensor,
    feat: torch.Tensor,
    idx: torch.Tensor,
    *,
    need_grad_phi: bool = True,
    need_grad_feat: bool = True,
    check_bounds: bool = True,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Backward of :func:`gather_outer_reduce`, one fused kernel.

    ``grad_phi[i, k] = grad_A[i] @ feat[idx[i, k]]`` (zero for padding) and
    ``grad_feat[j] = sum_{(i, k): idx[i, k] = j} phi[i, k] @ grad_A[i]`` (atomic scatter-add in
    the accumulation dtype; nondeterministic summation order on a GPU).

    Args:
        grad_a: (M, H, C) gradient of A.
        phi, feat, idx: the forward's inputs.
        need_grad_phi, need_grad_feat: skip (and return None for) a gradient nobody needs.
    Returns:
        (grad_phi (M, K, H) in phi's dtype, grad_feat (N, C) in feat's dtype).
    """
    return _module("outer_reduce").gather_outer_reduce_backward(
        grad_a,
        phi,
        feat,
        idx,
        need_grad_phi=need_grad_phi,
        need_grad_feat=need_grad_feat,
        check_bounds=check_bounds,
    )


def gather_mul_reduce(
    g: torch.Tensor, feat: torch.Tensor, idx: torch.Tensor, *, check_bounds: bool = True
) -> torch.Tensor:
    """Gather + multiply + reduce, the "separable" continuous conv.

    ``out[i] = sum_k g[i, k, :] * feat[idx[i, k], :]`` over valid k.

    Args:
        g: (M, K, C) kernel-MLP output per (query, neighbour).
        feat: (N, C) support features, already multiplied by the layer's weight.
        idx: (M, K) support indices, -1 = padding.
    Returns:
        out: (M, C); zeros for a query with no valid neighbour.
    """
    return _module("mul_reduce").gather_mul_reduce(g, feat, idx, check_bounds=check_bounds)


def gather_mul_reduce_backward(
    grad_out: torch.Tensor,
    g: torch.Tensor,
    feat: torch.Tensor,
    idx: torch.Tensor,
    *,
    need_grad_g: bool = True,
    need_grad_feat: bool = True,
    check_bounds: bool = True,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Backward of :func:`gather_mul_reduce`, one fused kernel.

    ``grad_g[i, k] = grad_out[i] * feat[idx[i, k]]`` (zero for padding) and
    ``grad_feat[j] = sum_{(i, k): idx[i, k] = j} grad_out[i] * g[i, k]`` (atomic scatter-add).

    Args:
        grad_out: (M, C) gradient of out.
        g, feat, idx: the forward's inputs.
        need_grad_g, need_grad_feat: skip (and return None for) a gradient nobody needs.
    Returns:
        (grad_g (M, K, C) in g's dtype, grad_feat (N, C) in feat's dtype).
    """
    return _module("mul_reduce").gather_mul_reduce_backward(
        grad_out,
        g,
        feat,
        idx,
        need_grad_g=need_grad_g,
        need_grad_feat=need_grad_feat,
        check_bounds=check_bounds,
    )
