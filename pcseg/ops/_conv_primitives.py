"""PyTorch gather-reduce primitives of the continuous convolution (the CPU twins of the Triton ones).

Both primitives read a neighbour table ``idx`` (M, K) int64 with -1 as padding, gather rows of a
support tensor and reduce over the K neighbours of every query:

    gather_outer_reduce(phi, feat, idx) -> A     A[i] = sum_k phi[i, k, :, None] * feat[idx[i, k], None, :]
    gather_mul_reduce(g, feat, idx)     -> out   out[i] = sum_k g[i, k, :] * feat[idx[i, k], :]

``pcseg.ops.kernels`` implements the same four functions (forward and backward) in Triton with
identical signatures; the tests compare the two. Here the work is done on query chunks so the
gathered neighbour features (chunk x K x C) stay in cache and are never materialised for all M
queries at once. Padding entries contribute nothing and receive zero gradient.

The ``torch.autograd.Function`` wrappers save only ``idx`` and the (small or already existing)
inputs, and recompute the gathers in backward.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

# Working-set target of one query chunk, in bytes (~1600 queries at K = 16, 64 + 17 channels).
# On the 2-core reference machine (1 MiB L2 per core, 16 MiB L3) 2, 4 and 8 MiB were within 4 %
# of each other when the cores were idle (0.5 MiB: 40 % slower, dispatch overhead). When other
# processes share the cores, every small parallel op waits at an OpenMP barrier for a
# descheduled thread, so time grows with the NUMBER of ops: measured 4 MiB 16-67 s, 16 MiB
# 5-19 s, 64 MiB 9-10 s for a 120k layer that takes 1.5 s idle. 8 MiB halves the op count of
# 4 MiB at ~3 % idle cost.
CHUNK_BYTES = 8 << 20
MIN_CHUNK, MAX_CHUNK = 32, 8192


def chunk_size(k: int, width: int, itemsize: int = 4) -> int:
    """Queries per chunk so that a (chunk, k, width) gather stays near :data:`CHUNK_BYTES`."""
    per_query = max(1, k * width * itemsize)
    return int(min(MAX_CHUNK, max(MIN_CHUNK, CHUNK_BYTES // per_query)))


def chunks(m: int, size: int) -> Iterator[tuple[int, int]]:
    """``(start, end)`` ranges covering ``range(m)`` in steps of ``size``."""
    for start in range(0, m, size):
        yield start, min(m, start + size)


def split_index(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, K) idx with -1 padding -> (safe idx with padding replaced by 0, valid mask (M, K))."""
    valid = idx >= 0
    return idx.clamp(min=0), valid


def _acc_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float64 stays float64; everything else accumulates in float32."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _gather(feat: torch.Tensor, safe: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(N, C) rows at (m, K) ``safe`` indices, padding rows zeroed -> (m, K, C)."""
    m, k = safe.shape
    rows = feat.index_select(0, safe.reshape(-1)).view(m, k, feat.shape[1])
    return rows * valid.unsqueeze(-1).to(rows.dtype)


@torch.no_grad()
def gather_outer_reduce(phi: torch.Tensor, feat: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """A[i] = sum over valid k of phi[i, k] (outer) feat[idx[i, k]].

    phi: (M, K, H) float; feat: (N, C) float; idx: (M, K) int64, -1 = padding.
    Returns A: (M, H, C) in phi's dtype (float32 accumulation, float64 kept).
    One batched (H x K) @ (K x C) matmul per query chunk.
    """
    m, k, h = phi.shape
    acc = _acc_dtype(phi, feat)
    out = torch.zeros(m, h, feat.shape[1], dtype=acc, device=phi.device)
    safe, valid = split_index(idx)
    feat = feat.to(acc)
    for s, e in chunks(m, chunk_size(k, feat.shape[1] + h)):
        rows = _gather(feat, safe[s:e], valid[s:e])
        torch.bmm(phi[s:e].to(acc).transpose(1, 2), rows, out=out[s:e])
    return out.to(phi.dtype)


@torch.no_grad()
def gather_outer_reduce_backward(
    grad_a: torch.Tensor, phi: torch.Tensor, feat: torch.Tensor, idx: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of :func:`gather_outer_reduce`.

    grad_a: (M, H, C). Returns grad_phi (M, K, H) = gathered feat . grad_a (zero at padding) and
    grad_feat (N, C) = scatter-add over (i, k) of phi[i, k] . grad_a[i] (``index_add_``).
    """
    m, k, h = phi.shape
    n, c = feat.shape
    acc = _acc_dtype(grad_a, phi, feat)
    grad_phi = torch.zeros(m, k, h, dtype=acc, device=phi.device)
    grad_feat = torch.zeros(n, c, dtype=acc, device=feat.device)
    safe, valid = split_index(idx)
    feat_acc = feat.to(acc)
    for s, e in chunks(m, chunk_size(k, c + h)):
        g = grad_a[s:e].to(acc)
        rows = _gather(feat_acc, safe[s:e], valid[s:e])
        torch.bmm(rows, g.transpose(1, 2), out=grad_phi[s:e])
        grad_rows = torch.bmm(phi[s:e].to(acc), g) * valid[s:e].unsqueeze(-1)
        grad_feat.index_add_(0, safe[s:e].reshape(-1), grad_rows.view(-1, c))
    return grad_phi.to(phi.dtype), grad_feat.to(feat.dtype)


@torch.no_grad()
def gather_mul_reduce(g: torch.Tensor, feat: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """out[i] = sum over valid k of g[i, k] * feat[idx[i, k]] (elementwise over channels).

    g: (M, K, C) float; feat: (N, C) float; idx: (M, K) int64, -1 = padding. Returns (M, C).
    """
    m, k, c = g.shape
    acc = _acc_dtype(g, feat)
    out = torch.zeros(m, c, dtype=acc, device=g.device)
    safe, valid = split_index(idx)
    feat = feat.to(acc)
    for s, e in chunks(m, chunk_size(k, c)):
        rows = _gather(feat, safe[s:e], valid[s:e])
        torch.sum(rows.mul_(g[s:e].to(acc)), dim=1, out=out[s:e])
    return out.to(g.dtype)


@torch.no_grad()
def gather_mul_reduce_backward(
    grad_out: torch.Tensor, g: torch.Tensor, feat: torch.Tensor, idx: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of :func:`gather_mul_reduce`.

    grad_out: (M, C). Returns grad_g (M, K, C) = grad_out[i] * feat[idx[i, k]] (zero at padding)
    and grad_feat (N, C) = scatter-add of g[i, k] * grad_out[i] over valid (i, k).
    """
    m, k, c = g.shape
    acc = _acc_dtype(grad_out, g, feat)
    grad_g = torch.zeros(m, k, c, dtype=acc, device=g.device)
    grad_feat = torch.zeros(feat.shape, dtype=acc, device=feat.device)
    safe, valid = split_index(idx)
    feat_acc = feat.to(acc)
    for s, e in chunks(m, chunk_size(k, c)):
        go = grad_out[s:e].to(acc).unsqueeze(1)
        rows = _gather(feat_acc, safe[s:e], valid[s:e])
        torch.mul(rows, go, out=grad_g[s:e])
        grad_rows = g[s:e].to(acc) * go * valid[s:e].unsqueeze(-1)
        grad_feat.index_add_(0, safe[s:e].reshape(-1), grad_rows.view(-1, c))
    return grad_g.to(g.dtype), grad_feat.to(feat.dtype)


Primitives = tuple[Callable[..., torch.Tensor], Callable[..., tuple[torch.Tensor, torch.Tensor]]]


def _triton_primitives(name: str, device: torch.device) -> Primitives | None:
    """The Triton forward/backward pair called ``name`` from ``pcseg.ops.kernels``, or None.

    Imported lazily, only for CUDA tensors, so CPU code never imports triton. None when triton
    or the kernels module is missing (or cannot run on ``device``): the caller then uses the
    PyTorch twins above.
    """
    try:
        from pcseg.ops import kernels
    except ImportError:
        return None
    available = getattr(kernels, "triton_available", None)
    if available is not None and not available(device):
        return None
    fwd = getattr(kernels, name, None)
    bwd = getattr(kernels, f"{name}_backward", None)
    return (fwd, bwd) if fwd is not None and bwd is not None else None


BACKENDS = ("auto", "triton", "torch")


def select_primitives(name: str, tensor: torch.Tensor, backend: str = "auto") -> Primitives:
    """Backend for primitive ``name``: ``"auto"`` chooses by the tensor's device (Triton on CUDA
    when available, else torch); ``"torch"`` forces the PyTorch twins on any device;
    ``"triton"`` forces the kernels and raises RuntimeError where they cannot run."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch":
        return _TORCH[name]
    if tensor.is_cuda or backend == "triton":
        found = _triton_primitives(name, tensor.device)
        if found is not None:
            return found
        if backend == "triton":
            raise RuntimeError(
                f"backend='triton' needs triton and a device that runs its kernels (CUDA, or "
                f"CPU with TRITON_INTERPRET=1); {tensor.device} tensors cannot use them here"
            )
    return _TORCH[name]


_TORCH: dict[str, Primitives] = {
    "gather_outer_reduce": (gather_outer_reduce, gather_outer_reduce_backward),
    "gather_mul_reduce": (gather_mul_reduce, gather_mul_reduce_backward),
}


class GatherOuterReduce(torch.autograd.Function):
    """Autograd wrapper of ``gather_outer_reduce``; saves phi, feat and idx only (no gathers).

    ``apply(phi, feat, idx, backend="auto")``: see :func:`select_primitives`."""

    @staticmethod
    def forward(
        ctx, phi: torch.Tensor, feat: torch.Tensor, idx: torch.Tensor, backend: str = "auto"
    ) -> torch.Tensor:
        fwd, bwd = select_primitives("gather_outer_reduce", phi, backend)
        ctx.bwd = bwd
        ctx.save_for_backward(phi, feat, idx)
        return fwd(phi, feat, idx)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_a: torch.Tensor):
        phi, feat, idx = ctx.saved_tensors
        grad_phi, grad_feat = ctx.bwd(grad_a.contiguous(), phi, feat, idx)
        return grad_phi, grad_feat, None, None


class GatherMulReduce(torch.autograd.Function):
    """Autograd wrapper of ``gather_mul_reduce``; saves g, feat and idx only (no gathers).

    ``apply(g, feat, idx, backend="auto")``: see :func:`select_primitives`."""

    @staticmethod
    def forward(
        ctx, g: torch.Tensor, feat: torch.Tensor, idx: torch.Tensor, backend: str = "auto"
    ) -> torch.Tensor:
        fwd, bwd = select_primitives("gather_mul_reduce", g, backend)
        ctx.bwd = bwd
        ctx.save_for_backward(g, feat, idx)
        return fwd(g, feat, idx)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        g, feat, idx = ctx.saved_tensors
        grad_g, grad_feat = ctx.bwd(grad_out.contiguous(), g, feat, idx)
        return grad_g, grad_feat, None, None
