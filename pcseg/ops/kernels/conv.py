"""Triton kernels of the continuous convolution, the kernel MLP's hidden layers evaluated inside.

Notation: M queries (rows of this launch), K neighbours, N support points, C channels, HA the
first hidden width, H the last (H = HA for one hidden layer), H+1 with the ones column that
carries the head's bias. ``idx`` (M, K) int64, -1 = padding. Every kernel recomputes, per
(query, neighbour), the offset z = query_i - support_j and the hidden MLP

    phi(z) = relu(W2 relu(W1 z + b1) + b2)     (DEPTH = 2; DEPTH = 1: relu(W1 z + b1))

in registers, and never writes a per-neighbour tensor:

``outer_forward``  ("full")       A_i = sum_k [phi_ik, 1] (outer) feat_j      -> (M, H+1, C)
``mul_forward``    ("separable")  out_i = sum_k ([phi_ik, 1] @ head) * feat_j  -> (M, C)
``conv_backward``  (both)         given grad_A (full) or grad_out and head (separable):
    grad_feat[j]   += [phi_ik, 1] . grad_A_i                     atomic scatter-add
    grad_phi_ik     = grad_A_i . feat_j   -> back through the MLP in registers:
    grad W1, b1, W2, b2 (per-program sums, one atomic add each at the end),
    grad_query_i    = sum_k grad_z_ik     (rows owned by the program, plain store)
    grad_support[j] -= grad_z_ik          atomic scatter-add

The ones column is kept apart from the phi tile (a (BLOCK_M, BLOCK_C) accumulator of its own),
so BLOCK_H = next_pow2(H) and H = 16 or 32 fill their tiles exactly. Accumulation is float32
(float64 for float64 inputs: gradcheck); the callers pass inputs in the compute dtype. Atomics
make the summation order of the scatter-adds (hence their last bits) nondeterministic on a GPU.

Devices: CUDA tensors, or CPU tensors under Triton's interpreter (``TRITON_INTERPRET=1`` set
before this module is imported). The callers (``pcseg.ops._conv_triton``) validate the inputs.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from ._triton_utils import (
    INTERPRETED,
    INTERPRETER_BLOCKS,
    SUM_COMBINE,
    next_pow2,
    tl,
    tl_acc,
    triton,
    tuned_once,
)

# Register budget of the 3-D (BLOCK_M, BLOCK_H, BLOCK_C) tile, in elements.
_MAX_TILE = 16384


class MLPWeights(NamedTuple):
    """The hidden MLP laid out for the kernels, in the compute dtype, contiguous.

    w1t (3, HA) = W1^T, b1 (HA,), w2t (HA, H) = W2^T, b2 (H,); for DEPTH 1 w2t and b2 are
    1-element placeholders and H = HA.
    """

    w1t: torch.Tensor
    b1: torch.Tensor
    w2t: torch.Tensor
    b2: torch.Tensor
    ha: int
    h: int
    depth: int


# ------------------------------------------------------------------------------ jit helpers


@triton.jit
def _load_mlp(
    w1_ptr, b1_ptr, w2_ptr, b2_ptr, HA, H, BLOCK_HA: tl.constexpr, BLOCK_H: tl.constexpr,
    DEPTH: tl.constexpr, ACC: tl.constexpr,
):  # fmt: skip
    """The MLP's weights as register tiles (zero beyond HA / H, so padded lanes stay 0)."""
    ha = tl.arange(0, BLOCK_HA)
    hs = tl.arange(0, BLOCK_H)
    a_ok = ha < HA
    wx = tl.load(w1_ptr + ha, mask=a_ok, other=0.0).to(ACC)
    wy = tl.load(w1_ptr + HA + ha, mask=a_ok, other=0.0).to(ACC)
    wz = tl.load(w1_ptr + 2 * HA + ha, mask=a_ok, other=0.0).to(ACC)
    b1 = tl.load(b1_ptr + ha, mask=a_ok, other=0.0).to(ACC)
    if DEPTH == 2:
        w2 = tl.load(
            w2_ptr + ha[:, None] * H + hs[None, :],
            mask=a_ok[:, None] & (hs < H)[None, :],
            other=0.0,
        ).to(ACC)
        b2 = tl.load(b2_ptr + hs, mask=hs < H, other=0.0).to(ACC)
    else:
        w2 = tl.full((BLOCK_HA, BLOCK_H), 0.0, ACC)
        b2 = tl.full((BLOCK_H,), 0.0, ACC)
    return wx, wy, wz, b1, w2, b2


@triton.jit
def _hidden(zx, zy, zz, wx, wy, wz, b1, w2, b2, DEPTH: tl.constexpr):
    """(pre1 (BM, BLOCK_HA), pre2 (BM, BLOCK_H), phi (BM, BLOCK_H)) of the hidden MLP at z."""
    pre1 = zx[:, None] * wx[None, :] + zy[:, None] * wy[None, :] + zz[:, None] * wz[None, :]
    pre1 = pre1 + b1[None, :]
    a1 = tl.maximum(pre1, 0.0)
    if DEPTH == 2:
        pre2 = tl.reduce(a1[:, :, None] * w2[None, :, :], 1, SUM_COMBINE) + b2[None, :]
        phi = tl.maximum(pre2, 0.0)
    else:
        pre2 = pre1
        phi = a1
    return pre1, pre2, phi


@triton.jit
def _offsets(query_ptr, support_ptr, rows, row_ok, j, valid, ACC: tl.constexpr):
    """z = query_i - support_j, as three (BM,) vectors (zero where the slot is padding)."""
    qx = tl.load(query_ptr + rows * 3, mask=row_ok, other=0.0).to(ACC)
    qy = tl.load(query_ptr + rows * 3 + 1, mask=row_ok, other=0.0).to(ACC)
    qz = tl.load(query_ptr + rows * 3 + 2, mask=row_ok, other=0.0).to(ACC)
    sx = tl.load(support_ptr + j * 3, mask=valid, other=0.0).to(ACC)
    sy = tl.load(support_ptr + j * 3 + 1, mask=valid, other=0.0).to(ACC)
    sz = tl.load(support_ptr + j * 3 + 2, mask=valid, other=0.0).to(ACC)
    return qx - sx, qy - sy, qz - sz


# ------------------------------------------------------------------------------ kernels


@triton.jit
def _outer_fwd_kernel(
    query_ptr, support_ptr, feat_ptr, idx_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, out_ptr,
    M, K, C, HA, H,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HA: tl.constexpr,
    BLOCK_H: tl.constexpr, DEPTH: tl.constexpr, ACC: tl.constexpr,
):  # fmt: skip
    rows = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    hs = tl.arange(0, BLOCK_H)
    cs = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    row_ok = rows < M
    c_ok = cs < C
    wx, wy, wz, b1, w2, b2 = _load_mlp(
        w1_ptr, b1_ptr, w2_ptr, b2_ptr, HA, H, BLOCK_HA, BLOCK_H, DEPTH, ACC
    )
    acc = tl.full((BLOCK_M, BLOCK_H, BLOCK_C), 0.0, ACC)
    acc1 = tl.full((BLOCK_M, BLOCK_C), 0.0, ACC)  # the ones column: sum of valid feat rows
    for k in range(0, K):
        j = tl.load(idx_ptr + rows * K + k, mask=row_ok, other=-1).to(tl.int64)
        valid = j >= 0
        zx, zy, zz = _offsets(query_ptr, support_ptr, rows, row_ok, j, valid, ACC)
        _, _, phi = _hidden(zx, zy, zz, wx, wy, wz, b1, w2, b2, DEPTH)
        f = tl.load(
            feat_ptr + j[:, None] * C + cs[None, :], mask=valid[:, None] & c_ok[None, :], other=0.0
        ).to(ACC)
        acc += phi[:, :, None] * f[:, None, :]
        acc1 += f
    h1 = H + 1
    offs = rows[:, None, None] * (h1 * C) + hs[None, :, None] * C + cs[None, None, :]
    mask = row_ok[:, None, None] & (hs < H)[None, :, None] & c_ok[None, None, :]
    tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)
    offs1 = rows[:, None] * (h1 * C) + H * C + cs[None, :]
    tl.store(
        out_ptr + offs1, acc1.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & c_ok[None, :]
    )


@triton.jit
def _mul_fwd_kernel(
    query_ptr, support_ptr, feat_ptr, idx_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, head_ptr, out_ptr,
    M, K, C, HA, H,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HA: tl.constexpr,
    BLOCK_H: tl.constexpr, DEPTH: tl.constexpr, ACC: tl.constexpr,
):  # fmt: skip
    rows = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    hs = tl.arange(0, BLOCK_H)
    cs = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    row_ok = rows < M
    c_ok = cs < C
    wx, wy, wz, b1, w2, b2 = _load_mlp(
        w1_ptr, b1_ptr, w2_ptr, b2_ptr, HA, H, BLOCK_HA, BLOCK_H, DEPTH, ACC
    )
    head = tl.load(
        head_ptr + hs[:, None] * C + cs[None, :], mask=(hs < H)[:, None] & c_ok[None, :], other=0.0
    ).to(ACC)
    head1 = tl.load(head_ptr + H * C + cs, mask=c_ok, other=0.0).to(ACC)  # the bias row
    acc = tl.full((BLOCK_M, BLOCK_C), 0.0, ACC)
    for k in range(0, K):
        j = tl.load(idx_ptr + rows * K + k, mask=row_ok, other=-1).to(tl.int64)
        valid = j >= 0
        zx, zy, zz = _offsets(query_ptr, support_ptr, rows, row_ok, j, valid, ACC)
        _, _, phi = _hidden(zx, zy, zz, wx, wy, wz, b1, w2, b2, DEPTH)
        g = tl.reduce(phi[:, :, None] * head[None, :, :], 1, SUM_COMBINE) + head1[None, :]
        f = tl.load(
            feat_ptr + j[:, None] * C + cs[None, :], mask=valid[:, None] & c_ok[None, :], other=0.0
        ).to(ACC)
        acc += g * f
    offs = rows[:, None] * C + cs[None, :]
    tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & c_ok[None, :])


@triton.jit
def _grad_tile(grad_ptr, head_ptr, rows, row_ok, hs, cs, c_ok, C, H, SEPARABLE: tl.constexpr, ACC: tl.constexpr):  # fmt: skip
    """(grad_A tile (BM, BLOCK_H, BLOCK_C) for the phi rows, its ones-column row (BM, BLOCK_C)).

    full: read from grad_A (M, H+1, C); separable: grad_A_i = head * grad_out_i, built here."""
    h_ok = hs < H
    if SEPARABLE:
        go = tl.load(
            grad_ptr + rows[:, None] * C + cs[None, :],
            mask=row_ok[:, None] & c_ok[None, :],
            other=0.0,
        ).to(ACC)
        head = tl.load(
            head_ptr + hs[:, None] * C + cs[None, :], mask=h_ok[:, None] & c_ok[None, :], other=0.0
        ).to(ACC)
        head1 = tl.load(head_ptr + H * C + cs, mask=c_ok, other=0.0).to(ACC)
        return head[None, :, :] * go[:, None, :], head1[None, :] * go
    base = rows * ((H + 1) * C)
    ga = tl.load(
        grad_ptr + base[:, None, None] + hs[None, :, None] * C + cs[None, None, :],
        mask=row_ok[:, None, None] & h_ok[None, :, None] & c_ok[None, None, :],
        other=0.0,
    ).to(ACC)
    ga1 = tl.load(
        grad_ptr + base[:, None] + H * C + cs[None, :],
        mask=row_ok[:, None] & c_ok[None, :],
        other=0.0,
    ).to(ACC)
    return ga, ga1


@triton.jit
def _gather_backward(
    grad_ptr, head_ptr, feat_ptr, grad_feat_ptr, rows, row_ok, j, valid, hs, phi, C, H,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_H: tl.constexpr,
    SEPARABLE: tl.constexpr, ACC: tl.constexpr,
):  # fmt: skip
    """For one neighbour slot: grad_phi (BM, BLOCK_H) = grad_A_i . feat_j (a gather), and
    grad_feat[j] += [phi, 1] . grad_A_i (an atomic scatter-add), over channel chunks."""
    gphi = tl.full((BLOCK_M, BLOCK_H), 0.0, ACC)
    for c0 in range(0, C, BLOCK_C):
        cs = c0 + tl.arange(0, BLOCK_C)
        c_ok = cs < C
        fmask = valid[:, None] & c_ok[None, :]
        foffs = j[:, None] * C + cs[None, :]
        f = tl.load(feat_ptr + foffs, mask=fmask, other=0.0).to(ACC)
        ga, ga1 = _grad_tile(grad_ptr, head_ptr, rows, row_ok, hs, cs, c_ok, C, H, SEPARABLE, ACC)
        gphi += tl.reduce(ga * f[:, None, :], 2, SUM_COMBINE)
        gf = tl.reduce(phi[:, :, None] * ga, 1, SUM_COMBINE) + ga1
        tl.atomic_add(grad_feat_ptr + foffs, gf, mask=fmask)
    return gphi


@triton.jit
def _conv_bwd_kernel(
    grad_ptr, head_ptr, query_ptr, support_ptr, feat_ptr, idx_ptr,
    w1_ptr, b1_ptr, w2_ptr, b2_ptr,
    grad_feat_ptr, grad_query_ptr, grad_support_ptr,
    grad_w1_ptr, grad_b1_ptr, grad_w2_ptr, grad_b2_ptr,
    M, K, C, HA, H,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HA: tl.constexpr,
    BLOCK_H: tl.constexpr, DEPTH: tl.constexpr, SEPARABLE: tl.constexpr, ACC: tl.constexpr,
):  # fmt: skip
    rows = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    ha = tl.arange(0, BLOCK_HA)
    hs = tl.arange(0, BLOCK_H)
    row_ok = rows < M
    wx, wy, wz, b1, w2, b2 = _load_mlp(
        w1_ptr, b1_ptr, w2_ptr, b2_ptr, HA, H, BLOCK_HA, BLOCK_H, DEPTH, ACC
    )
    gqx = tl.full((BLOCK_M,), 0.0, ACC)
    gqy = tl.full((BLOCK_M,), 0.0, ACC)
    gqz = tl.full((BLOCK_M,), 0.0, ACC)
    gwx = tl.full((BLOCK_HA,), 0.0, ACC)
    gwy = tl.full((BLOCK_HA,), 0.0, ACC)
    gwz = tl.full((BLOCK_HA,), 0.0, ACC)
    gb1 = tl.full((BLOCK_HA,), 0.0, ACC)
    gw2 = tl.full((BLOCK_HA, BLOCK_H), 0.0, ACC)
    gb2 = tl.full((BLOCK_H,), 0.0, ACC)
    for k in range(0, K):
        j = tl.load(idx_ptr + rows * K + k, mask=row_ok, other=-1).to(tl.int64)
        valid = j >= 0
        zx, zy, zz = _offsets(query_ptr, support_ptr, rows, row_ok, j, valid, ACC)
        pre1, pre2, phi = _hidden(zx, zy, zz, wx, wy, wz, b1, w2, b2, DEPTH)
        # 1. the gather-reduce's backward: grad_phi (a gather), grad_feat (a scatter-add)
        gphi = _gather_backward(
            grad_ptr, head_ptr, feat_ptr, grad_feat_ptr, rows, row_ok, j, valid, hs, phi, C, H,
            BLOCK_M, BLOCK_C, BLOCK_H, SEPARABLE, ACC,
        )  # fmt: skip
        # 2. back through the hidden MLP (f = 0 at padding, so gphi is 0 there)
        if DEPTH == 2:
            dpre2 = tl.where(pre2 > 0, gphi, 0.0)
            a1 = tl.maximum(pre1, 0.0)
            gw2 += tl.reduce(a1[:, :, None] * dpre2[:, None, :], 0, SUM_COMBINE)
            gb2 += tl.reduce(dpre2, 0, SUM_COMBINE)
            da1 = tl.reduce(dpre2[:, None, :] * w2[None, :, :], 2, SUM_COMBINE)
        else:
            da1 = gphi
        dpre1 = tl.where(pre1 > 0, da1, 0.0)
        gwx += tl.reduce(dpre1 * zx[:, None], 0, SUM_COMBINE)
        gwy += tl.reduce(dpre1 * zy[:, None], 0, SUM_COMBINE)
        gwz += tl.reduce(dpre1 * zz[:, None], 0, SUM_COMBINE)
        gb1 += tl.reduce(dpre1, 0, SUM_COMBINE)
        # 3. z = query_i - support_j
        dzx = tl.reduce(dpre1 * wx[None, :], 1, SUM_COMBINE)
        dzy = tl.reduce(dpre1 * wy[None, :], 1, SUM_COMBINE)
        dzz = tl.reduce(dpre1 * wz[None, :], 1, SUM_COMBINE)
        gqx += dzx
        gqy += dzy
        gqz += dzz
        tl.atomic_add(grad_support_ptr + j * 3, -dzx, mask=valid)
        tl.atomic_add(grad_support_ptr + j * 3 + 1, -dzy, mask=valid)
        tl.atomic_add(grad_support_ptr + j * 3 + 2, -dzz, mask=valid)
    dtype = grad_query_ptr.dtype.element_ty
    tl.store(grad_query_ptr + rows * 3, gqx.to(dtype), mask=row_ok)
    tl.store(grad_query_ptr + rows * 3 + 1, gqy.to(dtype), mask=row_ok)
    tl.store(grad_query_ptr + rows * 3 + 2, gqz.to(dtype), mask=row_ok)
    a_ok = ha < HA
    tl.atomic_add(grad_w1_ptr + ha, gwx, mask=a_ok)
    tl.atomic_add(grad_w1_ptr + HA + ha, gwy, mask=a_ok)
    tl.atomic_add(grad_w1_ptr + 2 * HA + ha, gwz, mask=a_ok)
    tl.atomic_add(grad_b1_ptr + ha, gb1, mask=a_ok)
    if DEPTH == 2:
        h_ok = hs < H
        tl.atomic_add(
            grad_w2_ptr + ha[:, None] * H + hs[None, :], gw2, mask=a_ok[:, None] & h_ok[None, :]
        )
        tl.atomic_add(grad_b2_ptr + hs, gb2, mask=h_ok)


# ------------------------------------------------------------------------------ launchers


def _configs() -> list[Any]:
    shapes = [(16, 32, 4), (32, 32, 4), (32, 64, 4), (64, 32, 8), (8, 64, 4), (16, 64, 4)]
    shapes += [(64, 64, 8), (128, 32, 8), (8, 32, 2)]
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
    return kept or [min(configs, key=lambda cfg: cfg.kwargs["BLOCK_M"] * cfg.kwargs["BLOCK_C"])]


def _autotuned(kernel: Any, reset: list[str] | None = None) -> Any:
    return tuned_once(
        lambda: triton.autotune(
            configs=_configs(),
            key=["C", "K", "HA", "H"],
            prune_configs_by={"early_config_prune": _prune},
            reset_to_zero=reset,  # benchmarking runs the atomics several times
        )(kernel)
    )


_TUNED = {
    "outer": _autotuned(_outer_fwd_kernel),
    "mul": _autotuned(_mul_fwd_kernel),
    "bwd": _autotuned(
        _conv_bwd_kernel,
        ["grad_feat_ptr", "grad_support_ptr", "grad_w1_ptr", "grad_b1_ptr", "grad_w2_ptr",
         "grad_b2_ptr"],
    ),
}  # fmt: skip
_KERNELS = {"outer": _outer_fwd_kernel, "mul": _mul_fwd_kernel, "bwd": _conv_bwd_kernel}


def _launch(
    name: str, m: int, c: int, args: tuple, w: MLPWeights, c_grid: bool, **flags: Any
) -> None:
    """Launch kernel ``name`` over (query blocks[, channel blocks]): fixed large blocks under
    the interpreter (tests shrink them), autotuned ones on a GPU."""
    meta = {
        "BLOCK_HA": next_pow2(w.ha, 2),
        "BLOCK_H": next_pow2(w.h, 2),
        "DEPTH": w.depth,
        "ACC": tl_acc(w.w1t.dtype),
        **flags,
    }

    def grid(blocks: dict[str, int]) -> tuple[int, ...]:
        rows = triton.cdiv(m, blocks["BLOCK_M"])
        return (rows, triton.cdiv(c, blocks["BLOCK_C"])) if c_grid else (rows,)

    if INTERPRETED:
        blocks = {
            "BLOCK_M": INTERPRETER_BLOCKS["BLOCK_M"],
            "BLOCK_C": min(next_pow2(c, 2), INTERPRETER_BLOCKS["BLOCK_C"]),
        }
        _KERNELS[name][grid(blocks)](*args, **blocks, **meta)
        return
    with torch.cuda.device(args[0].device):
        _TUNED[name]()[grid](*args, **meta)


def _mlp_args(w: MLPWeights) -> tuple[torch.Tensor, ...]:
    return (w.w1t, w.b1, w.w2t, w.b2)


def outer_forward(
    query: torch.Tensor, support: torch.Tensor, feat: torch.Tensor, idx: torch.Tensor, w: MLPWeights
) -> torch.Tensor:
    """A (M, H+1, C) = sum over valid k of [phi(query_i - support_j), 1] (outer) feat_j.

    query (M, 3), support (N, 3), feat (N, C), idx (M, K) int64: contiguous, compute dtype."""
    m, k = idx.shape
    c = feat.shape[1]
    out = torch.empty(m, w.h + 1, c, dtype=feat.dtype, device=feat.device)
    if m and k and c:
        args = (query, support, feat, idx, *_mlp_args(w), out, m, k, c, w.ha, w.h)
        _launch("outer", m, c, args, w, c_grid=True)
    else:
        out.zero_()
    return out


def mul_forward(
    query: torch.Tensor,
    support: torch.Tensor,
    feat: torch.Tensor,
    idx: torch.Tensor,
    w: MLPWeights,
    head: torch.Tensor,
) -> torch.Tensor:
    """out (M, C) = sum over valid k of ([phi(query_i - support_j), 1] @ head) * feat_j.

    head (H+1, C); feat is already feat @ weight (N, C)."""
    m, k = idx.shape
    c = feat.shape[1]
    out = torch.zeros(m, c, dtype=feat.dtype, device=feat.device)
    if m and k and c:
        args = (query, support, feat, idx, *_mlp_args(w), head, out, m, k, c, w.ha, w.h)
        _launch("mul", m, c, args, w, c_grid=True)
    return out


class ConvGrads(NamedTuple):
    """Gradient accumulators the backward kernel adds into (compute dtype, zero-initialised
    by the caller, shared by all row chunks): feat (N, C), support (N, 3), w1t (3, HA),
    b1 (HA,), w2t (HA, H), b2 (H,)."""

    feat: torch.Tensor
    support: torch.Tensor
    w1t: torch.Tensor
    b1: torch.Tensor
    w2t: torch.Tensor
    b2: torch.Tensor


def conv_backward(
    grad: torch.Tensor,
    head: torch.Tensor,
    query: torch.Tensor,
    support: torch.Tensor,
    feat: torch.Tensor,
    idx: torch.Tensor,
    w: MLPWeights,
    acc: ConvGrads,
    grad_query: torch.Tensor,
    separable: bool,
) -> None:
    """Backward of both forwards for the rows of ``idx`` (M, K).

    grad: grad_A (M, H+1, C) (full) or grad_out (M, C) already scaled by 1/K_i (separable,
    with head (H+1, C)). Adds into ``acc``; writes grad_query (M, 3)."""
    m, k = idx.shape
    c = feat.shape[1]
    if not (m and k and c):
        grad_query.zero_()
        return
    args = (grad, head, query, support, feat, idx, *_mlp_args(w), acc.feat, grad_query)
    args += (acc.support, acc.w1t, acc.b1, acc.w2t, acc.b2, m, k, c, w.ha, w.h)
    _launch("bwd", m, c, args, w, c_grid=False, SEPARABLE=separable)
