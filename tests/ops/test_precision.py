"""Mixed precision: the continuous conv under torch.autocast is a float32 island.

Under autocast both backends upcast low-precision inputs, accumulate and return float32 (float64
stays float64): the output equals the float32 run bit for bit, gradients within float32
rounding, with the dtypes of their tensors. The Triton backend runs on CPU tensors in Triton's
interpreter (set before the kernel module is imported); CUDA cases are marked ``gpu``.
"""

from __future__ import annotations

import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

from pcseg.nn.continuous_conv import ContinuousConv  # noqa: E402
from pcseg.ops import continuous_conv, continuous_conv_reference, knn  # noqa: E402
from pcseg.ops.continuous_conv import _triton_runs  # noqa: E402

KERNELS = ("full", "separable")
TRITON = pytest.param(
    "triton",
    marks=pytest.mark.skipif(
        not _triton_runs(torch.device("cpu")), reason="triton not installed or not interpreted"
    ),
)
IMPLS = ("chunked", TRITON)
# bf16 keeps 8 significant bits (relative rounding 2^-9); the yardstick is autocast applied to
# the literal formula (continuous_conv_reference): the op may be at most this much worse.
WORSE_THAN_SPEC, SLACK, CAP = 2.0, 2e-3, 0.1


def make_layer_case(kernel: str, n: int = 300, c: int = 16, k: int = 8, seed: int = 0):
    """A cloud, its KNN table (with some padding), features and a ContinuousConv layer."""
    gen = torch.Generator().manual_seed(seed)
    pts = torch.rand(n, 3, generator=gen) * 4.0
    idx = knn(pts, pts, k).idx.clone()
    idx[torch.rand(idx.shape, generator=gen) < 0.1] = -1
    idx[3] = -1  # a query without neighbours
    feat = torch.randn(n, c, generator=gen)
    torch.manual_seed(seed)
    layer = ContinuousConv(c, c, kernel_hidden=(16, 16), kernel=kernel)
    return pts, idx, feat, layer


def run_layer(layer, feat, pts, idx, autocast: str | None, device: str = "cpu", spec=False):
    """(output, grads of [feat, *params]) for a fixed random output gradient.

    autocast: None, "bf16" or "fp16"; spec: evaluate continuous_conv_reference instead."""
    feat = feat.detach().clone().requires_grad_()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(autocast)
    with torch.autocast(device, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        if spec:
            out = continuous_conv_reference(
                feat, pts, pts, idx, layer.kernel_mlp, layer.kernel, layer.weight
            )
        else:
            out = layer(feat, pts, pts, idx)
    gen = torch.Generator().manual_seed(1)
    go = torch.randn(out.shape, generator=gen).to(out.device)
    grads = torch.autograd.grad(out.float(), [feat, *layer.parameters()], go)
    return out, grads


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    """||got - want|| / ||want|| in float64."""
    want = want.detach().double()
    return float((got.detach().double() - want).norm() / want.norm().clamp(min=1e-30))


def assert_autocast_as_accurate_as_spec(layer, feat, pts, idx, dtype, device="cpu"):
    """The layer under autocast vs its float32 run: float32 output and parameter gradients, and
    relative errors at most WORSE_THAN_SPEC x those of the literal formula under autocast."""
    ref, ref_grads = run_layer(layer, feat, pts, idx, None, device)
    out, grads = run_layer(layer, feat, pts, idx, dtype, device)
    spec, spec_grads = run_layer(layer, feat, pts, idx, dtype, device, spec=True)
    assert out.dtype == torch.float32  # accumulated and returned in float32
    for p, g in zip(layer.parameters(), grads[1:], strict=True):
        assert g.dtype == p.dtype == torch.float32
    pairs = [("out", out, spec, ref)] + [
        (f"grad{i}", g, gs, gr)
        for i, (g, gs, gr) in enumerate(zip(grads, spec_grads, ref_grads, strict=True))
    ]
    for name, got, yardstick, want in pairs:
        err, bound = rel_err(got, want), rel_err(yardstick, want) * WORSE_THAN_SPEC + SLACK
        assert err <= min(bound, CAP), f"{name}: relative error {err:.4f} > {bound:.4f}"
    return out, ref


def assert_close_scaled(got: torch.Tensor, want: torch.Tensor, tol: dict[str, float]) -> None:
    """assert_close with atol relative to the reference's largest entry."""
    scale = max(float(want.detach().abs().max()), 1e-6) if want.numel() else 1.0
    torch.testing.assert_close(
        got.float(), want.float(), rtol=tol["rtol"], atol=tol["atol"] * scale
    )


# ------------------------------------------------------------------------ layer on CPU


def small(impl: str) -> dict[str, int]:
    """Sizes that keep Triton's interpreter quick (the island property does not need more)."""
    return {"n": 90, "c": 8, "k": 6} if impl == "triton" else {}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kernel", KERNELS)
def test_layer_under_cpu_bf16_autocast_is_a_float32_island(kernel, impl):
    pts, idx, feat, layer = make_layer_case(kernel, **small(impl))
    layer.impl = impl
    out, ref = assert_autocast_as_accurate_as_spec(layer, feat, pts, idx, "bf16")
    assert torch.equal(out, ref)


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("kernel", KERNELS)
def test_chunked_worker_threads_are_a_float32_island(kernel, workers):
    """Under autocast == without it, bit for bit, whether the chunks run on the caller's
    thread (which sees autocast) or on worker threads (which never do)."""
    pts, idx, feat, layer = make_layer_case(kernel, n=4 * 700, c=64, k=16)
    args = (pts, pts, idx, layer.kernel_mlp, kernel, layer.weight)
    outs = []
    for enabled in (False, True):
        f = feat.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
            out = continuous_conv(f, *args, impl="chunked", workers=workers)
        (g,) = torch.autograd.grad(out.sum(), [f])
        outs.append((out, g))
    assert outs[1][0].dtype == torch.float32
    assert torch.equal(outs[0][0], outs[1][0])
    torch.testing.assert_close(outs[1][1], outs[0][1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("impl", IMPLS)
def test_backward_inside_autocast_recomputes_in_float32(impl):
    """backward() called inside the autocast region (legal, not what Lightning does): the
    Function recomputes with autocast off, so the gradients equal the float32 ones."""
    pts, idx, feat, layer = make_layer_case("full", **small(impl))
    layer.impl = impl
    ref, ref_grads = run_layer(layer, feat, pts, idx, None)
    f = feat.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(f, pts, pts, idx)
        go = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
        grads = torch.autograd.grad(out, [f, *layer.parameters()], go)
    assert torch.equal(out, ref)
    for g, g_ref in zip(grads, ref_grads, strict=True):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kernel", KERNELS)
def test_bf16_features_under_autocast(kernel, impl):
    """A previous autocast layer hands over bfloat16 features: accepted, float32 out (equal to
    the float32 run on the same values), the feature gradient in bfloat16."""
    pts, idx, feat, layer = make_layer_case(kernel, **small(impl))
    layer.impl = impl
    ref, _ = run_layer(layer, feat.bfloat16().float(), pts, idx, None)
    f = feat.bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(f, pts, pts, idx)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref)
    (g,) = torch.autograd.grad(out.sum(), [f])
    assert g.dtype == torch.bfloat16 and torch.isfinite(g.float()).all()


def test_without_autocast_output_keeps_the_input_dtype():
    """Outside autocast: float64 in, float64 out (gradcheck); bfloat16 in, computed in float32
    and returned in bfloat16."""
    pts, idx, feat, layer = make_layer_case("full", n=40)
    layer64 = make_layer_case("full", n=40)[3].double()
    assert layer64(feat.double(), pts.double(), pts.double(), idx).dtype == torch.float64
    out = layer(feat.bfloat16(), pts, pts, idx)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, layer(feat.bfloat16().float(), pts, pts, idx).bfloat16())


def test_float64_stays_float64_under_autocast():
    pts, idx, feat, layer = make_layer_case("full", n=40)
    layer = layer.double()
    args = (feat.double(), pts.double(), pts.double(), idx, layer.kernel_mlp, "full")
    ref = continuous_conv_reference(*args)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = continuous_conv(*args)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, ref)


# ------------------------------------------------------------------------ CUDA


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("kernel", KERNELS)
def test_cuda_backends_match_reference_float32(kernel):
    """Triton (auto on CUDA) and the chunked backend on CUDA against the float64 spec."""
    pts, idx, feat, layer = make_layer_case(kernel, n=500, c=16, k=8)
    ref_layer = make_layer_case(kernel, n=500, c=16, k=8)[3].double()
    ref = continuous_conv_reference(
        feat.double(), pts.double(), pts.double(), idx, ref_layer.kernel_mlp, kernel,
        ref_layer.weight,
    )  # fmt: skip
    layer = layer.cuda()
    grads = {}
    for impl in ("auto", "chunked"):
        layer.impl = impl
        out, grads[impl] = run_layer(layer, feat.cuda(), pts.cuda(), idx.cuda(), None, "cuda")
        assert_close_scaled(out.double().cpu(), ref, {"rtol": 1e-4, "atol": 1e-5})
    for a, b in zip(grads["auto"], grads["chunked"], strict=True):
        assert_close_scaled(a, b, {"rtol": 1e-4, "atol": 1e-5})


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
@pytest.mark.parametrize("impl", ["auto", "chunked"])
@pytest.mark.parametrize("kernel", KERNELS)
def test_layer_under_cuda_autocast_matches_float32(kernel, impl, dtype):
    pts, idx, feat, layer = make_layer_case(kernel, n=2000, c=32, k=16)
    layer = layer.cuda()
    layer.impl = impl
    assert_autocast_as_accurate_as_spec(
        layer, feat.cuda(), pts.cuda(), idx.cuda(), dtype, device="cuda"
    )
