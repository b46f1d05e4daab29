"""The continuous-convolution op: every fast path against the literal specification.

Forward and backward (feat, support, query, every MLP parameter, the separable weight) on ragged
batches whose neighbour tables are built per cloud, with -1 padding, K larger than a cloud,
duplicate points and queries without neighbours; float64 gradcheck; the gather-reduce primitives
against a naive einsum.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pcseg.ops import continuous_conv, continuous_conv_reference
from pcseg.ops._conv_primitives import chunk_size, select_primitives
from pcseg.ops.continuous_conv import (
    gather_mul_reduce,
    gather_mul_reduce_backward,
    gather_outer_reduce,
    gather_outer_reduce_backward,
)

IMPLS = ("fused", "primitives")
KERNELS = ("full", "separable")


def brute_knn(points: torch.Tensor, lengths: list[int], k: int) -> torch.Tensor:
    """(N, k) global indices of each point's k nearest points in its own cloud, -1 padded."""
    idx = torch.full((points.shape[0], k), -1, dtype=torch.int64)
    start = 0
    for n in lengths:
        cloud = points[start : start + n]
        d2 = ((cloud[:, None, :] - cloud[None, :, :]) ** 2).sum(-1)
        kk = min(k, n)
        nearest = torch.argsort(d2, dim=1, stable=True)[:, :kk]
        idx[start : start + n, :kk] = nearest + start
        start += n
    return idx


def make_mlp(c_out: int, hidden: tuple[int, ...], dtype: torch.dtype) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = 3
    for h in hidden:
        layers += [nn.Linear(width, h), nn.Tanh()]
        width = h
    layers.append(nn.Linear(width, c_out))
    return nn.Sequential(*layers).to(dtype)


def make_case(
    kernel: str,
    lengths: list[int],
    k: int,
    c_in: int = 3,
    c_out: int = 4,
    hidden: tuple[int, ...] = (5, 6),
    dtype: torch.dtype = torch.float64,
    seed: int = 0,
):
    """A ragged batch with duplicates and its neighbour table; all float inputs require grad."""
    gen = torch.Generator().manual_seed(seed)
    n = sum(lengths)
    points = torch.randn(n, 3, generator=gen, dtype=dtype)
    if n > 3:
        points[1] = points[0]  # duplicate points: z = 0 and equal distances
        points[3] = points[2]
    idx = brute_knn(points, lengths, k)
    feat = torch.randn(n, c_in, generator=gen, dtype=dtype)
    query = (points + 0.1 * torch.randn(n, 3, generator=gen, dtype=dtype)).requires_grad_()
    support = points.clone().requires_grad_()
    feat.requires_grad_()
    torch.manual_seed(seed)
    mlp = make_mlp(c_in * c_out if kernel == "full" else c_out, hidden, dtype)
    weight = None
    if kernel == "separable":
        weight = torch.randn(c_in, c_out, generator=gen, dtype=dtype).requires_grad_()
    return feat, support, query, idx, mlp, weight


def grads(out: torch.Tensor, inputs: list[torch.Tensor], seed: int = 1) -> list[torch.Tensor]:
    go = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    return list(torch.autograd.grad(out, inputs, go, allow_unused=True))


def check_against_reference(feat, support, query, idx, mlp, weight, kernel, normalize, impl, tol):
    inputs = [feat, support, query, *mlp.parameters()] + ([weight] if weight is not None else [])
    args = (feat, support, query, idx, mlp, kernel, weight, normalize)
    ref = continuous_conv_reference(*args)
    out = continuous_conv(*args, impl=impl)
    assert out.shape == ref.shape
    _close(out, ref, tol)
    for g_ref, g_out in zip(grads(ref, inputs), grads(out, inputs), strict=True):
        assert g_out is not None and g_ref is not None
        _close(g_out, g_ref, tol)
    return out


def _close(got: torch.Tensor, want: torch.Tensor, tol: dict[str, float]) -> None:
    """assert_close with atol relative to the tensor's scale (float32 sums of ~10^4 terms
    that cancel differ from the reference's summation order by ~1e-6 of the largest entry)."""
    scale = float(want.detach().abs().max()) if want.numel() else 1.0
    torch.testing.assert_close(got, want, rtol=tol["rtol"], atol=tol["atol"] * max(scale, 1.0))


F64 = {"rtol": 1e-9, "atol": 1e-10}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("normalize", [True, False])
def test_ragged_batch_matches_reference(impl, kernel, normalize):
    # clouds of 7, 2 (< K: padding), 1 and 12 points; K = 5
    case = make_case(kernel, [7, 2, 1, 12], k=5)
    check_against_reference(*case, kernel, normalize, impl, F64)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kernel", KERNELS)
def test_random_padding_and_empty_rows(impl, kernel):
    feat, support, query, idx, mlp, weight = make_case(kernel, [15], k=6, seed=3)
    gen = torch.Generator().manual_seed(4)
    idx = idx.clone()
    idx[torch.rand(idx.shape, generator=gen) < 0.4] = -1
    idx[[2, 9]] = -1  # two queries with no valid neighbour
    out = check_against_reference(feat, support, query, idx, mlp, weight, kernel, True, impl, F64)
    assert torch.count_nonzero(out[[2, 9]]) == 0


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kernel", KERNELS)
def test_all_padding_gives_zeros_and_zero_feature_grads(impl, kernel):
    feat, support, query, idx, mlp, weight = make_case(kernel, [6], k=3)
    idx = torch.full_like(idx, -1)
    out = continuous_conv(feat, support, query, idx, mlp, kernel, weight, impl=impl)
    assert torch.count_nonzero(out) == 0
    (g_feat,) = torch.autograd.grad(out.sum(), [feat])
    assert torch.count_nonzero(g_feat) == 0


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kernel", KERNELS)
def test_queries_differ_from_support(impl, kernel):
    """M != N: queries are a subset of positions with their own neighbour table."""
    feat, support, _, _, mlp, weight = make_case(kernel, [20], k=4, seed=5)
    q = (support.detach()[::3] + 0.05).requires_grad_()
    d2 = ((q.detach()[:, None] - support.detach()[None]) ** 2).sum(-1)
    q_idx = torch.argsort(d2, dim=1)[:, :4]
    check_against_reference(feat, support, q, q_idx, mlp, weight, kernel, True, impl, F64)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kernel", KERNELS)
def test_float32_several_chunks(impl, kernel):
    """64 channels and ~2400 queries: several query chunks, chunk tails, float32 tolerances."""
    lengths = [1500, 5, 900]
    k = 16
    assert chunk_size(k, 64 + 33) < max(lengths)
    case = make_case(kernel, lengths, k, c_in=64, c_out=8, hidden=(16, 32), dtype=torch.float32)
    check_against_reference(*case, kernel, True, impl, {"rtol": 1e-3, "atol": 1e-5})


@pytest.mark.parametrize("impl", IMPLS)
def test_no_hidden_layers(impl):
    """kernel_hidden=(): the MLP is one Linear, phi is z itself."""
    case = make_case("full", [9, 4], k=5, hidden=())
    check_against_reference(*case, "full", True, impl, F64)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("normalize", [True, False])
def test_gradcheck_float64(impl, kernel, normalize):
    """Finite differences w.r.t. feat, support, query, weight and every MLP parameter.

    The MLP's own Parameters are passed to gradcheck as inputs: gradcheck perturbs its inputs in
    place, so the module sees every perturbation and autograd reaches the same leaves.
    """
    feat, support, query, idx, mlp, weight = make_case(kernel, [5, 3], k=4, c_in=2, c_out=3)
    idx = idx.clone()
    idx[0, 1] = -1
    params = list(mlp.parameters())
    extra = [weight] if weight is not None else []

    def fn(f, s, q, *rest):
        w = rest[-1] if weight is not None else None
        return continuous_conv(f, s, q, idx, mlp, kernel, w, normalize, impl=impl)

    assert torch.autograd.gradcheck(fn, (feat, support, query, *params, *extra))


# --- the gather-reduce primitives (the PyTorch twins of the Triton kernels) -----------------


def _naive_outer(phi, feat, idx):
    valid = (idx >= 0).to(phi.dtype)[..., None]
    rows = feat[idx.clamp(min=0)] * valid
    return torch.einsum("mkh,mkc->mhc", phi, rows)


def _naive_mul(g, feat, idx):
    valid = (idx >= 0).to(g.dtype)[..., None]
    return (g * feat[idx.clamp(min=0)] * valid).sum(1)


def _primitive_case(m=37, n=23, k=5, h=4, c=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, n, (m, k), generator=gen)
    idx[torch.rand(m, k, generator=gen) < 0.3] = -1
    idx[0] = -1
    idx[1] = 7  # the same support point k times
    phi = torch.randn(m, k, h, generator=gen, dtype=torch.float64, requires_grad=True)
    g = torch.randn(m, k, c, generator=gen, dtype=torch.float64, requires_grad=True)
    feat = torch.randn(n, c, generator=gen, dtype=torch.float64, requires_grad=True)
    return phi, g, feat, idx


def test_gather_outer_reduce_forward_backward():
    phi, _, feat, idx = _primitive_case()
    ref = _naive_outer(phi, feat, idx)
    out = gather_outer_reduce(phi, feat, idx)
    torch.testing.assert_close(out, ref, **F64)
    grad_a = torch.randn_like(ref)
    want = torch.autograd.grad(ref, [phi, feat], grad_a)
    got = gather_outer_reduce_backward(grad_a, phi, feat, idx)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, **F64)
    assert torch.count_nonzero(got[0][idx < 0]) == 0  # padding receives zero gradient


def test_gather_mul_reduce_forward_backward():
    _, g, feat, idx = _primitive_case(seed=1)
    ref = _naive_mul(g, feat, idx)
    torch.testing.assert_close(gather_mul_reduce(g, feat, idx), ref, **F64)
    grad_out = torch.randn_like(ref)
    want = torch.autograd.grad(ref, [g, feat], grad_out)
    got = gather_mul_reduce_backward(grad_out, g, feat, idx)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, **F64)
    assert torch.count_nonzero(got[0][idx < 0]) == 0


def test_primitives_empty_queries():
    feat = torch.randn(5, 6)
    idx = torch.empty(0, 3, dtype=torch.int64)
    assert gather_outer_reduce(torch.randn(0, 3, 4), feat, idx).shape == (0, 4, 6)
    assert gather_mul_reduce(torch.randn(0, 3, 6), feat, idx).shape == (0, 6)


def test_cpu_tensors_use_the_torch_primitives():
    """Backend chosen by device: CPU tensors never reach (or import) the Triton kernels."""
    fwd, bwd = select_primitives("gather_outer_reduce", torch.zeros(1))
    assert (fwd, bwd) == (gather_outer_reduce, gather_outer_reduce_backward)
    fwd, bwd = select_primitives("gather_mul_reduce", torch.zeros(1))
    assert (fwd, bwd) == (gather_mul_reduce, gather_mul_reduce_backward)


@pytest.mark.parametrize("kernel", KERNELS)
def test_empty_query_set(kernel):
    feat, support, _, _, mlp, weight = make_case(kernel, [6], k=3)
    query = torch.empty(0, 3, dtype=feat.dtype)
    idx = torch.empty(0, 3, dtype=torch.int64)
    for impl in IMPLS:
        out = continuous_conv(feat, support, query, idx, mlp, kernel, weight, impl=impl)
        assert out.shape == (0, 4)


# --- validation ----------------------------------------------------------------------------


def test_bad_inputs_raise_specific_errors():
    feat, support, query, idx, mlp, _ = make_case("full", [6], k=3)
    with pytest.raises(IndexError, match="idx entries"):
        continuous_conv(feat, support, query, torch.full_like(idx, 6), mlp)
    with pytest.raises(IndexError, match="idx entries"):
        continuous_conv(feat, support, query, torch.full_like(idx, -2), mlp)
    with pytest.raises(TypeError, match="idx must be an int64"):
        continuous_conv(feat, support, query, idx.float(), mlp)
    with pytest.raises(ValueError, match="idx must have shape"):
        continuous_conv(feat, support, query, idx[:-1], mlp)
    with pytest.raises(ValueError, match="support must have shape"):
        continuous_conv(feat, support[:-1], query, idx, mlp)
    with pytest.raises(ValueError, match="query must have shape"):
        continuous_conv(feat, support, query[:, :2], idx, mlp)
    with pytest.raises(ValueError, match="not a multiple of C_in"):
        continuous_conv(torch.cat([feat, feat[:, :2]], 1), support, query, idx, mlp)
    with pytest.raises(ValueError, match="kernel must be"):
        continuous_conv(feat, support, query, idx, mlp, kernel="diag")
    with pytest.raises(ValueError, match="needs weight"):
        continuous_conv(feat, support, query, idx, mlp, kernel="separable")
    with pytest.raises(ValueError, match="impl must be"):
        continuous_conv(feat, support, query, idx, mlp, impl="magic")
    with pytest.raises(TypeError, match=r"must end in nn\.Linear"):
        continuous_conv(feat, support, query, idx, nn.Sequential(nn.Linear(3, 12), nn.ReLU()))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kernel", KERNELS)
def test_only_parameters_require_grad(impl, kernel):
    """A first layer: features and positions are data, only the layer's parameters learn."""
    feat, support, query, idx, mlp, weight = make_case(kernel, [9, 6], k=4, seed=7)
    feat, support, query = feat.detach(), support.detach(), query.detach()
    params = list(mlp.parameters()) + ([weight] if weight is not None else [])
    args = (feat, support, query, idx, mlp, kernel, weight)
    want = grads(continuous_conv_reference(*args), params)
    got = grads(continuous_conv(*args, impl=impl), params)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, **F64)


@pytest.mark.parametrize("kernel", ["full", "separable"])
def test_fused_path_under_inference_mode_matches_no_grad(kernel: str) -> None:
    """Lightning validates under torch.inference_mode(); the chunk workers must follow it."""
    from pcseg.nn.continuous_conv import ContinuousConv
    from pcseg.ops import _conv_fused, knn

    torch.manual_seed(0)
    m = 3 * chunk_size(8, 16)  # several chunks, so the worker threads run
    pts = torch.rand(m, 3) * 10
    idx = knn(pts, pts, 8).idx
    conv = ContinuousConv(16, 16, kernel_hidden=(8,), kernel=kernel)
    feat = torch.randn(m, 16)
    old = _conv_fused.CHUNK_WORKERS
    _conv_fused.CHUNK_WORKERS = 2  # force several worker threads whatever this machine has
    try:
        with torch.no_grad():
            expected = conv(feat, pts, pts, idx)
        with torch.inference_mode():
            got = conv(feat, pts, pts, idx)
    finally:
        _conv_fused.CHUNK_WORKERS = old
    torch.testing.assert_close(got, expected)
