"""The ContinuousConv layer: its public surface, and its output against the spec, loop by loop."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pcseg.nn import ContinuousConv


def knn_table(points: torch.Tensor, k: int) -> torch.Tensor:
    """(N, k) nearest-neighbour indices by brute force, -1 padded when N < k."""
    d2 = ((points[:, None] - points[None]) ** 2).sum(-1)
    kk = min(k, points.shape[0])
    idx = torch.full((points.shape[0], k), -1, dtype=torch.int64)
    idx[:, :kk] = torch.argsort(d2, dim=1, stable=True)[:, :kk]
    return idx


def spec_loop(layer: ContinuousConv, feat, support, query, idx) -> torch.Tensor:
    """The issue's formula, one query and one neighbour at a time."""
    out = torch.zeros(query.shape[0], layer.out_channels, dtype=feat.dtype)
    for i in range(query.shape[0]):
        valid = [int(j) for j in idx[i] if j >= 0]
        for j in valid:
            g = layer.kernel_mlp(query[i] - support[j])
            if layer.kernel == "full":
                out[i] += feat[j] @ g.view(layer.in_channels, layer.out_channels)
            else:
                out[i] += (feat[j] @ layer.weight) * g
        if layer.normalize and valid:
            out[i] /= len(valid)
    return out


@pytest.fixture
def cloud():
    gen = torch.Generator().manual_seed(0)
    points = torch.randn(14, 3, generator=gen, dtype=torch.float64)
    points[5] = points[4]  # a duplicate point
    feat = torch.randn(14, 3, generator=gen, dtype=torch.float64)
    return points, feat


@pytest.mark.parametrize("kernel", ["full", "separable"])
@pytest.mark.parametrize("normalize", [True, False])
def test_matches_spec_loop(cloud, kernel, normalize):
    points, feat = cloud
    torch.manual_seed(0)
    layer = ContinuousConv(3, 5, kernel_hidden=(4, 6), kernel=kernel, normalize=normalize)
    layer = layer.double()
    idx = knn_table(points, 4)
    idx[3, 1:] = -1
    idx[7] = -1  # no neighbour: zeros
    query = points + 0.05
    out = layer(feat, points, query, idx)
    assert out.shape == (14, 5)
    torch.testing.assert_close(out, spec_loop(layer, feat, points, query, idx))
    assert torch.count_nonzero(out[7]) == 0


@pytest.mark.parametrize("kernel", ["full", "separable"])
def test_structure(kernel):
    layer = ContinuousConv(8, 6, kernel=kernel)
    assert isinstance(layer.kernel_mlp, nn.Sequential)
    assert isinstance(layer.kernel_mlp[-1], nn.Linear)
    assert layer.kernel_mlp[0].in_features == 3
    hidden = [m.out_features for m in layer.kernel_mlp if isinstance(m, nn.Linear)][:-1]
    assert hidden == [16, 32]  # the default kernel_hidden
    if kernel == "full":
        assert layer.kernel_mlp[-1].out_features == 8 * 6
        assert layer.weight is None
    else:
        assert layer.kernel_mlp[-1].out_features == 6
        assert layer.weight.shape == (8, 6)


@pytest.mark.parametrize("kernel", ["full", "separable"])
def test_shapes_and_gradients_reach_every_parameter(kernel):
    torch.manual_seed(0)
    layer = ContinuousConv(4, 7, kernel_hidden=(8,), kernel=kernel)
    support = torch.randn(30, 3, requires_grad=True)
    feat = torch.randn(30, 4, requires_grad=True)
    query = torch.randn(11, 3, requires_grad=True)
    d2 = ((query.detach()[:, None] - support.detach()[None]) ** 2).sum(-1)
    idx = torch.argsort(d2, dim=1)[:, :6]
    out = layer(feat, support, query, idx)
    assert out.shape == (11, 7)
    assert out.dtype == torch.float32
    out.square().sum().backward()
    for tensor in [feat, support, query, *layer.parameters()]:
        assert tensor.grad is not None and torch.count_nonzero(tensor.grad) > 0


def test_output_scale_is_moderate():
    """The init keeps a wide full layer's output on the scale of its input, not C_in times it."""
    torch.manual_seed(0)
    layer = ContinuousConv(64, 64)
    points = torch.rand(400, 3)
    feat = torch.randn(400, 64)
    out = layer(feat, points, points, knn_table(points, 8))
    assert 0.01 < out.std().item() < 3.0


def test_bad_inputs_raise(cloud):
    points, feat = cloud
    layer = ContinuousConv(3, 2, kernel_hidden=(4,)).double()
    idx = knn_table(points, 3)
    with pytest.raises(ValueError, match="feat must have shape"):
        layer(feat[:, :2], points, points, idx)
    with pytest.raises(ValueError, match="support must have shape"):
        layer(feat, points[:-1], points, idx)
    with pytest.raises(ValueError, match="query must have shape"):
        layer(feat, points, points[:, :2], idx)
    with pytest.raises(ValueError, match="idx must have shape"):
        layer(feat, points, points, idx[:5])
    with pytest.raises(IndexError, match="idx entries"):
        layer(feat, points, points, idx + 14)
    with pytest.raises(ValueError, match="kernel must be"):
        ContinuousConv(3, 2, kernel="depthwise")
    with pytest.raises(ValueError, match="in_channels and out_channels"):
        ContinuousConv(0, 2)
