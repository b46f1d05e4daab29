"""Mixed precision: the continuous conv under torch.autocast, and float32 accumulation.

Under autocast the op must give float32 results within a bf16 tolerance of the float32 run,
forward and backward, with float32 gradients for float32 parameters; the fused CPU path runs
as a float32 island (bit-identical to no autocast). The gather-reduce primitives, Triton
kernels included, must sum in float32 whatever their input dtype: the cases below are built so
that a bfloat16 accumulator gives a visibly different number.

Triton runs on CPU tensors only in its interpreter (set before the kernel modules are imported,
as in test_triton_kernels.py); CUDA cases are marked ``gpu`` and skip without a device.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pcseg.nn.continuous_conv import ContinuousConv, set_conv_options
from pcseg.ops import _conv_fused, continuous_conv, continuous_conv_reference, knn
from pcseg.ops._conv_primitives import GatherMulReduce, GatherOuterReduce

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

KERNELS = ("full", "separable")
IMPLS = ("fused", "primitives")
# bf16 keeps 8 significant bits (relative rounding 2^-9); gradients that sum thousands of terms
# with cancellation (the kernel MLP's first layer) lose more. The yardstick is autocast applied
# to the literal formula (continuous_conv_reference): the op may be at most this much worse.
WORSE_THAN_SPEC, SLACK, CAP = 2.0, 2e-3, 0.1


def _triton_runs(device: torch.device) -> bool:
    """Triton installed and its kernels runnable on ``device`` (CUDA, or the CPU interpreter)."""
    try:
        from pcseg.ops import kernels
    except ImportError:
        return False
    if not kernels.triton_available(device):
        return False
    if device.type == "cpu":
        try:
            from pcseg.ops.kernels import _triton_utils
        except ImportError:
            return False
        return bool(_triton_utils.INTERPRETED)
    return True


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


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kernel", KERNELS)
def test_layer_under_cpu_bf16_autocast_matches_float32(kernel, impl):
    pts, idx, feat, layer = make_layer_case(kernel)
    layer.impl = impl
    out, ref = assert_autocast_as_accurate_as_spec(layer, feat, pts, idx, "bf16")
    # Fused: a float32 island, identical to the float32 run. Primitives: the MLP and the
    # gather-reduce inputs really ran in bf16, so the numbers differ (slightly).
    assert torch.equal(out, ref) == (impl == "fused")


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("kernel", KERNELS)
def test_fused_path_is_a_float32_island(kernel, workers, monkeypatch):
    """Fused path under autocast == fused path without it, bit for bit, whether the chunks run
    on the caller's thread (which sees autocast) or on worker threads (which never do)."""
    monkeypatch.setattr(_conv_fused, "CHUNK_WORKERS", workers)
    pts, idx, feat, layer = make_layer_case(kernel, n=4 * 700, c=64, k=16)
    layer.impl = "fused"
    assert _conv_fused._workers(idx.shape[0], 700) == workers
    ref, ref_grads = run_layer(layer, feat, pts, idx, None)
    out, grads = run_layer(layer, feat, pts, idx, "bf16")
    assert out.dtype == torch.float32
    assert torch.equal(out, ref)
    for g, g_ref in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-6)


def test_fused_backward_inside_autocast_recomputes_in_float32(monkeypatch):
    """backward() called inside the autocast region (not what Lightning does, but legal): the
    Function recomputes its MLP on the caller's thread (one worker) with autocast off, so the
    gradients equal the float32 ones. (The "full" kernel: "separable" adds a user-level
    feat @ weight whose own backward PyTorch would run in bf16 there.)"""
    monkeypatch.setattr(_conv_fused, "CHUNK_WORKERS", 1)
    pts, idx, feat, layer = make_layer_case("full", n=500, c=16, k=8)
    layer.impl = "fused"
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
    """A previous autocast layer hands over bfloat16 features: accepted, float32 out, the
    feature gradient in bfloat16 (its tensor's dtype)."""
    pts, idx, feat, layer = make_layer_case(kernel)
    layer.impl = impl
    ref, _ = run_layer(layer, feat.bfloat16().float(), pts, idx, None)
    f = feat.bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(f, pts, pts, idx)
    assert out.dtype == torch.float32
    assert rel_err(out, ref) < 1e-2
    (g,) = torch.autograd.grad(out.sum(), [f])
    assert g.dtype == torch.bfloat16 and torch.isfinite(g.float()).all()


@pytest.mark.parametrize("kernel", KERNELS)
def test_without_autocast_output_keeps_the_input_dtype(kernel):
    """Outside autocast nothing changes: float64 in, float64 out (the gradcheck dtype)."""
    pts, idx, feat, layer = make_layer_case(kernel, n=40)
    layer = layer.double()
    for impl in IMPLS:
        layer.impl = impl
        out = layer(feat.double(), pts.double(), pts.double(), idx)
        assert out.dtype == torch.float64


def test_float64_stays_float64_under_autocast():
    pts, idx, feat, layer = make_layer_case("full", n=40)
    layer = layer.double()
    args = (feat.double(), pts.double(), pts.double(), idx, layer.kernel_mlp, "full")
    ref = continuous_conv_reference(*args)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = continuous_conv(*args, impl="fused")
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, ref)


# ------------------------------------------------------------------------ backends


def test_backend_torch_matches_auto_and_bad_names_raise():
    pts, idx, feat, layer = make_layer_case("full", n=60)
    args = (feat, pts, pts, idx, layer.kernel_mlp, "full")
    auto = continuous_conv(*args, impl="primitives")
    torch.testing.assert_close(continuous_conv(*args, impl="primitives", backend="torch"), auto)
    with pytest.raises(ValueError, match="backend must be"):
        continuous_conv(*args, backend="cuda")
    assert set_conv_options(layer, backend="torch") == 1 and layer.backend == "torch"
    with pytest.raises(ValueError, match="unknown ContinuousConv options"):
        set_conv_options(layer, precision="bf16")


def test_backend_triton_on_cpu_runs_interpreted_or_raises():
    """backend='triton' never falls back silently: the interpreter runs it, or RuntimeError."""
    pts, idx, feat, layer = make_layer_case("separable", n=50, c=8, k=4)
    args = (feat, pts, pts, idx, layer.kernel_mlp, "separable", layer.weight)
    if not _triton_runs(torch.device("cpu")):
        with pytest.raises((RuntimeError, ImportError)):
            continuous_conv(*args, backend="triton")
        return
    ref = continuous_conv(*args, impl="primitives", backend="torch")
    out = continuous_conv(*args, backend="triton")  # impl auto -> primitives
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------ float32 accumulation


def accumulation_case(device: torch.device, k: int = 17):
    """Every query sums 256 + (k - 1) ones over its k neighbours, all inputs bfloat16.

    bf16 spacing at 256 is 2, so a bf16 running sum stays at 256 (256 + 1 rounds to even);
    a float32 accumulator reaches 256 + 16 = 272, which bf16 stores exactly (whatever the
    rounding mode of the final conversion).
    """
    m, n, c, h = 5, k, 4, 3
    idx = torch.arange(k).repeat(m, 1)
    feat = torch.ones(n, c)
    feat[0] = 256.0
    phi = torch.ones(m, k, h)
    g = torch.ones(m, k, c)
    bf = torch.bfloat16
    return (t.to(device) for t in (phi.to(bf), g.to(bf), feat.to(bf), idx))


def _primitive_fns(device: torch.device) -> list:
    """(name, gather_outer_reduce, gather_mul_reduce, their backwards) for every backend that
    runs on ``device`` here: the torch twins always, Triton on CUDA or under the interpreter."""
    from pcseg.ops import _conv_primitives as prim

    fns = [("torch", *prim._TORCH["gather_outer_reduce"], *prim._TORCH["gather_mul_reduce"])]
    if _triton_runs(device):
        from pcseg.ops import kernels

        fns.append(
            (
                "triton",
                kernels.gather_outer_reduce,
                kernels.gather_outer_reduce_backward,
                kernels.gather_mul_reduce,
                kernels.gather_mul_reduce_backward,
            )
        )
    return fns


def _check_float32_accumulation(device: torch.device) -> list[str]:
    """Forward sums (272, see accumulation_case) and the scatter-add of grad_feat:
    255 + (16 * 16 - 1) ones = 510 into support row 0, exact in bf16 (a bf16 running sum
    sticks at 256)."""
    phi, g, feat, idx = accumulation_case(device)
    m = 16
    big_idx = torch.zeros(m, 16, dtype=torch.int64, device=device)  # every slot is row 0
    ones = torch.ones(m, 16, 4, dtype=torch.bfloat16, device=device)
    ones[0, 0] = 255.0
    phi1 = ones[..., :1].contiguous()  # (m, 16, 1)
    checked = []
    for name, outer, outer_bwd, mul, mul_bwd in _primitive_fns(device):
        a = outer(phi, feat, idx)
        out = mul(g, feat, idx)
        assert a.dtype == out.dtype == torch.bfloat16, name
        assert torch.all(a.float() == 272.0), (name, a.float().unique())
        assert torch.all(out.float() == 272.0), (name, out.float().unique())
        grad_out = torch.ones(m, 4, dtype=torch.bfloat16, device=device)
        _, grad_feat = mul_bwd(grad_out, ones, feat[:1], big_idx)
        assert grad_feat.dtype == torch.bfloat16
        assert torch.all(grad_feat.float() == 510.0), (name, grad_feat.float().unique())
        grad_a = torch.ones(m, 1, 4, dtype=torch.bfloat16, device=device)
        _, grad_feat = outer_bwd(grad_a, phi1, feat[:1], big_idx)
        assert torch.all(grad_feat.float() == 510.0), (name, grad_feat.float().unique())
        checked.append(name)
    return checked


def test_gather_reduce_accumulates_in_float32_on_cpu():
    checked = _check_float32_accumulation(torch.device("cpu"))
    assert checked[0] == "torch"
    assert ("triton" in checked) == _triton_runs(torch.device("cpu"))


def test_autograd_functions_return_gradients_in_their_tensors_dtypes():
    """Mixed inputs (bf16 kernel values, float32 features): each gradient in its own dtype."""
    _, g, feat, idx = accumulation_case(torch.device("cpu"))
    g = g.requires_grad_()
    f = feat.float().requires_grad_()
    out = GatherMulReduce.apply(g, f, idx, "torch")
    grad_g, grad_f = torch.autograd.grad(out.float().sum(), [g, f])
    assert (grad_g.dtype, grad_f.dtype) == (torch.bfloat16, torch.float32)
    phi = torch.ones(5, 17, 3, dtype=torch.bfloat16, requires_grad=True)
    a = GatherOuterReduce.apply(phi, f, idx, "torch")
    grad_phi, grad_f = torch.autograd.grad(a.float().sum(), [phi, f])
    assert (grad_phi.dtype, grad_f.dtype) == (torch.bfloat16, torch.float32)


# ------------------------------------------------------------------------ CUDA


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_gather_reduce_accumulates_in_float32_on_cuda():
    checked = _check_float32_accumulation(torch.device("cuda"))
    assert checked[0] == "torch"


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("kernel", KERNELS)
def test_cuda_backends_match_reference_float32(kernel):
    """Triton (auto), the torch twins and the fused path on CUDA against the float64 spec."""
    pts, idx, feat, layer = make_layer_case(kernel, n=500, c=16, k=8)
    ref_layer = layer.double()
    ref = continuous_conv_reference(
        feat.double(),
        pts.double(),
        pts.double(),
        idx,
        ref_layer.kernel_mlp,
        kernel,
        ref_layer.weight,
    )
    layer = layer.float().cuda()
    outs = {}
    for impl, backend in (("primitives", "auto"), ("primitives", "torch"), ("fused", "auto")):
        set_conv_options(layer, impl=impl, backend=backend)
        outs[impl, backend], _ = run_layer(layer, feat.cuda(), pts.cuda(), idx.cuda(), None, "cuda")
        assert_close_scaled(outs[impl, backend].double().cpu(), ref, {"rtol": 1e-4, "atol": 1e-5})
    set_conv_options(layer, impl="primitives", backend="torch")
    _, torch_grads = run_layer(layer, feat.cuda(), pts.cuda(), idx.cuda(), None, "cuda")
    set_conv_options(layer, impl="primitives", backend="auto")
    _, auto_grads = run_layer(layer, feat.cuda(), pts.cuda(), idx.cuda(), None, "cuda")
    for a, b in zip(auto_grads, torch_grads, strict=True):
        assert_close_scaled(a, b, {"rtol": 1e-4, "atol": 1e-5})


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kernel", KERNELS)
def test_layer_under_cuda_autocast_matches_float32(kernel, impl, dtype):
    pts, idx, feat, layer = make_layer_case(kernel, n=2000, c=32, k=16)
    layer = layer.cuda()
    layer.impl = impl
    assert_autocast_as_accurate_as_spec(
        layer, feat.cuda(), pts.cuda(), idx.cuda(), dtype, device="cuda"
    )


# ------------------------------------------------------------------------ test-run settings


def test_autotune_can_be_switched_off_for_test_runs():
    """PCSEG_TRITON_AUTOTUNE=0 (scripts/gpu_check.sh's test stage) leaves one config per kernel
    after pruning, so a GPU test run compiles each kernel variant once instead of ~10 times.
    Built in a subprocess: compiled-mode autotuners need TRITON_INTERPRET unset."""
    pytest.importorskip("triton")
    code = (
        "from pcseg.ops.kernels import outer_reduce, mul_reduce\n"
        "t = outer_reduce._fwd_tuned(); t.nargs = {'C': 64}\n"
        "u = mul_reduce._bwd_tuned(); u.nargs = {'C': 64}\n"
        "print(len(t.prune_configs({'BLOCK_H': 32})), len(u.prune_configs({})))\n"
    )
    counts = {}
    for value in ("1", "0"):
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        env["PCSEG_TRITON_AUTOTUNE"] = value
        res = subprocess.run(
            [sys.executable, "-c", code],
            env=env,
            cwd=Path(__file__).resolve().parents[2],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert res.returncode == 0, res.stderr[-2000:]
        counts[value] = [int(x) for x in res.stdout.split()]
    assert min(counts["1"]) > 1 and counts["0"] == [1, 1]
