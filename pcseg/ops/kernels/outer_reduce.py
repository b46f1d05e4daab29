"""Triton kernels for the "full" continuous convolution: gather + outer product + reduce.

Forward, per query i (M queries, K neighbours, H hidden incl. the ones column, C channels)::

    A[i] = sum_k phi[i, k, :, None] * feat[idx[i, k], None, :]       (H, C), idx -1 skipped

Kernel layout: a 2-D grid over (query blocks of BLOCK_M, channel blocks of BLOCK_C); each
program keeps a (BLOCK_M, BLOCK_H, BLOCK_C) accumulator in registers, walks the K neighbours
(one gathered (BLOCK_M, BLOCK_C) row-block of feat and one (BLOCK_M, BLOCK_H) block of phi per
step) and writes its tile of A once. BLOCK_H = next_pow2(H): the whole hidden width lives in
one tile. The operation is memory-bound (reads phi and the gathered feat rows once, writes A
once), so the broadcast-FMA form is used rather than tensor-core dots with K padded to 16.

Backward, one fused kernel over query blocks::

    grad_phi[i, k]      = grad_A[i] @ feat[idx[i, k]]          a gather, written exactly once
    grad_feat[idx[i,k]] += phi[i, k] @ grad_A[i]               a scatter-add: fp32/fp64 atomics

Each program loads phi and the gathered feat rows once per neighbour, loops over channel chunks
of grad_A (re-read per neighbour from L1/L2), accumulates grad_phi in registers across chunks,
and atomically adds its grad_feat rows. Atomics make grad_feat summation order (and hence the
last bits) nondeterministic on a GPU.
"""

from __future__ import annotations

from typing import Any

import torch

from ._checks import acc_dtype, check_float, check_index, check_same_device
from ._triton_utils import (
    INTERPRETED,
    INTERPRETER_BLOCKS,
    SUM_COMBINE,
    launch,
    next_pow2,
    or_scratch,
    tl,
    tl_acc,
    triton,
    tuned_once,
)

# Register budget for the 3-D tile (elements): 16k fp32 over 4-8 warps = 32-64 regs/thread.
_MAX_TILE = 16384


@triton.jit
def _outer_fwd_kernel(
    phi_ptr,
    feat_ptr,
    idx_ptr,
    out_ptr,
    M,
    K,
    H,
    C,
    BLOCK_M: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_H: tl.constexpr,
    ACC: tl.constexpr,
):
    rows = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    hs = tl.arange(0, BLOCK_H)
    cs = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    row_ok = rows < M
    h_ok = hs < H
    c_ok = cs < C
    acc = tl.full((BLOCK_M, BLOCK_H, BLOCK_C), 0.0, ACC)
    for k in range(0, K):
        j = tl.load(idx_ptr + rows * K + k, mask=row_ok, other=-1).to(tl.int64)
        valid = j >= 0
        p = tl.load(
            phi_ptr + (rows * K + k)[:, None] * H + hs[None, :],
            mask=valid[:, None] & h_ok[None, :],
            other=0.0,
        ).to(ACC)
        f = tl.load(
            feat_ptr + j[:, None] * C + cs[None, :],
            mask=valid[:, None] & c_ok[None, :],
            other=0.0,
        ).to(ACC)
        acc += p[:, :, None] * f[:, None, :]
    offs = rows[:, None, None] * (H * C) + hs[None, :, None] * C + cs[None, None, :]
    mask = row_ok[:, None, None] & h_ok[None, :, None] & c_ok[None, None, :]
    tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _outer_bwd_kernel(
    grad_ptr,
    phi_ptr,
    feat_ptr,
    idx_ptr,
    grad_phi_ptr,
    grad_feat_ptr,
    M,
    K,
    H,
    C,
    BLOCK_M: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_H: tl.constexpr,
    ACC: tl.constexpr,
    NEED_PHI: tl.constexpr,
    NEED_FEAT: tl.constexpr,
):
    rows = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    hs = tl.arange(0, BLOCK_H)
    row_ok = rows < M
    h_ok = hs < H
    for k in range(0, K):
        j = tl.load(idx_ptr + rows * K + k, mask=row_ok, other=-1).to(tl.int64)
        valid = j >= 0
        phi_offs = (rows * K + k)[:, None] * H + hs[None, :]
        if NEED_FEAT:
            p = tl.load(phi_ptr + phi_offs, mask=valid[:, None] & h_ok[None, :], other=0.0)
            p = p.to(ACC)
        gp = tl.full((BLOCK_M, BLOCK_H), 0.0, ACC)
        for c0 in range(0, C, BLOCK_C):
            cs = c0 + tl.arange(0, BLOCK_C)
            c_ok = cs < C
            g = tl.load(
                grad_ptr
                + rows[:, None, None] * (H * C)
                + hs[None, :, None] * C
                + cs[None, None, :],
                mask=valid[:, None, None] & h_ok[None, :, None] & c_ok[None, None, :],
                other=0.0,
            ).to(ACC)
            fmask = valid[:, None] & c_ok[None, :]
            foffs = j[:, None] * C + cs[None, :]
            if NEED_PHI:
                f = tl.load(feat_ptr + foffs, mask=fmask, other=0.0).to(ACC)
                gp += tl.reduce(g * f[:, None, :], 2, SUM_COMBINE)
            if NEED_FEAT:
                gf = tl.reduce(p[:, :, None] * g, 1, SUM_COMBINE)
                tl.atomic_add(grad_feat_ptr + foffs, gf, mask=fmask)
        if NEED_PHI:
            gp_mask = row_ok[:, None] & h_ok[None, :]
            tl.store(grad_phi_ptr + phi_offs, gp.to(grad_phi_ptr.dtype.element_ty), mask=gp_mask)


def _configs() -> list[Any]:
    shapes = [(4, 32, 2), (8, 32, 4), (16, 32, 4), (32, 32, 8), (4, 64, 4), (8, 64, 4)]
    shapes += [(16, 64, 8), (2, 128, 4), (8, 128, 8), (16, 16, 4), (64, 16, 8)]
    return [triton.Config({"BLOCK_M": m, "BLOCK_C": c}, num_warps=w) for m, c, w in shapes]


def _prune(configs: list[Any], nargs: dict[str, Any], **kwargs: Any) -> list[Any]:
    """Drop tiles over the register budget and channel blocks far wider than C."""
    block_h = kwargs["BLOCK_H"]
    c_cap = next_pow2(nargs["C"], 16)
    kept = [
        cfg
        for cfg in configs
        if cfg.kwargs["BLOCK_M"] * block_h * cfg.kwargs["BLOCK_C"] <= _MAX_TILE
        and cfg.kwargs["BLOCK_C"] <= c_cap
    ]
    if kept:
        return kept
    return [min(configs, key=lambda cfg: cfg.kwargs["BLOCK_M"] * cfg.kwargs["BLOCK_C"])]


@tuned_once
def _fwd_tuned() -> Any:
    return triton.autotune(
        configs=_configs(), key=["H", "C", "K"], prune_configs_by={"early_config_prune": _prune}
    )(_outer_fwd_kernel)


@tuned_once
def _bwd_tuned() -> Any:
    return triton.autotune(
        configs=_configs(),
        key=["H", "C", "K"],
        prune_configs_by={"early_config_prune": _prune},
        reset_to_zero=["grad_feat_ptr"],  # benchmarking runs the atomics several times
    )(_outer_bwd_kernel)


def _interp_blocks(c: int) -> dict[str, int]:
    return {
        "BLOCK_M": INTERPRETER_BLOCKS["BLOCK_M"],
        "BLOCK_C": min(next_pow2(c, 2), INTERPRETER_BLOCKS["BLOCK_C"]),
    }


def gather_outer_reduce(
    phi: torch.Tensor, feat: torch.Tensor, idx: torch.Tensor, *, check_bounds: bool = True
) -> torch.Tensor:
    """A (M, H, C) = sum over valid k of phi[:, k, :, None] * feat[idx[:, k], None, :].

    See :func:`pcseg.ops.kernels.gather_outer_reduce` for the contract.
    """
    check_float("phi", phi, 3, "(M, K, H)")
    check_float("feat", feat, 2, "(N, C)")
    m, k, h = phi.shape
    n, c = feat.shape
    check_index(idx, m, n, check_bounds)
    if idx.shape[1] != k:
        raise ValueError(
            f"idx (M, K) = {tuple(idx.shape)} does not match phi (M, K, H) = {(m, k, h)}"
        )
    device = check_same_device(INTERPRETED, phi=phi, feat=feat, idx=idx)
    out_dtype = torch.promote_types(phi.dtype, feat.dtype)
    if m == 0 or k == 0 or h == 0 or c == 0 or n == 0:
        return torch.zeros((m, h, c), dtype=out_dtype, device=device)
    out = torch.empty((m, h, c), dtype=out_dtype, device=device)
    phi, feat, idx = phi.contiguous(), feat.contiguous(), idx.contiguous()
    launch(
        _outer_fwd_kernel,
        _fwd_tuned,
        lambda meta: (triton.cdiv(m, meta["BLOCK_M"]), triton.cdiv(c, meta["BLOCK_C"])),
        device,
        (phi, feat, idx, out, m, k, h, c),
        interp_meta=_interp_blocks(c),
        BLOCK_H=next_pow2(h, 2),
        ACC=tl_acc(acc_dtype(phi.dtype, feat.dtype)),
    )
    return out


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
    """(grad_phi (M, K, H), grad_feat (N, C)) of :func:`gather_outer_reduce`.

    See :func:`pcseg.ops.kernels.gather_outer_reduce_backward` for the contract.
    """
    check_float("grad_A", grad_a, 3, "(M, H, C)")
    check_float("phi", phi, 3, "(M, K, H)")
    check_float("feat", feat, 2, "(N, C)")
    m, k, h = phi.shape
    n, c = feat.shape
    if tuple(grad_a.shape) != (m, h, c):
        raise ValueError(
            f"grad_A must have shape (M, H, C) = {(m, h, c)}, got {tuple(grad_a.shape)}"
        )
    check_index(idx, m, n, check_bounds)
    if idx.shape[1] != k:
        raise ValueError(
            f"idx (M, K) = {tuple(idx.shape)} does not match phi (M, K, H) = {(m, k, h)}"
        )
    device = check_same_device(INTERPRETED, grad_A=grad_a, phi=phi, feat=feat, idx=idx)
    acc = acc_dtype(grad_a.dtype, phi.dtype, feat.dtype)
    launchable = bool(m and k and h and c and n)
    grad_phi = None
    if need_grad_phi:  # the kernel writes every element (zeros for padding) when it runs
        alloc = torch.empty if launchable else torch.zeros
        grad_phi = alloc((m, k, h), dtype=phi.dtype, device=device)
    grad_feat = torch.zeros((n, c), dtype=acc, device=device) if need_grad_feat else None
    if launchable and (need_grad_phi or need_grad_feat):
        grad_a, phi, feat, idx = (t.contiguous() for t in (grad_a, phi, feat, idx))
        out_phi, out_feat = or_scratch(grad_phi, acc, device), or_scratch(grad_feat, acc, device)
        launch(
            _outer_bwd_kernel,
            _bwd_tuned,
            lambda meta: (triton.cdiv(m, meta["BLOCK_M"]),),
            device,
            (grad_a, phi, feat, idx, out_phi, out_feat, m, k, h, c),
            interp_meta=_interp_blocks(c),
            BLOCK_H=next_pow2(h, 2),
            ACC=tl_acc(acc),
            NEED_PHI=need_grad_phi,
            NEED_FEAT=need_grad_feat,
        )
    if grad_feat is not None:
        grad_feat = grad_feat.to(feat.dtype)
    return grad_phi, grad_feat
