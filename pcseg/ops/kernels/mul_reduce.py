"""Triton kernels for the "separable" continuous convolution: gather + multiply + reduce.

Forward, per query i (M queries, K neighbours, C channels; feat is already feat @ weight)::

    out[i] = sum_k g[i, k, :] * feat[idx[i, k], :]          idx -1 skipped

Kernel layout: a 2-D grid over (query blocks of BLOCK_M, channel blocks of BLOCK_C); each
program holds a (BLOCK_M, BLOCK_C) accumulator, walks the K neighbours loading one block of g
and one gathered block of feat rows per step (coalesced along channels), writes out once.

Backward, one fused kernel on the same grid::

    grad_g[i, k]         = grad_out[i] * feat[idx[i, k]]        a gather (zeros for padding)
    grad_feat[idx[i,k]] += grad_out[i] * g[i, k]                a scatter-add with atomics

grad_out's tile is loaded once per program and reused for all K neighbours. The atomics
(fp32, or fp64 for float64 inputs) make the summation order of grad_feat nondeterministic on
a GPU.
"""

from __future__ import annotations

from typing import Any

import torch

from ._checks import acc_dtype, check_float, check_index, check_same_device
from ._triton_utils import (
    INTERPRETED,
    INTERPRETER_BLOCKS,
    launch,
    next_pow2,
    or_scratch,
    tl,
    tl_acc,
    triton,
    tuned_once,
)


@triton.jit
def _mul_fwd_kernel(
    g_ptr,
    feat_ptr,
    idx_ptr,
    out_ptr,
    M,
    K,
    C,
    BLOCK_M: tl.constexpr,
    BLOCK_C: tl.constexpr,
    ACC: tl.constexpr,
):
    rows = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    cs = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    row_ok = rows < M
    c_ok = cs < C
    acc = tl.full((BLOCK_M, BLOCK_C), 0.0, ACC)
    for k in range(0, K):
        j = tl.load(idx_ptr + rows * K + k, mask=row_ok, other=-1).to(tl.int64)
        mask = (j >= 0)[:, None] & c_ok[None, :]
        w = tl.load(g_ptr + (rows * K + k)[:, None] * C + cs[None, :], mask=mask, other=0.0)
        f = tl.load(feat_ptr + j[:, None] * C + cs[None, :], mask=mask, other=0.0)
        acc += w.to(ACC) * f.to(ACC)
    out_offs = rows[:, None] * C + cs[None, :]
    out_mask = row_ok[:, None] & c_ok[None, :]
    tl.store(out_ptr + out_offs, acc.to(out_ptr.dtype.element_ty), mask=out_mask)


@triton.jit
def _mul_bwd_kernel(
    grad_ptr,
    g_ptr,
    feat_ptr,
    idx_ptr,
    grad_g_ptr,
    grad_feat_ptr,
    M,
    K,
    C,
    BLOCK_M: tl.constexpr,
    BLOCK_C: tl.constexpr,
    ACC: tl.constexpr,
    NEED_G: tl.constexpr,
    NEED_FEAT: tl.constexpr,
):
    rows = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    cs = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    row_ok = rows < M
    c_ok = cs < C
    go_mask = row_ok[:, None] & c_ok[None, :]
    go = tl.load(grad_ptr + rows[:, None] * C + cs[None, :], mask=go_mask, other=0.0).to(ACC)
    for k in range(0, K):
        j = tl.load(idx_ptr + rows * K + k, mask=row_ok, other=-1).to(tl.int64)
        mask = (j >= 0)[:, None] & c_ok[None, :]
        g_offs = (rows * K + k)[:, None] * C + cs[None, :]
        f_offs = j[:, None] * C + cs[None, :]
        if NEED_G:
            f = tl.load(feat_ptr + f_offs, mask=mask, other=0.0).to(ACC)
            # Padding rows store go * 0 = 0: grad_g is fully written, no memset needed.
            tl.store(grad_g_ptr + g_offs, (go * f).to(grad_g_ptr.dtype.element_ty), mask=go_mask)
        if NEED_FEAT:
            w = tl.load(g_ptr + g_offs, mask=mask, other=0.0).to(ACC)
            tl.atomic_add(grad_feat_ptr + f_offs, go * w, mask=mask)


def _configs() -> list[Any]:
    shapes = [(16, 32, 2), (32, 32, 4), (64, 32, 4), (16, 64, 4), (32, 64, 4), (64, 64, 8)]
    shapes += [(128, 32, 8), (8, 128, 4), (32, 128, 8), (128, 64, 8)]
    return [triton.Config({"BLOCK_M": m, "BLOCK_C": c}, num_warps=w) for m, c, w in shapes]


def _prune(configs: list[Any], nargs: dict[str, Any], **kwargs: Any) -> list[Any]:
    """Drop channel blocks far wider than C (they only add masked-out lanes)."""
    c_cap = next_pow2(nargs["C"], 32)
    kept = [cfg for cfg in configs if cfg.kwargs["BLOCK_C"] <= c_cap]
    return kept or configs[:1]


@tuned_once
def _fwd_tuned() -> Any:
    return triton.autotune(
        configs=_configs(), key=["C", "K"], prune_configs_by={"early_config_prune": _prune}
    )(_mul_fwd_kernel)


@tuned_once
def _bwd_tuned() -> Any:
    return triton.autotune(
        configs=_configs(),
        key=["C", "K"],
        prune_configs_by={"early_config_prune": _prune},
        reset_to_zero=["grad_feat_ptr"],  # benchmarking runs the atomics several times
    )(_mul_bwd_kernel)


def _interp_blocks(c: int) -> dict[str, int]:
    return {
        "BLOCK_M": INTERPRETER_BLOCKS["BLOCK_M"],
        "BLOCK_C": min(next_pow2(c, 2), INTERPRETER_BLOCKS["BLOCK_C"]),
    }


def _check(g: torch.Tensor, feat: torch.Tensor, idx: torch.Tensor, check_bounds: bool) -> None:
    check_float("g", g, 3, "(M, K, C)")
    check_float("feat", feat, 2, "(N, C)")
    m, k, c = g.shape
    n, c_feat = feat.shape
    if c_feat != c:
        raise ValueError(f"feat (N, C) = {(n, c_feat)} and g (M, K, C) = {(m, k, c)} differ in C")
    check_index(idx, m, n, check_bounds)
    if idx.shape[1] != k:
        raise ValueError(
            f"idx (M, K) = {tuple(idx.shape)} does not match g (M, K, C) = {(m, k, c)}"
        )


def gather_mul_reduce(
    g: torch.Tensor, feat: torch.Tensor, idx: torch.Tensor, *, check_bounds: bool = True
) -> torch.Tensor:
    """out (M, C) = sum over valid k of g[:, k, :] * feat[idx[:, k], :].

    See :func:`pcseg.ops.kernels.gather_mul_reduce` for the contract.
    """
    _check(g, feat, idx, check_bounds)
    device = check_same_device(INTERPRETED, g=g, feat=feat, idx=idx)
    m, k, c = g.shape
    n = feat.shape[0]
    out_dtype = torch.promote_types(g.dtype, feat.dtype)
    if m == 0 or k == 0 or c == 0 or n == 0:
        return torch.zeros((m, c), dtype=out_dtype, device=device)
    out = torch.empty((m, c), dtype=out_dtype, device=device)
    g, feat, idx = g.contiguous(), feat.contiguous(), idx.contiguous()
    launch(
        _mul_fwd_kernel,
        _fwd_tuned,
        lambda meta: (triton.cdiv(m, meta["BLOCK_M"]), triton.cdiv(c, meta["BLOCK_C"])),
        device,
        (g, feat, idx, out, m, k, c),
        interp_meta=_interp_blocks(c),
        ACC=tl_acc(acc_dtype(g.dtype, feat.dtype)),
    )
    return out


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
    """(grad_g (M, K, C), grad_feat (N, C)) of :func:`gather_mul_reduce`.

    See :func:`pcseg.ops.kernels.gather_mul_reduce_backward` for the contract.
    """
    check_float("grad_out", grad_out, 2, "(M, C)")
    _check(g, feat, idx, check_bounds)
    m, k, c = g.shape
    n = feat.shape[0]
    if tuple(grad_out.shape) != (m, c):
        raise ValueError(f"grad_out must have shape (M, C) = {(m, c)}, got {tuple(grad_out.shape)}")
    device = check_same_device(INTERPRETED, grad_out=grad_out, g=g, feat=feat, idx=idx)
    acc = acc_dtype(grad_out.dtype, g.dtype, feat.dtype)
    launchable = bool(m and k and c and n)
    grad_g = None
    if need_grad_g:  # the kernel writes every element, so empty suffices when it runs
        alloc = torch.empty if launchable else torch.zeros
        grad_g = alloc((m, k, c), dtype=g.dtype, device=device)
    grad_feat = torch.zeros((n, c), dtype=acc, device=device) if need_grad_feat else None
    if launchable and (need_grad_g or need_grad_feat):
        grad_out, g, feat, idx = (t.contiguous() for t in (grad_out, g, feat, idx))
        out_g, out_feat = or_scratch(grad_g, acc, device), or_scratch(grad_feat, acc, device)
        launch(
            _mul_bwd_kernel,
            _bwd_tuned,
            lambda meta: (triton.cdiv(m, meta["BLOCK_M"]), triton.cdiv(c, meta["BLOCK_C"])),
            device,
            (grad_out, g, feat, idx, out_g, out_feat, m, k, c),
            interp_meta=_interp_blocks(c),
            ACC=tl_acc(acc),
            NEED_G=need_grad_g,
            NEED_FEAT=need_grad_feat,
        )
    if grad_feat is not None:
        grad_feat = grad_feat.to(feat.dtype)
    return grad_g, grad_feat
