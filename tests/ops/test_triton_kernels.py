"""The Triton kernels (``pcseg.ops.kernels.conv``) against plain PyTorch, forward and backward.

Without CUDA the kernels run on CPU tensors in Triton's interpreter: TRITON_INTERPRET is set
here before the kernel module is imported (Triton fixes the mode when ``@triton.jit``
decorates them). Sizes stay small: the interpreter is 50-600x slower than torch. The layer-level
tests (reference, gradcheck, saved bytes) are in test_continuous_conv.py; these check the
kernels' own edges: masked tails of query and channel blocks, K = 1, all padding, non-finite
values behind padding, one and two hidden layers; and that they compile for a GPU.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ["TRITON_INTERPRET"] = "1"

pytest.importorskip("triton", reason="triton is not installed (pip install 'pcseg[triton]')")

from pcseg.ops.kernels import _triton_utils, conv  # noqa: E402

if not (HAS_CUDA or _triton_utils.INTERPRETED):  # pragma: no cover - depends on import order
    pytest.skip("kernels defined without the interpreter and no CUDA", allow_module_level=True)

DEVICE = torch.device("cuda" if HAS_CUDA else "cpu")
ROOT = Path(__file__).resolve().parents[2]


def case(m, n, k, c, hidden, dtype=torch.float64, seed=0, pad=0.25):
    gen = torch.Generator().manual_seed(seed)

    def r(*s):
        return torch.randn(*s, generator=gen, dtype=dtype)

    idx = torch.randint(0, n, (m, k), generator=gen)
    idx[torch.rand(m, k, generator=gen) < pad] = -1
    params = [r(hidden[0], 3), r(hidden[0])]
    if len(hidden) == 2:
        params += [r(hidden[1], hidden[0]), r(hidden[1])]
    t = [x.to(DEVICE) for x in (r(m, 3), r(n, 3), r(n, c), idx, r(hidden[-1] + 1, c))]
    return (*t, [p.to(DEVICE) for p in params])


def weights(params, dtype):
    w1, b1 = params[0], params[1]
    if len(params) == 4:
        return conv.MLPWeights(
            w1.t().contiguous(), b1, params[2].t().contiguous(), params[3], w1.shape[0],
            params[2].shape[0], 2,
        )  # fmt: skip
    dummy = w1.new_zeros(1)
    return conv.MLPWeights(w1.t().contiguous(), b1, dummy, dummy, w1.shape[0], w1.shape[0], 1)


def phi_aug(query, support, idx, params):
    """[phi(z), 1] (M, K, H+1) with padding zeroed, in autograd ops."""
    valid = (idx >= 0).unsqueeze(-1).to(query.dtype)
    z = query.unsqueeze(1) - support[idx.clamp(min=0)]
    h = torch.relu(z @ params[0].t() + params[1])
    if len(params) == 4:
        h = torch.relu(h @ params[2].t() + params[3])
    return torch.cat([h, torch.ones_like(h[..., :1])], -1) * valid


def ref_outer(query, support, feat, idx, params):
    return torch.einsum(
        "mkh,mkc->mhc", phi_aug(query, support, idx, params), feat[idx.clamp(min=0)]
    )


def ref_mul(query, support, feat, idx, params, head):
    g = phi_aug(query, support, idx, params) @ head
    return (g * feat[idx.clamp(min=0)]).sum(1)


SHAPES = [  # (M, N, K, C, hidden): M and C not multiples of the blocks, K = 1
    pytest.param(37, 20, 5, 6, (5,), id="ragged-1layer"),
    pytest.param(19, 11, 1, 5, (4, 6), id="K1-2layers"),
    pytest.param(40, 30, 4, 9, (16, 32), id="shipped-widths"),
]


@pytest.fixture(params=["large", "small"])
def blocks(request, monkeypatch):
    """Interpreter blocks: the defaults, and small ones spanning several query and channel
    blocks with masked tails (and the backward's loop over channel chunks)."""
    if request.param == "small":
        monkeypatch.setitem(_triton_utils.INTERPRETER_BLOCKS, "BLOCK_M", 16)
        monkeypatch.setitem(_triton_utils.INTERPRETER_BLOCKS, "BLOCK_C", 4)
    return request.param


@pytest.mark.parametrize(("m", "n", "k", "c", "hidden"), SHAPES)
def test_forwards_and_backward_match_autograd(m, n, k, c, hidden, blocks):
    query, support, feat, idx, head, params = case(m, n, k, c, hidden)
    w = weights(params, feat.dtype)
    leaves = [t.clone().requires_grad_() for t in (query, support, feat, *params)]
    a_ref = ref_outer(leaves[0], leaves[1], leaves[2], idx, leaves[3:])
    out_ref = ref_mul(leaves[0], leaves[1], leaves[2], idx, leaves[3:], head)
    torch.testing.assert_close(conv.outer_forward(query, support, feat, idx, w), a_ref)
    torch.testing.assert_close(conv.mul_forward(query, support, feat, idx, w, head), out_ref)
    gen = torch.Generator().manual_seed(1)
    for separable in (False, True):
        grad = torch.randn((out_ref if separable else a_ref).shape, generator=gen, dtype=feat.dtype)
        want = torch.autograd.grad(out_ref if separable else a_ref, leaves, grad, retain_graph=True)
        acc = conv.ConvGrads(*(torch.zeros_like(t) for t in (feat, support, *w[:4])))
        grad_query = torch.empty_like(query)
        conv.conv_backward(grad, head, query, support, feat, idx, w, acc, grad_query, separable)
        got = [grad_query, acc.support, acc.feat, acc.w1t.t(), acc.b1]
        got += [acc.w2t.t(), acc.b2] if len(hidden) == 2 else []
        for g, r in zip(got, want, strict=True):
            torch.testing.assert_close(g, r)


def test_float32_accumulates_in_float32():
    query, support, feat, idx, _, params = case(33, 17, 6, 7, (16,), dtype=torch.float32)
    w = weights(params, torch.float32)
    want = ref_outer(
        query.double(), support.double(), feat.double(), idx, [p.double() for p in params]
    )
    torch.testing.assert_close(conv.outer_forward(query, support, feat, idx, w).double(), want,
                               rtol=1e-5, atol=1e-5)  # fmt: skip


def test_all_padding_and_nonfinite_values_behind_padding():
    query, support, feat, idx, head, params = case(9, 5, 3, 4, (4,))
    w = weights(params, feat.dtype)
    support[0] = float("nan")
    feat[0] = float("inf")
    idx = idx.clone()
    idx[idx == 0] = -1
    idx[2] = -1
    a = conv.outer_forward(query, support, feat, idx, w)
    assert torch.isfinite(a).all() and torch.equal(a[2], torch.zeros_like(a[2]))
    out = conv.mul_forward(query, support, feat, idx, w, head)
    assert torch.isfinite(out).all() and torch.equal(out[2], torch.zeros_like(out[2]))
    acc = conv.ConvGrads(*(torch.zeros_like(t) for t in (feat, support, *w[:4])))
    gq = torch.empty_like(query)
    conv.conv_backward(torch.ones_like(a), head, query, support, feat, idx, w, acc, gq, False)
    assert torch.equal(acc.feat[0], torch.zeros_like(acc.feat[0])) and torch.isfinite(gq).all()
    assert torch.equal(gq[2], torch.zeros_like(gq[2]))


def _run(code: str, env_extra: dict[str, str]) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(env_extra)
    return subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip


@pytest.mark.slow
def test_kernels_compile_for_a_gpu_without_one():
    """Compiled mode is stricter than the interpreter (constexpr scoping, atomics' dtypes):
    Triton ships ptxas, so every kernel variant compiles to a cubin for sm_90 here (~15 s)."""
    res = _run("from pcseg.ops.kernels.compile_check import main; main(['--arch', '90'])", {})
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("ok sm_90") == 8, res.stdout


@pytest.mark.slow
def test_autotune_can_be_switched_off_for_test_runs():
    """PCSEG_TRITON_AUTOTUNE=0 (scripts/gpu_check.sh's test stage) keeps one config per kernel
    after pruning: a GPU test run compiles each variant once instead of ~10 times."""
    code = (
        "from pcseg.ops.kernels import conv\n"
        "t = conv._TUNED['bwd'](); t.nargs = {'C': 64}\n"
        "print(len(t.prune_configs({'BLOCK_H': 32})))\n"
    )
    counts = {}
    for value in ("1", "0"):
        res = _run(code, {"PCSEG_TRITON_AUTOTUNE": value})
        assert res.returncode == 0, res.stderr[-2000:]
        counts[value] = int(res.stdout.split()[-1])
    assert counts["1"] > 1 and counts["0"] == 1
