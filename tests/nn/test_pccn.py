"""The networks: PCCN and the encoder-decoder (strided and grid levels), per-cloud pooling,
subsampling, BatchNorm on one row, and clouds that never see each other."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pcseg.nn.pccn import (
    PCCN,
    BatchNorm1d,
    PCCNEncoderDecoder,
    grid_subsample,
    segment_max,
    strided_subsample,
)
from pcseg.structures import PointBatch, lengths_to_offset, offset_to_batch

SMALL = dict(k=4, kernel_hidden=(8,), head_hidden=(16,))
#: the two ways of building coarse levels, at sizes that give 2 levels on ~100 points
SUBSAMPLING = {
    "stride": dict(subsample="stride", stride=3, cell=None),
    "grid": dict(subsample="grid", stride=None, cell=2.0),
}


def make_batch(lengths: list[int], seed: int = 0, channels: int = 5) -> PointBatch:
    g = torch.Generator().manual_seed(seed)
    n = sum(lengths)
    return PointBatch(
        coord=torch.rand(n, 3, generator=g) * torch.tensor([12.0, 12.0, 3.0]),
        feat=torch.randn(n, channels, generator=g),
        offset=lengths_to_offset(torch.tensor(lengths)),
    )


def joined(a: PointBatch, b: PointBatch) -> PointBatch:
    return PointBatch(
        coord=torch.cat([a.coord, b.coord]),
        feat=torch.cat([a.feat, b.feat]),
        offset=torch.cat([a.offset, a.offset[-1] + b.offset]),
    )


def encoder_decoder(subsample: str, **kw) -> PCCNEncoderDecoder:
    args = dict(width=8, depth=1, coarse_depth=1, levels=2, **SMALL, **SUBSAMPLING[subsample])
    return PCCNEncoderDecoder(5, 20, **(args | kw))


def test_segment_max_matches_a_loop():
    batch = make_batch([5, 1, 7])
    values = torch.randn(13, 4, requires_grad=True)
    out = segment_max(values, batch.offset)
    expected = torch.stack([values[batch.cloud(b)].max(dim=0).values for b in range(3)])
    torch.testing.assert_close(out, expected)
    out.sum().backward()
    assert values.grad.sum() == 3 * 4  # one arg-max per cloud and channel gets the gradient


def test_strided_subsample_keeps_every_stride_th_point_of_each_cloud():
    rows, off = strided_subsample(torch.tensor([10, 13, 20]), 4)
    assert rows.tolist() == [0, 4, 8, 10, 13, 17] and off.tolist() == [3, 4, 6]


@pytest.mark.parametrize("cell", [0.5, 2.0, 100.0])
def test_grid_subsample_keeps_one_point_per_occupied_cell_of_each_cloud(cell):
    batch = make_batch([200, 1, 0, 150], seed=3)
    rows, offset = grid_subsample(batch.coord, batch.offset, cell)
    cloud = offset_to_batch(batch.offset).numpy()
    coord = batch.coord.numpy()
    lo = np.stack(
        [coord[cloud == c].min(0) if (cloud == c).any() else np.zeros(3) for c in range(4)]
    )
    cells = np.floor((coord - lo[cloud]) / cell).astype(np.int64)
    expected = {(c, *xyz) for c, xyz in zip(cloud, map(tuple, cells), strict=True)}
    got = [(cloud[r], *cells[r]) for r in rows.numpy()]
    assert len(got) == len(set(got)) == len(expected)  # one point per cell, every cell kept
    assert set(got) == expected
    # rows are grouped cloud by cloud and the new offset counts them
    assert (np.diff(cloud[rows.numpy()]) >= 0).all()
    assert offset.tolist() == np.cumsum(np.bincount(cloud[rows.numpy()], minlength=4)).tolist()
    # each kept point is the first (lowest row) of its cell
    for r in rows.numpy()[:20]:
        same = np.flatnonzero((cloud == cloud[r]) & (cells == cells[r]).all(1))
        assert r == same.min()


def test_batchnorm_on_one_row_uses_the_running_statistics():
    torch.manual_seed(0)
    ours, theirs = BatchNorm1d(6), torch.nn.BatchNorm1d(6)
    for norm in (ours, theirs):
        norm.running_mean.normal_(generator=torch.Generator().manual_seed(1))
        norm.weight.data.fill_(1.5)
    x = torch.randn(50, 6)
    torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=0)  # same on normal batches
    stats = (ours.running_mean.clone(), ours.running_var.clone())
    row = torch.randn(1, 6, requires_grad=True)
    out = ours(row)
    expected = (row - stats[0]) / torch.sqrt(stats[1] + ours.eps) * 1.5
    torch.testing.assert_close(out, expected)
    assert torch.equal(ours.running_mean, stats[0]) and torch.equal(ours.running_var, stats[1])
    out.sum().backward()
    assert ours.weight.grad is not None and row.grad is not None


def every_parameter_trains(net: torch.nn.Module, batch: PointBatch, n_points: int) -> list[str]:
    """Names of the parameters without a non-zero gradient after the second of two SGD steps
    (the head's context projection starts at zero, so the context's LayerNorm only receives
    gradient once that projection has moved)."""
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    for _ in range(2):
        opt.zero_grad()
        logits = net(batch)
        assert logits.shape == (n_points, 20)
        logits.square().sum().backward()
        opt.step()
    return [n for n, p in net.named_parameters() if p.grad is None or not p.grad.any()]


@pytest.mark.parametrize("kernel", ["separable", "full"])
def test_pccn_logits_shape_and_every_parameter_gets_a_gradient(kernel):
    net = PCCN(5, 20, width=8, depth=2, kernel=kernel, **SMALL)
    assert not every_parameter_trains(net, make_batch([30, 12]), 42)


@pytest.mark.parametrize("subsample", ["stride", "grid"])
@pytest.mark.parametrize("kernel", ["separable", "full"])
def test_encoder_decoder_shape_and_every_parameter_gets_a_gradient(subsample, kernel):
    net = encoder_decoder(subsample, kernel=kernel)
    assert not every_parameter_trains(net, make_batch([120, 40]), 160)


@pytest.mark.parametrize(
    "make",
    [
        lambda: PCCN(5, 20, width=8, depth=3, **SMALL),
        lambda: encoder_decoder("stride", levels=3),
        lambda: encoder_decoder("grid", levels=3),
    ],
    ids=["pccn", "stride", "grid"],
)
def test_clouds_in_a_batch_do_not_see_each_other(make):
    torch.manual_seed(0)
    net = make().eval()
    a, b = make_batch([90], seed=1), make_batch([70], seed=2)
    with torch.no_grad():
        both = net(joined(a, b))
        torch.testing.assert_close(both[:90], net(a), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(both[90:], net(b), rtol=1e-4, atol=1e-5)


def test_the_subsampling_decides_the_coarse_points():
    """Same weights, other subsampling: other logits (the option is not ignored)."""
    torch.manual_seed(0)
    stride = encoder_decoder("stride").eval()
    grid = encoder_decoder("grid").eval()
    grid.load_state_dict(stride.state_dict())  # one architecture: the same parameters
    batch = make_batch([100])
    with torch.no_grad():
        assert not torch.allclose(stride(batch), grid(batch))
    assert grid.coarser(batch.coord, batch.offset, 1)[0].shape[0] < 100


def test_bad_sizes_are_rejected():
    with pytest.raises(ValueError, match="must be >= 1"):
        PCCN(5, 20, depth=0)
    with pytest.raises(ValueError, match="levels must be >= 1"):
        PCCNEncoderDecoder(5, 20, levels=0)
    with pytest.raises(ValueError, match="subsample must be one of"):
        PCCNEncoderDecoder(5, 20, subsample="random")
    with pytest.raises(ValueError, match="needs stride >= 2 and cell=None"):
        PCCNEncoderDecoder(5, 20, cell=0.6)  # a cell would be silently ignored
    with pytest.raises(ValueError, match="needs cell > 0"):
        PCCNEncoderDecoder(5, 20, subsample="grid", stride=None)
    with pytest.raises(ValueError, match="stride=None"):
        PCCNEncoderDecoder(5, 20, subsample="grid", cell=0.6)  # stride 4 is the default


@pytest.mark.parametrize(
    "make",
    [
        lambda: PCCN(5, 20, width=8, depth=2, dropout=0.0, **SMALL),
        lambda: encoder_decoder("stride", dropout=0.0),
        lambda: encoder_decoder("grid", dropout=0.0),
    ],
    ids=["pccn", "stride", "grid"],
)
def test_cloud_context_is_trained_with_one_cloud_per_batch(make):
    """The per-cloud max-pool is one constant per cloud. Fed through BatchNorm with the point
    features, a single cloud's constant is subtracted away in training (zero gradient) yet
    added back by the running mean in evaluation; it must reach the logits in both modes."""
    net = make()
    net(make_batch([60])).square().sum().backward()
    grad = net.head.context.weight.grad
    assert grad is not None and grad.abs().sum() > 0
