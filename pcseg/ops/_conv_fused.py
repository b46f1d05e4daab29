"""The fused, query-chunked continuous convolution (the fast path on CPU; works on any device).

One ``torch.autograd.Function`` does the whole layer after the kernel MLP's parameters: for each
chunk of queries it

1. builds the offsets z = query_i - support_j (chunk, K, 3) and runs the MLP's hidden part,
   phi = hidden(z), appending a ones column that carries the last layer's bias exactly and
   zeroing padded neighbours: phi+ (chunk, K, H+1);
2. gathers the neighbour features F (chunk, K, C) and reduces A = phi+^T F (chunk, H+1, C) with
   one batched matmul (the gather + outer product + reduce of DESIGN.md);
3. applies the head: ``"full"``:  out = vec(A) @ W  with W (H+1)*C_in x C_out, one dense matmul;
   ``"separable"``: g = phi+ W (one (chunk*K, H+1) @ (H+1, C_out) matmul), out = sum_k g * F,
   with F gathered from feat @ weight (computed once outside). Step 2 is skipped there: one
   large matmul beats the batched tiny ones at equal FLOPs, and g lives only for one chunk.

Why chunked: every per-neighbour tensor (z, the MLP activations, phi+, F) exists only for one
chunk of ~1600 queries (a few MiB, cache resident), and its buffers are reused across chunks.
Nothing of size M x K is saved for backward: ctx keeps the inputs (feat, query, support, idx,
W, the MLP's parameters) and backward recomputes z, phi+, F and A per chunk, then

    grad W     += A^T g                        (full)  /  sum_i A_i * g_i   (separable)
    grad A      = g W^T                        (full)  /  W * g_i           (separable)
    grad phi+   = F grad A^T                   batched matmul ("a gather for the kernel values")
    grad feat  += scatter-add of phi+ grad A   (index_add_ over the neighbour indices)
    grad z, grad MLP params = autograd.grad(phi, ...) on the chunk (MLP recomputed with grad)
    grad query += sum_k grad z;  grad support -= scatter-add of grad z

with g = grad_out / K_i. Both passes run with autocast off, in the inputs' dtype (see
``no_autocast``). The hidden MLP is evaluated twice (forward, then again in backward);
it must be stateless (Linear/activation layers: no BatchNorm or Dropout) for that to be exact.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from pcseg.ops._conv_primitives import chunk_size, chunks, split_index

FULL, SEPARABLE = "full", "separable"


class _Chunk:
    """Per-chunk recomputation shared by forward and backward, with reusable buffers.

    Buffers are allocated once for the largest chunk and sliced, so a 120k-point layer makes a
    handful of allocations instead of thousands of fresh (page-faulting) multi-MiB ones.
    """

    def __init__(
        self,
        feat: torch.Tensor,
        query: torch.Tensor,
        support: torch.Tensor,
        idx: torch.Tensor,
        hidden: nn.Module,
        h_aug: int,
        head_width: int,
    ) -> None:
        self.feat, self.query, self.support, self.hidden = feat, query, support, hidden
        self.safe, self.valid = split_index(idx)
        m, k = idx.shape
        c = feat.shape[1]
        self.size = chunk_size(k, c + h_aug)
        rows = min(m, self.size)
        kw = {"dtype": feat.dtype, "device": feat.device}
        self.phi_buf = torch.empty(rows, k, h_aug, **kw)
        self.f_buf = torch.empty(rows * k, c, **kw)
        self.a_buf = torch.empty(rows, h_aug, c, **kw)  # A (full)
        self.g_buf = torch.empty(rows * k, head_width, **kw)  # kernel values g (separable)
        self.k, self.c, self.h_aug = k, c, h_aug

    def offsets(self, s: int, e: int) -> torch.Tensor:
        """z = query_i - support_j for the chunk: (n, K, 3)."""
        safe = self.safe[s:e]
        nbr = self.support.index_select(0, safe.reshape(-1)).view(e - s, self.k, 3)
        return self.query[s:e].unsqueeze(1) - nbr

    def phi_aug(self, phi: torch.Tensor, s: int, e: int) -> torch.Tensor:
        """[phi, 1] with padded neighbours zeroed: (n, K, H+1) in a reused buffer."""
        out = self.phi_buf[: e - s]
        out[..., :-1].copy_(phi)
        out[..., -1] = 1.0
        return out.mul_(self.valid[s:e].unsqueeze(-1))

    def gather(self, s: int, e: int) -> torch.Tensor:
        """Neighbour features F (n, K, C) (padding rows point at row 0; phi+ is zero there)."""
        n = e - s
        rows = torch.index_select(
            self.feat, 0, self.safe[s:e].reshape(-1), out=self.f_buf[: n * self.k]
        )
        return rows.view(n, self.k, self.c)

    def reduce(self, phi_aug: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """A = phi+^T F: (n, H+1, C), one batched matmul."""
        return torch.bmm(phi_aug.transpose(1, 2), rows, out=self.a_buf[: rows.shape[0]])


def _forward_chunk(
    mode: str,
    work: _Chunk,
    phi_aug: torch.Tensor,
    rows: torch.Tensor,
    head: torch.Tensor,
    out: torch.Tensor,
) -> None:
    """out (n, C_out) for one chunk.

    full:      A = phi+^T F (batched, n x (H+1) x C_in), then out = vec(A) @ W (one dense mm).
    separable: g = phi+ W as ONE (n*K, H+1) @ (H+1, C) matmul into a reused buffer, then
               out = sum_k g * F. (Same FLOPs as reducing A first, but one large matmul runs
               several times faster on CPU than n tiny ones.)
    """
    if mode == FULL:
        torch.mm(work.reduce(phi_aug, rows).flatten(1), head, out=out)
    else:
        n, k, h1 = phi_aug.shape
        g = torch.mm(phi_aug.view(n * k, h1), head, out=work.g_buf[: n * k])
        torch.sum(g.view(n, k, -1).mul_(rows), dim=1, out=out)


def _backward_chunk(
    mode: str,
    work: _Chunk,
    phi_aug: torch.Tensor,
    rows: torch.Tensor,
    head: torch.Tensor,
    grad: torch.Tensor,
    grad_head: torch.Tensor | None,
    need_rows: bool = True,
    need_phi: bool = True,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Accumulate grad_head; return (grad_rows (n, K, C), grad_phi+ (n, K, H+1)) for one chunk,
    each None when not needed (e.g. a first layer whose features are data).

    Padded neighbours have phi+ = 0, so they add nothing to grad_head or grad_rows; their
    grad_phi+ is masked by the caller.
    """
    n, k, h1 = phi_aug.shape
    if mode == FULL:
        a = work.reduce(phi_aug, rows)
        if grad_head is not None:
            grad_head.addmm_(a.flatten(1).t(), grad)
        grad_a = torch.mm(grad, head.t()).view(n, h1, -1)
        grad_rows = torch.bmm(phi_aug, grad_a) if need_rows else None
        if not need_phi:
            return grad_rows, None
        # (grad_A F^T)^T, not F grad_A^T: MKL is ~5x faster with the long C axis contracted
        # and the small H+1 axis as rows than with H+1 as the output's last dimension.
        grad_phi_aug = torch.bmm(grad_a, rows.transpose(1, 2)).transpose(1, 2)
        return grad_rows, grad_phi_aug
    go = grad.unsqueeze(1)  # (n, 1, C)
    t = (rows * go).view(n * k, -1)  # d out / d g
    flat_phi = phi_aug.view(n * k, h1)
    if grad_head is not None:
        grad_head.addmm_(flat_phi.t(), t)
    grad_phi_aug = torch.mm(t, head.t()).view(n, k, h1) if need_phi else None
    if not need_rows:
        return None, grad_phi_aug
    g = torch.mm(flat_phi, head, out=work.g_buf[: n * k])
    return g.view(n, k, -1).mul_(go), grad_phi_aug


# Chunks are processed by this many Python threads, each running single-threaded torch ops
# (None: torch.get_num_threads()). Why not torch's own intra-op threads: every op of a chunk is
# short, and an OpenMP parallel op ends at a barrier that waits for its slowest thread; when
# other processes share the cores, a descheduled thread stalls every op for a scheduler
# timeslice. Measured on 2 shared cores at 2k points: 450 ms forward with 2 OpenMP threads,
# 38 ms with 1. Independent chunk workers never wait for each other (the GIL is released
# inside every op), so they keep both cores busy when idle and degrade gracefully when not.
CHUNK_WORKERS: int | None = None


def run_chunks(
    m: int,
    size: int,
    body: Callable[[int, int, int], None],
    workers: int,
    static: bool = False,
) -> None:
    """Call ``body(start, end, slot)`` for every query chunk, under ``torch.no_grad()`` (and the
    caller's inference mode).

    With ``workers`` > 1 the chunks are shared by that many threads (slot = the thread's index,
    so it can own buffers and gradient accumulators); each sets its intra-op threads to 1 and the
    caller's setting is restored afterwards. By default a thread takes the next free chunk
    (balances load when cores are shared). ``static``: chunk c always runs on slot
    ``c % workers``, in increasing order. Backward needs that: each slot sums its chunks'
    gradients into its own accumulators and float addition is not associative, so a
    timing-dependent chunk -> slot assignment changed the gradients' last bits run to run.
    """
    ranges = list(chunks(m, size))
    if workers <= 1 or len(ranges) < 2:
        with torch.no_grad():
            for s, e in ranges:
                body(s, e, 0)
        return
    pending = iter(ranges)
    lock = threading.Lock()
    errors: list[BaseException] = []
    outer = torch.get_num_threads()
    # Inference mode is thread-local: a caller under torch.inference_mode() (Lightning's
    # validate/predict) allocates inference tensors that the workers write into, so the
    # workers must run in the same mode.
    inference = torch.is_inference_mode_enabled()

    def claim(slot: int) -> Iterator[tuple[int, int]]:
        if static:
            yield from ranges[slot::workers]
            return
        while True:
            with lock:
                nxt = next(pending, None)
            if nxt is None:
                return
            yield nxt

    def work(slot: int) -> None:
        torch.set_num_threads(1)
        try:
            with torch.inference_mode(inference), torch.no_grad():
                for s, e in claim(slot):
                    if errors:
                        return
                    body(s, e, slot)
        except BaseException as exc:  # re-raised in the caller's thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(workers)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        torch.set_num_threads(outer)
    if errors:
        raise errors[0]


def no_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast off for ``device`` in this thread: the Function computes in its inputs' dtype.

    Chunk workers are other threads and never see the caller's autocast state; with one worker
    the chunks run in the caller's thread, and backward may be called inside an autocast
    region, so both passes switch it off explicitly (``continuous_conv`` upcasts the inputs of
    this float32 island under autocast)."""
    if device.type in ("cpu", "cuda", "xpu", "mps"):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def _workers(m: int, size: int) -> int:
    n = CHUNK_WORKERS if CHUNK_WORKERS is not None else torch.get_num_threads()
    return max(1, min(n, -(-m // max(size, 1))))


class FusedContinuousConv(torch.autograd.Function):
    """See the module docstring. Inputs after ``mode`` are the hidden MLP's parameters.

    feat: (N, C) float (features, or feat @ weight for separable); query (M, 3); support (N, 3);
    idx (M, K) int64 with -1 padding; head: (H+1)*C x C_out (full) or (H+1, C_out) (separable);
    inv_count: (M,) 1/K_i (or ones when not normalising), 0 for queries without neighbours.
    Chunks run on :func:`run_chunks` workers, each with its own buffers and accumulators.
    """

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
        h_aug: int,
        mode: str,
        *params: torch.Tensor,
    ) -> torch.Tensor:
        m = idx.shape[0]
        out = feat.new_empty(m, head.shape[-1])
        size = chunk_size(idx.shape[1], feat.shape[1] + h_aug)
        n_workers = _workers(m, size)
        works = [
            _Chunk(feat, query, support, idx, hidden, h_aug, head.shape[-1])
            for _ in range(n_workers)
        ]

        def body(s: int, e: int, slot: int) -> None:
            work = works[slot]
            phi_aug = work.phi_aug(hidden(work.offsets(s, e)), s, e)
            _forward_chunk(mode, work, phi_aug, work.gather(s, e), head, out[s:e])
            out[s:e].mul_(inv_count[s:e].unsqueeze(1))

        with no_autocast(feat.device):
            run_chunks(m, size, body, n_workers)
        ctx.save_for_backward(feat, query, support, idx, head, inv_count, *params)
        ctx.hidden, ctx.h_aug, ctx.mode = hidden, h_aug, mode
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        feat, query, support, idx, head, inv_count, *params = ctx.saved_tensors
        need = ctx.needs_input_grad
        need_feat, need_query, need_support, need_head = need[0], need[1], need[2], need[4]
        need_params = [bool(x) for x in need[9:]]
        need_z = need_query or need_support
        need_phi = need_z or any(need_params)
        mode, hidden = ctx.mode, ctx.hidden
        m = idx.shape[0]
        size = chunk_size(idx.shape[1], feat.shape[1] + ctx.h_aug)
        n_workers = _workers(m, size)
        grad = grad_out * inv_count.unsqueeze(1)
        wanted = [p for p, n in zip(params, need_params, strict=True) if n]
        slots = [i for i, n in enumerate(need_params) if n]

        def zeros(t: torch.Tensor, needed: bool) -> list[torch.Tensor | None]:
            return [torch.zeros_like(t) if needed else None for _ in range(n_workers)]

        # Accumulators per worker (scatter-adds from two threads into one tensor would race);
        # grad_query rows are disjoint per chunk, so it is written in place.
        grad_feat = zeros(feat, need_feat)
        grad_support = zeros(support, need_support)
        grad_head = zeros(head, need_head)
        grad_params = [
            [torch.zeros_like(p) if n else None for p, n in zip(params, need_params, strict=True)]
            for _ in range(n_workers)
        ]
        grad_query = torch.zeros_like(query) if need_query else None
        works = [
            _Chunk(feat, query, support, idx, hidden, ctx.h_aug, head.shape[-1])
            for _ in range(n_workers)
        ]

        def body(s: int, e: int, slot: int) -> None:
            work = works[slot]
            z = work.offsets(s, e).detach().requires_grad_(need_z)
            with torch.enable_grad() if need_phi else torch.no_grad():
                phi = hidden(z)
            use_phi = need_phi and phi.requires_grad
            phi_aug = work.phi_aug(phi.detach(), s, e)
            rows = work.gather(s, e)
            grad_rows, grad_phi_aug = _backward_chunk(
                mode, work, phi_aug, rows, head, grad[s:e], grad_head[slot], need_feat, use_phi
            )
            flat_idx = work.safe[s:e].reshape(-1)
            if need_feat:
                grad_feat[slot].index_add_(0, flat_idx, grad_rows.view(-1, work.c))
            if not use_phi:
                return
            grad_phi = grad_phi_aug[..., :-1] * work.valid[s:e].unsqueeze(-1)
            inputs = ([z] if need_z else []) + wanted
            got = list(torch.autograd.grad(phi, inputs, grad_phi, allow_unused=True))
            if need_z:
                grad_z = got.pop(0)
                if grad_query is not None:
                    grad_query[s:e] = grad_z.sum(1)
                if need_support:
                    grad_support[slot].index_add_(0, flat_idx, grad_z.reshape(-1, 3), alpha=-1)
            for i, gp in zip(slots, got, strict=True):
                if gp is not None:
                    grad_params[slot][i].add_(gp)

        with no_autocast(feat.device):  # the MLP is recomputed in forward's dtype
            run_chunks(m, size, body, n_workers, static=True)  # bit-exact gradients

        def total(parts: list[torch.Tensor | None]) -> torch.Tensor | None:
            if parts[0] is None:
                return None
            for extra in parts[1:]:
                parts[0].add_(extra)
            return parts[0]

        param_grads = [total([g[i] for g in grad_params]) for i in range(len(params))]
        return (
            total(grad_feat),
            grad_query,
            total(grad_support),
            None,
            total(grad_head),
            None,
            None,
            None,
            None,
            *param_grads,
        )
