"""Plain-PyTorch references of the continuous convolution: for tests and benchmarks only.

- :func:`continuous_conv_reference` is the specification, literally: it builds the
  M x K x C_in x C_out kernel tensor (31 GB at 120k points, K 16, 64 -> 64 channels).
- :func:`continuous_conv_composed` is the factorised formula composed of ordinary autograd
  ops (the hidden MLP on (M, K, 3) offsets, a gather, an einsum): the numbers of the fast
  paths, with M x K x H tensors kept for backward. It is the "plain PyTorch" baseline that
  ``scripts/bench_gpu.py`` compares the Triton kernels against.

Both take validated inputs (see :func:`pcseg.ops.continuous_conv.validate_inputs`).
"""

from __future__ import annotations

import torch
from torch import nn

FULL = "full"


def _split(kernel_mlp: nn.Sequential) -> tuple[nn.Module, nn.Linear]:
    return kernel_mlp[:-1], kernel_mlp[-1]


def continuous_conv_reference(
    feat: torch.Tensor,
    support: torch.Tensor,
    query: torch.Tensor,
    idx: torch.Tensor,
    kernel_mlp: nn.Sequential,
    kernel: str = FULL,
    weight: torch.Tensor | None = None,
    normalize: bool = True,
) -> torch.Tensor:
    """The specification, literally; materialises M x K x C_in x C_out. For tests only.

    feat: (N, C_in); support: (N, 3); query: (M, 3); idx: (M, K) int64, -1 = padding;
    kernel_mlp: nn.Sequential ending in nn.Linear, R^3 -> C_in*C_out (full) or C_out
    (separable); weight: (C_in, C_out) for separable, None for full. Returns (M, C_out).
    """
    m, k = idx.shape
    valid = idx >= 0
    safe = idx.long().clamp(min=0)
    mask = valid.unsqueeze(-1).to(feat.dtype)
    z = query.unsqueeze(1) - support[safe]  # (M, K, 3)
    g = kernel_mlp(z)  # (M, K, C_in*C_out) or (M, K, C_out)
    f = feat[safe] * mask  # (M, K, C_in)
    if kernel == FULL:
        out = torch.einsum("mkc,mkcd->md", f, g.view(m, k, feat.shape[1], -1))
    else:
        out = ((f @ weight) * g).sum(1)
    count = valid.sum(1, keepdim=True).to(out.dtype)
    return out / count.clamp(min=1) if normalize else out


def continuous_conv_composed(
    feat: torch.Tensor,
    support: torch.Tensor,
    query: torch.Tensor,
    idx: torch.Tensor,
    kernel_mlp: nn.Sequential,
    kernel: str = FULL,
    weight: torch.Tensor | None = None,
    normalize: bool = True,
) -> torch.Tensor:
    """The factorised formula in ordinary autograd ops (O(M K (H + C)) memory, kept for backward).

    full:      A_i = sum_k [phi_ik, 1] (outer) f_j (M, H+1, C_in); out = vec(A) @ W.
    separable: g = [phi, 1] @ W (M, K, C_out); out = sum_k g * (f_j @ weight).
    Same arguments and result as :func:`continuous_conv_reference`.
    """
    hidden, last = _split(kernel_mlp)
    valid = idx >= 0
    safe = idx.long().clamp(min=0)
    z = query.unsqueeze(1) - support[safe]
    phi = hidden(z)
    phi_aug = torch.cat([phi, phi.new_ones(*phi.shape[:-1], 1)], -1) * valid.unsqueeze(-1)
    bias = last.bias if last.bias is not None else last.weight.new_zeros(last.out_features)
    w_aug = torch.cat([last.weight.t(), bias.unsqueeze(0)], 0)  # (H+1, out_features)
    if kernel == FULL:
        c_out = last.out_features // feat.shape[1]
        a = torch.einsum("mkh,mkc->mhc", phi_aug, feat[safe])
        out = a.reshape(a.shape[0], -1) @ w_aug.reshape(-1, c_out)  # ((H+1) C_in, C_out)
    else:
        out = ((phi_aug @ w_aug) * (feat @ weight)[safe]).sum(1)
    count = valid.sum(1, keepdim=True).to(out.dtype)
    return out / count.clamp(min=1) if normalize else out
