"""The chunked backend of the continuous convolution: PyTorch ops on query chunks (any device;
the production path on CPU, and on CUDA for kernel MLPs the Triton backend does not cover).

For each chunk of queries it

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
Nothing of size M x K is kept: the autograd Function saves the inputs, and :func:`backward`
recomputes z, phi+, F and A per chunk, then

    grad W     += A^T g                        (full)  /  sum_i A_i * g_i   (separable)
    grad A      = g W^T                        (full)  /  W * g_i           (separable)
    grad phi+   = F grad A^T                   batched matmul ("a gather for the kernel values")
    grad feat  += scatter-add of phi+ grad A   (index_add_ over the neighbour indices)
    grad z, grad MLP params = autograd.grad(phi, ...) on the chunk (MLP recomputed with grad)
    grad query += sum_k grad z;  grad support -= scatter-add of grad z

with g = grad_out / K_i. The hidden MLP must be stateless (Linear/activation layers).

Threads: chunks run on ``workers`` Python threads, each with ONE intra-op thread. Why not
torch's own intra-op threads: every op of a chunk is short, and an OpenMP parallel op ends at
a barrier that waits for its slowest thread; when other processes share the cores, a
descheduled thread stalls every op for a scheduler timeslice (measured on 2 shared cores at 2k
points: 450 ms forward with 2 OpenMP threads, 38 ms with 1). Independent workers never wait for
each other (the GIL is released inside every op). Each worker limits ITS OWN OpenMP team with
``omp_set_num_threads`` (a per-thread setting); ``torch.set_num_threads`` is not used because
it also changes the process-wide default that every thread started later inherits. Where
torch does not run on GNU OpenMP the chunks run in the calling thread instead.
"""

from __future__ import annotations

import ctypes
import functools
import os
import threading
from collections.abc import Callable, Iterator
from typing import NamedTuple

import torch
from torch import nn

FULL, SEPARABLE = "full", "separable"

# Working-set target of one query chunk, in bytes (~1600 queries at K = 16, 64 + 17 channels).
# On the 2-core reference machine (1 MiB L2 per core, 16 MiB L3) 2, 4 and 8 MiB were within 4 %
# of each other when the cores were idle (0.5 MiB: 40 % slower, dispatch overhead); under load
# fewer, larger chunks degrade less. 8 MiB.
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
    return idx.clamp(min=0), idx >= 0


# ------------------------------------------------------------------------------ threads


@functools.cache
def _omp_set_num_threads() -> Callable[[int], None] | None:
    """``omp_set_num_threads`` of the OpenMP runtime torch is linked to, or None."""
    if "ATen parallel backend: OpenMP" not in torch.__config__.parallel_info():
        return None
    lib = os.path.join(os.path.dirname(torch.__file__), "lib")
    for name in ("libgomp.so.1", "libiomp5.so", "libomp.so"):
        try:
            handle = ctypes.CDLL(os.path.join(lib, name), mode=getattr(os, "RTLD_NOLOAD", 0))
        except OSError:
            continue
        fn = handle.omp_set_num_threads
        fn.argtypes, fn.restype = [ctypes.c_int], None
        return fn
    return None


def resolve_workers(workers: int | None, m: int, size: int, device: torch.device) -> int:
    """Worker threads for ``m`` queries in chunks of ``size``: ``workers`` (None: torch's
    intra-op thread count), at most one per chunk; 1 off CPU or without per-thread limits."""
    if device.type != "cpu" or _omp_set_num_threads() is None:
        return 1
    n = torch.get_num_threads() if workers is None else int(workers)
    return max(1, min(n, -(-m // max(size, 1))))


def run_chunks(
    m: int, size: int, body: Callable[[int, int, int], None], workers: int, static: bool = False
) -> None:
    """Call ``body(start, end, slot)`` for every query chunk under ``torch.no_grad()``.

    With ``workers`` > 1 the chunks are shared by that many threads (slot = the thread's index,
    so it can own buffers and gradient accumulators), each with one intra-op thread (module
    docstring). By default a thread takes the next free chunk (balances load when cores are
    shared). ``static``: chunk c always runs on slot ``c % workers``; backward needs that, each
    slot sums its chunks' gradients and float addition is not associative, so a timing-dependent
    assignment would change the gradients' last bits run to run.
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
    # Inference mode is thread-local: a caller under torch.inference_mode() (Lightning's
    # validate/predict) allocates inference tensors that the workers write into.
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
        torch.get_num_threads()  # torch's lazy per-thread init first, so it cannot undo ours
        _omp_set_num_threads()(1)  # this thread only; it ends with the call
        try:
            with torch.inference_mode(inference), torch.no_grad():
                for s, e in claim(slot):
                    if errors:
                        return
                    body(s, e, slot)
        except BaseException as exc:  # re-raised in the caller's thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


# ------------------------------------------------------------------------------ one chunk


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
        h_aug: int,
        head_width: int,
    ) -> None:
        self.feat, self.query, self.support = feat, query, support
        self.safe, self.valid = split_index(idx)
        m, k = idx.shape
        c = feat.shape[1]
        rows = min(m, chunk_size(k, c + h_aug))
        kw = {"dtype": feat.dtype, "device": feat.device}
        self.phi_buf = torch.empty(rows, k, h_aug, **kw)
        self.f_buf = torch.empty(rows * k, c, **kw)
        self.a_buf = torch.empty(rows, h_aug, c, **kw)  # A (full)
        self.g_buf = torch.empty(rows * k, head_width, **kw)  # kernel values g (separable)
        self.k, self.c = k, c

    def offsets(self, s: int, e: int) -> torch.Tensor:
        """z = query_i - support_j for the chunk: (n, K, 3)."""
        nbr = self.support.index_select(0, self.safe[s:e].reshape(-1)).view(e - s, self.k, 3)
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

    def head_forward(
        self,
        mode: str,
        phi_aug: torch.Tensor,
        rows: torch.Tensor,
        head: torch.Tensor,
        out: torch.Tensor,
    ) -> None:
        """out (n, C_out). full: vec(A) @ W; separable: g = phi+ W as ONE (n*K, H+1) matmul
        (several times faster on CPU than n tiny ones at equal FLOPs), out = sum_k g * F."""
        if mode == FULL:
            torch.mm(self.reduce(phi_aug, rows).flatten(1), head, out=out)
            return
        n, k, h1 = phi_aug.shape
        g = torch.mm(phi_aug.view(n * k, h1), head, out=self.g_buf[: n * k])
        torch.sum(g.view(n, k, -1).mul_(rows), dim=1, out=out)

    def head_backward(
        self,
        mode: str,
        phi_aug: torch.Tensor,
        rows: torch.Tensor,
        head: torch.Tensor,
        grad: torch.Tensor,
        grad_head: torch.Tensor | None,
        need_rows: bool,
        need_phi: bool,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Accumulate grad_head; return (grad_rows (n, K, C), grad_phi+ (n, K, H+1)), each None
        when not needed. Padded neighbours have phi+ = 0, so they add nothing to grad_head or
        grad_rows; their grad_phi+ is masked by the caller."""
        n, k, h1 = phi_aug.shape
        if mode == FULL:
            a = self.reduce(phi_aug, rows)
            if grad_head is not None:
                grad_head.addmm_(a.flatten(1).t(), grad)
            grad_a = torch.mm(grad, head.t()).view(n, h1, -1)
            grad_rows = torch.bmm(phi_aug, grad_a) if need_rows else None
            # (grad_A F^T)^T, not F grad_A^T: MKL is ~5x faster with the long C axis contracted.
            grad_phi = torch.bmm(grad_a, rows.transpose(1, 2)).transpose(1, 2) if need_phi else None
            return grad_rows, grad_phi
        go = grad.unsqueeze(1)  # (n, 1, C)
        t = (rows * go).view(n * k, -1)  # d out / d g
        flat_phi = phi_aug.view(n * k, h1)
        if grad_head is not None:
            grad_head.addmm_(flat_phi.t(), t)
        grad_phi = torch.mm(t, head.t()).view(n, k, h1) if need_phi else None
        if not need_rows:
            return None, grad_phi
        g = torch.mm(flat_phi, head, out=self.g_buf[: n * k])
        return g.view(n, k, -1).mul_(go), grad_phi


# ------------------------------------------------------------------------------ the passes


def forward(
    feat: torch.Tensor,
    query: torch.Tensor,
    support: torch.Tensor,
    idx: torch.Tensor,
    head: torch.Tensor,
    inv_count: torch.Tensor,
    hidden: nn.Module,
    mode: str,
    workers: int | None,
) -> torch.Tensor:
    """out (M, C_out); arguments as in :class:`pcseg.ops.continuous_conv._ContinuousConv`."""
    m = idx.shape[0]
    h_aug = head.shape[0] // feat.shape[1] if mode == FULL else head.shape[0]
    out = feat.new_empty(m, head.shape[-1])
    size = chunk_size(idx.shape[1], feat.shape[1] + h_aug)
    n_workers = resolve_workers(workers, m, size, feat.device)
    works = [_Chunk(feat, query, support, idx, h_aug, head.shape[-1]) for _ in range(n_workers)]

    def body(s: int, e: int, slot: int) -> None:
        work = works[slot]
        phi_aug = work.phi_aug(hidden(work.offsets(s, e)), s, e)
        work.head_forward(mode, phi_aug, work.gather(s, e), head, out[s:e])
        out[s:e].mul_(inv_count[s:e].unsqueeze(1))

    run_chunks(m, size, body, n_workers)
    return out


class Needs(NamedTuple):
    """Which gradients backward must produce."""

    feat: bool
    query: bool
    support: bool
    head: bool
    params: tuple[bool, ...]


class _Accumulators:
    """Gradient sums of one worker slot (scatter-adds from two threads into one tensor would
    race); grad_query rows are disjoint per chunk, so one tensor is shared and written."""

    def __init__(
        self, feat: torch.Tensor, support: torch.Tensor, head: torch.Tensor,
        params: tuple[torch.Tensor, ...], needs: Needs,
    ) -> None:  # fmt: skip
        self.feat = torch.zeros_like(feat) if needs.feat else None
        self.support = torch.zeros_like(support) if needs.support else None
        self.head = torch.zeros_like(head) if needs.head else None
        self.params = [
            torch.zeros_like(p) if n else None for p, n in zip(params, needs.params, strict=True)
        ]


def _sum_slots(parts: list[torch.Tensor | None]) -> torch.Tensor | None:
    """Sum of the slots' accumulators (in slot order: deterministic), or None."""
    if parts[0] is None:
        return None
    for extra in parts[1:]:
        parts[0].add_(extra)
    return parts[0]


def _mlp_backward(
    phi: torch.Tensor,
    z: torch.Tensor,
    grad_phi: torch.Tensor,
    params: tuple[torch.Tensor, ...],
    needs: Needs,
) -> tuple[torch.Tensor | None, list[torch.Tensor | None]]:
    """(grad z, grads of the wanted MLP parameters) by autograd through the recomputed chunk."""
    need_z = needs.query or needs.support
    wanted = [p for p, n in zip(params, needs.params, strict=True) if n]
    inputs = ([z] if need_z else []) + wanted
    got = list(torch.autograd.grad(phi, inputs, grad_phi, allow_unused=True))
    grad_z = got.pop(0) if need_z else None
    grads: list[torch.Tensor | None] = [None] * len(params)
    for i, g in zip([i for i, n in enumerate(needs.params) if n], got, strict=True):
        grads[i] = g
    return grad_z, grads


def backward(
    grad_out: torch.Tensor,
    feat: torch.Tensor,
    query: torch.Tensor,
    support: torch.Tensor,
    idx: torch.Tensor,
    head: torch.Tensor,
    inv_count: torch.Tensor,
    hidden: nn.Module,
    mode: str,
    params: tuple[torch.Tensor, ...],
    needs: Needs,
    workers: int | None,
) -> tuple[torch.Tensor | None, ...]:
    """(grad feat, grad query, grad support, grad head, *grad params), None where not needed."""
    m, c = idx.shape[0], feat.shape[1]
    h_aug = head.shape[0] // c if mode == FULL else head.shape[0]
    size = chunk_size(idx.shape[1], c + h_aug)
    n_workers = resolve_workers(workers, m, size, feat.device)
    grad = grad_out * inv_count.unsqueeze(1)
    need_z = needs.query or needs.support
    need_phi = need_z or any(needs.params)
    slots = [_Accumulators(feat, support, head, params, needs) for _ in range(n_workers)]
    grad_query = torch.zeros_like(query) if needs.query else None
    works = [_Chunk(feat, query, support, idx, h_aug, head.shape[-1]) for _ in range(n_workers)]

    def body(s: int, e: int, slot: int) -> None:
        work, acc = works[slot], slots[slot]
        z = work.offsets(s, e).detach().requires_grad_(need_z)
        with torch.enable_grad() if need_phi else torch.no_grad():
            phi = hidden(z)
        use_phi = need_phi and phi.requires_grad
        phi_aug = work.phi_aug(phi.detach(), s, e)
        grad_rows, grad_phi_aug = work.head_backward(
            mode, phi_aug, work.gather(s, e), head, grad[s:e], acc.head, needs.feat, use_phi
        )
        flat_idx = work.safe[s:e].reshape(-1)
        if acc.feat is not None:
            acc.feat.index_add_(0, flat_idx, grad_rows.view(-1, c))
        if not use_phi:
            return
        grad_phi = grad_phi_aug[..., :-1] * work.valid[s:e].unsqueeze(-1)
        grad_z, grad_params = _mlp_backward(phi, z, grad_phi, params, needs)
        if grad_query is not None:
            grad_query[s:e] = grad_z.sum(1)
        if acc.support is not None:
            acc.support.index_add_(0, flat_idx, grad_z.reshape(-1, 3), alpha=-1)
        for total, gp in zip(acc.params, grad_params, strict=True):
            if total is not None and gp is not None:
                total.add_(gp)

    run_chunks(m, size, body, n_workers, static=True)  # static: bit-exact gradients
    param_grads = [_sum_slots([s.params[i] for s in slots]) for i in range(len(params))]
    return (
        _sum_slots([s.feat for s in slots]),
        grad_query,
        _sum_slots([s.support for s in slots]),
        _sum_slots([s.head for s in slots]),
        *param_grads,
    )
