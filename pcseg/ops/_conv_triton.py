"""The Triton backend of the continuous convolution (CUDA; CPU tensors under TRITON_INTERPRET=1).

Same contract as :mod:`pcseg.ops._conv_chunked` (forward / backward on the Function's saved
inputs), with the hidden kernel MLP evaluated INSIDE the kernels of
:mod:`pcseg.ops.kernels.conv`, so no per-neighbour tensor (M x K x anything) is ever written:

- full:      A = outer_forward(...) (rows, H+1, C_in) per row chunk, out = vec(A) @ W;
             backward recomputes A per chunk for grad W = A^T g, and hands grad_A = g W^T to
             ``conv_backward`` (grad feat, grad query/support, grad MLP weights in one pass).
- separable: out = mul_forward(...) (the head applied in the kernel, gather-mul-reduce);
             backward: grad head = sum_i A_i * g_i (A recomputed per chunk), and
             ``conv_backward`` builds grad_A_i = head * g_i in registers.

The row chunks bound the per-query temporaries A and grad_A to :data:`CHUNK_BYTES`.
Supported hidden MLPs: ``Linear(3, h1), ReLU`` or ``Linear(3, h1), ReLU, Linear(h1, h2), ReLU``
(biases on), i.e. the shipped ``kernel_hidden`` [16] and [16, 32]; :func:`supports` says
whether a module qualifies, and ``continuous_conv`` falls back to the chunked backend if not.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pcseg.ops._conv_chunked import FULL, Needs, chunks

CHUNK_BYTES = 512 << 20  # per-query temporaries (A, grad_A) of one row chunk


def supports(hidden: nn.Module) -> bool:
    """Whether ``hidden`` is ``Linear(3, a), ReLU[, Linear(a, b), ReLU]`` with biases."""
    mods = list(hidden) if isinstance(hidden, nn.Sequential) else []
    if len(mods) not in (2, 4):
        return False
    linears, relus = mods[0::2], mods[1::2]
    if not all(isinstance(m, nn.Linear) and m.bias is not None for m in linears):
        return False
    if not all(type(m) is nn.ReLU for m in relus):
        return False
    widths = [3] + [lin.out_features for lin in linears]
    return all(lin.in_features == w for lin, w in zip(linears, widths[:-1], strict=True))


def _weights(params: tuple[torch.Tensor, ...], dtype: torch.dtype) -> Any:
    """The hidden MLP's parameters (W1, b1[, W2, b2]) laid out for the kernels."""
    from pcseg.ops.kernels.conv import MLPWeights

    w1, b1 = params[0], params[1]
    ha = w1.shape[0]

    def cast(t: torch.Tensor) -> torch.Tensor:  # .to() alone keeps a transposed view
        return t.detach().to(dtype).contiguous()

    if len(params) == 4:
        w2, b2 = params[2], params[3]
        return MLPWeights(cast(w1.t()), cast(b1), cast(w2.t()), cast(b2), ha, w2.shape[0], 2)
    dummy = w1.new_zeros(1, dtype=dtype)
    return MLPWeights(cast(w1.t()), cast(b1), dummy, dummy, ha, ha, 1)


def _rows(h1: int, c: int) -> int:
    return max(1, CHUNK_BYTES // max(1, h1 * c * 4))


def forward(
    feat: torch.Tensor,
    query: torch.Tensor,
    support: torch.Tensor,
    idx: torch.Tensor,
    head: torch.Tensor,
    inv_count: torch.Tensor,
    mode: str,
    params: tuple[torch.Tensor, ...],
) -> torch.Tensor:
    """out (M, C_out); arguments as in :class:`pcseg.ops.continuous_conv._ContinuousConv`."""
    from pcseg.ops.kernels.conv import mul_forward, outer_forward

    feat, query, support, idx = (t.contiguous() for t in (feat, query, support, idx))
    w = _weights(params, feat.dtype)
    if mode != FULL:
        return mul_forward(query, support, feat, idx, w, head.contiguous()) * inv_count[:, None]
    m, c = idx.shape[0], feat.shape[1]
    out = feat.new_empty(m, head.shape[1])
    for s, e in chunks(m, _rows(w.h + 1, c)):
        a = outer_forward(query[s:e], support, feat, idx[s:e], w)
        torch.mm(a.view(e - s, -1), head, out=out[s:e])
    return out.mul_(inv_count[:, None])


def backward(
    grad_out: torch.Tensor,
    feat: torch.Tensor,
    query: torch.Tensor,
    support: torch.Tensor,
    idx: torch.Tensor,
    head: torch.Tensor,
    inv_count: torch.Tensor,
    mode: str,
    params: tuple[torch.Tensor, ...],
    needs: Needs,
) -> tuple[torch.Tensor | None, ...]:
    """(grad feat, grad query, grad support, grad head, *grad params), None where not needed.

    One kernel pass computes all of them (the unneeded ones are dropped afterwards)."""
    from pcseg.ops.kernels.conv import ConvGrads, conv_backward, outer_forward

    feat, query, support, idx = (t.contiguous() for t in (feat, query, support, idx))
    w = _weights(params, feat.dtype)
    grad = (grad_out * inv_count[:, None]).contiguous()
    acc = ConvGrads(*(torch.zeros_like(t) for t in (feat, support, w.w1t, w.b1, w.w2t, w.b2)))
    grad_query = torch.empty_like(query)
    grad_head = torch.zeros_like(head)
    head_c = head.contiguous()
    m, c = idx.shape[0], feat.shape[1]
    for s, e in chunks(m, _rows(w.h + 1, c)):
        a = outer_forward(query[s:e], support, feat, idx[s:e], w)
        if mode == FULL:
            grad_head.addmm_(a.view(e - s, -1).t(), grad[s:e])
            chunk_grad = torch.mm(grad[s:e], head.t()).view(e - s, w.h + 1, c)
        else:
            grad_head.add_(torch.einsum("mhc,mc->hc", a, grad[s:e]))
            chunk_grad = grad[s:e]
        conv_backward(
            chunk_grad, head_c, query[s:e], support, feat, idx[s:e], w, acc, grad_query[s:e],
            separable=mode != FULL,
        )  # fmt: skip
    param_grads = [acc.w1t.t(), acc.b1] + ([acc.w2t.t(), acc.b2] if w.depth == 2 else [])
    param_grads = [
        g.to(p.dtype) if n else None
        for g, p, n in zip(param_grads, params, needs.params, strict=True)
    ]
    return (
        acc.feat if needs.feat else None,
        grad_query if needs.query else None,
        acc.support if needs.support else None,
        grad_head if needs.head else None,
        *param_grads,
    )
