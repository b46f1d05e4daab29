"""The continuous-convolution op: both backends against the literal specification.

Forward and backward (feat, support, query, every MLP parameter, the separable weight) on ragged
batches whose neighbour tables are built per cloud, with -1 padding, K larger than a cloud,
duplicate points and queries without neighbours; float64 gradcheck; the bytes saved for
backward (no per-neighbour tensor); thread settings untouched. The "triton" backend runs on
CPU tensors in Triton's interpreter (set below, before the kernel module is imported).
"""

from __future__ import annotations

import os
import threading

import pytest
import torch
from torch import nn

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

from pcseg.ops import _conv_triton, continuous_conv, continuous_conv_reference  # noqa: E402
from pcseg.ops._conv_chunked import chunk_size  # noqa: E402
from pcseg.ops._conv_reference import continuous_conv_composed  # noqa: E402
from pcseg.ops.continuous_conv import _triton_runs, resolve_impl  # noqa: E402

TRITON = pytest.param(
    "triton",
    marks=pytest.mark.skipif(
        not _triton_runs(torch.device("cpu")), reason="triton not installed or not interpreted"
    ),
)
IMPLS = ("chunked", TRITON)
KERNELS = ("full", "separable")


def brute_knn(points: torch.Tensor, lengths: list[int], k: int) -> torch.Tensor:
    """(N, k) global indices of each point's k nearest points in its own cloud, -1 padded.
    Large clouds (over 2000 points) go through pcseg.ops.knn, tested against this in test_knn."""
    if len(lengths) == 1 and lengths[0] > 2000:
        from pcseg.ops import knn

        return knn(points.detach().float(), points.detach().float(), k).idx
    idx = torch.full((points.shape[0], k), -1, dtype=torch.int64)
    start = 0
    for n in lengths:
        cloud = points[start : start + n]
        d2 = ((cloud[:, None, :] - cloud[None, :, :]) ** 2).sum(-1)
        kk = min(k, n)
        idx[start : start + n, :kk] = torch.argsort(d2, dim=1, stable=True)[:, :kk] + start
        start += n
    return idx


def make_mlp(
    c_out: int, hidden: tuple[int, ...], dtype: torch.dtype, act: type[nn.Module] = nn.ReLU
) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = 3
    for h in hidden:
        layers += [nn.Linear(width, h), act()]
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
    act: type[nn.Module] = nn.ReLU,
):
    """A ragged batch with duplicates and its neighbour table; all float inputs require grad."""
    gen = torch.Generator().manual_seed(seed)
    n = sum(lengths)
    points = torch.randn(n, 3, generator=gen, dtype=dtype)
    if n > 3:
        points[1] = points[0]  # duplicate points: z = 0 and equal distances
        points[3] = points[2]
    idx = brute_knn(points, lengths, k)
    feat = torch.randn(n, c_in, generator=gen, dtype=dtype).requires_grad_()
    query = (points + 0.1 * torch.randn(n, 3, generator=gen, dtype=dtype)).requires_grad_()
    support = points.clone().requires_grad_()
    torch.manual_seed(seed)
    mlp = make_mlp(c_in * c_out if kernel == "full" else c_out, hidden, dtype, act)
    weight = None
    if kernel == "separable":
        weight = torch.randn(c_in, c_out, generator=gen, dtype=dtype).requires_grad_()
    return feat, support, query, idx, mlp, weight


def grads(out: torch.Tensor, inputs: list[torch.Tensor], seed: int = 1) -> list[torch.Tensor]:
    go = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    return list(torch.autograd.grad(out, inputs, go, allow_unused=True))


def _close(got: torch.Tensor, want: torch.Tensor, tol: dict[str, float]) -> None:
    """assert_close with atol relative to the tensor's scale (float32 sums of many terms)."""
    scale = float(want.detach().abs().max()) if want.numel() else 1.0
    torch.testing.assert_close(got, want, rtol=tol["rtol"], atol=tol["atol"] * max(scale, 1.0))


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


F64 = {"rtol": 1e-9, "atol": 1e-10}
F32 = {"rtol": 1e-4, "atol": 1e-5}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("normalize", [True, False])
def test_ragged_batch_matches_reference(impl, kernel, normalize):
    # clouds of 7, 2 (< K: padding), 1 and 12 points; K = 5; two hidden layers
    case = make_case(kernel, [7, 2, 1, 12], k=5)
    check_against_reference(*case, kernel, normalize, impl, F64)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kernel", KERNELS)
def test_random_padding_empty_rows_one_hidden_layer(impl, kernel):
    feat, support, query, idx, mlp, weight = make_case(kernel, [30], k=6, hidden=(7,), seed=3)
    gen = torch.Generator().manual_seed(5)
    idx = idx.clone()
    idx[torch.rand(idx.shape, generator=gen) < 0.3] = -1
    idx[4] = -1  # a query without any neighbour: zeros, no gradient
    out = check_against_reference(feat, support, query, idx, mlp, weight, kernel, True, impl, F64)
    assert torch.equal(out[4], torch.zeros_like(out[4]))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kernel", KERNELS)
def test_float32_several_chunks_and_blocks(impl, kernel, monkeypatch):
    """Several row chunks (chunked: chunk_size; triton: CHUNK_BYTES shrunk) and, under the
    interpreter, several query and channel blocks with masked tails."""
    if impl == "triton":
        from pcseg.ops.kernels import _triton_utils

        monkeypatch.setattr(_conv_triton, "CHUNK_BYTES", 40 * 5 * 6 * 4)  # ~40 rows a chunk
        monkeypatch.setitem(_triton_utils.INTERPRETER_BLOCKS, "BLOCK_M", 16)
        monkeypatch.setitem(_triton_utils.INTERPRETER_BLOCKS, "BLOCK_C", 4)
        lengths, k, c = [70, 33], 5, 6
    else:
        k, c = 16, 64
        lengths = [3 * chunk_size(k, c + 7) + 11]  # ~5.5k points, 4 chunks
    case = make_case(kernel, lengths, k=k, c_in=c, c_out=3, dtype=torch.float32, seed=2)
    check_against_reference(*case, kernel, True, impl, F32)


@pytest.mark.parametrize("hidden", [(), (4, 5, 6)])
def test_chunked_takes_any_hidden_mlp(hidden):
    """The chunked backend runs whatever hidden MLP it gets (Tanh, none, three layers)."""
    case = make_case("full", [9, 5], k=4, hidden=hidden, act=nn.Tanh)
    check_against_reference(*case, "full", True, "chunked", F64)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kernel", KERNELS)
def test_gradcheck_float64(impl, kernel):
    feat, support, query, idx, mlp, weight = make_case(kernel, [6, 3], k=4, c_in=2, c_out=3)
    idx = idx.clone()
    idx[0, 1] = -1
    extra = [weight] if weight is not None else []

    def fn(f, s, q, *rest):
        w = rest[-1] if weight is not None else None
        return continuous_conv(f, s, q, idx, mlp, kernel, w, impl=impl)

    inputs = (feat, support, query, *extra)
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7, fast_mode=impl == "triton")


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


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kernel", KERNELS)
def test_empty_query_set(impl, kernel):
    feat, support, _, _, mlp, weight = make_case(kernel, [6], k=3)
    query = torch.empty(0, 3, dtype=feat.dtype, requires_grad=True)
    idx = torch.empty(0, 3, dtype=torch.int64)
    out = continuous_conv(feat, support, query, idx, mlp, kernel, weight, impl=impl)
    assert out.shape == (0, 4)
    out.sum().backward()
    assert torch.equal(feat.grad, torch.zeros_like(feat))


def test_composed_reference_matches_the_literal_one():
    """The plain-PyTorch composition (the GPU benchmark's baseline) is itself exact."""
    for kernel in KERNELS:
        case = make_case(kernel, [8, 4], k=5)
        args = (*case[:5], kernel, case[5])
        inputs = [case[0], case[1], case[2], *case[4].parameters()]
        ref, out = continuous_conv_reference(*args), continuous_conv_composed(*args)
        _close(out, ref, F64)
        for a, b in zip(grads(out, inputs), grads(ref, inputs), strict=True):
            _close(a, b, F64)


# --- backend choice and validation ---------------------------------------------------------


def test_backend_is_chosen_by_device_and_mlp_shape():
    relu2, relu1 = make_mlp(4, (16, 32), torch.float32), make_mlp(4, (16,), torch.float32)
    tanh = make_mlp(4, (16,), torch.float32, nn.Tanh)
    assert _conv_triton.supports(relu2[:-1]) and _conv_triton.supports(relu1[:-1])
    assert not _conv_triton.supports(tanh[:-1]) and not _conv_triton.supports(nn.Sequential())
    cpu = torch.device("cpu")
    assert resolve_impl("auto", relu2[:-1], cpu) == "chunked"  # CPU: always chunked
    assert resolve_impl("fused", relu2[:-1], cpu) == "chunked"  # the old name
    if torch.cuda.is_available() and _triton_runs(torch.device("cuda")):
        assert resolve_impl("auto", relu2[:-1], torch.device("cuda")) == "triton"
        assert resolve_impl("auto", tanh[:-1], torch.device("cuda")) == "chunked"  # fallback
    with pytest.raises(ValueError, match="impl='triton' needs a hidden kernel MLP"):
        resolve_impl("triton", tanh[:-1], cpu)


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


# --- memory: what is saved for backward ----------------------------------------------------


def saved_bytes(fn, *args, **kwargs) -> tuple[int, list[tuple[int, ...]]]:
    """(bytes of every tensor autograd saves for backward during ``fn(...)``, their shapes).

    Counts the tensors themselves (a saved input is counted although it exists anyway): the
    bound below is then an upper bound on what backward keeps alive."""
    shapes: list[tuple[int, ...]] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        shapes.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(*args, **kwargs)
    total = 0
    for s in shapes:
        total += 4 * max(1, int(torch.tensor(s).prod()) if s else 1)
    return total, shapes


def memory_case(kernel: str, m: int = 96, k: int = 8, c: int = 12, hidden=(16,)):
    gen = torch.Generator().manual_seed(0)
    pts = torch.rand(m, 3, generator=gen) * 3
    idx = brute_knn(pts, [m], k)
    feat = torch.randn(m, c, generator=gen, requires_grad=True)
    support = pts.clone().requires_grad_()
    mlp = make_mlp(c * c if kernel == "full" else c, hidden, torch.float32)
    weight = torch.randn(c, c, generator=gen, requires_grad=True) if kernel == "separable" else None
    return (feat, support, support, idx, mlp, kernel, weight)


def per_neighbour_tensors(shapes, m: int, k: int, h: int) -> list[tuple[int, ...]]:
    """Saved tensors with at least M*K*H elements: a per-neighbour hidden tensor."""
    return [s for s in shapes if s and int(torch.tensor(s).prod()) >= m * k * h]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kernel", KERNELS)
def test_saved_bytes_per_point_hold_no_per_neighbour_tensor(impl, kernel):
    """Backward keeps the inputs, idx and per-query counts: at most
    4 (C_in + C_out + 3 + 3 + 1) + 8 K bytes per point plus the parameters; the plain-PyTorch
    composition, which this check must catch, keeps M x K x H tensors."""
    m, k, c, h = 96, 8, 12, 16
    case = memory_case(kernel, m, k, c)
    total, shapes = saved_bytes(continuous_conv, *case, impl=impl)
    assert not per_neighbour_tensors(shapes, m, k, h), shapes
    params = sum(p.numel() for p in case[4].parameters()) * 4 + c * c * 4
    per_point = (total - params) / m
    assert per_point <= 4 * (c + c + 3 + 3 + 1) + 8 * k, (per_point, shapes)
    _, naive = saved_bytes(continuous_conv_composed, *case)
    assert per_neighbour_tensors(naive, m, k, h)  # the check does detect them


# --- threads -------------------------------------------------------------------------------


def test_thread_settings_are_left_alone():
    """Worker threads limit only their own OpenMP team: the caller's torch.get_num_threads(),
    a thread running beside the call and a thread started afterwards all see the old value."""
    before = torch.get_num_threads()
    k, c = 16, 64
    case = make_case("full", [3 * chunk_size(k, c + 9)], k=k, c_in=c, c_out=4, hidden=(8,),
                     dtype=torch.float32)  # fmt: skip
    seen: list[int] = []
    stop = threading.Event()

    def observe() -> None:
        while not stop.is_set():
            seen.append(torch.get_num_threads())
            stop.wait(0.001)

    watcher = threading.Thread(target=observe)
    watcher.start()
    try:
        out = continuous_conv(*case[:5], "full", None, impl="chunked", workers=2)
        out.sum().backward()
    finally:
        stop.set()
        watcher.join()
    after: list[int] = []
    fresh = threading.Thread(target=lambda: after.append(torch.get_num_threads()))
    fresh.start()
    fresh.join()
    assert torch.get_num_threads() == before
    assert set(seen) == {before} and after == [before]


def test_worker_threads_follow_inference_mode():
    """Lightning validates under torch.inference_mode(); the chunk workers must follow it."""
    from pcseg.nn.continuous_conv import ContinuousConv
    from pcseg.ops import knn

    torch.manual_seed(0)
    m = 3 * chunk_size(8, 16 + 9)  # several chunks, so the worker threads run
    pts = torch.rand(m, 3) * 10
    idx = knn(pts, pts, 8).idx
    conv = ContinuousConv(16, 16, kernel_hidden=(8,))
    feat = torch.randn(m, 16)
    args = (feat, pts, pts, idx, conv.kernel_mlp)
    with torch.no_grad():
        expected = continuous_conv(*args, impl="chunked", workers=2)
    with torch.inference_mode():
        got = continuous_conv(*args, impl="chunked", workers=2)
    torch.testing.assert_close(got, expected)
