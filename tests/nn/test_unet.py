"""The multi-level U-Net: grid subsampling, shapes, gradients, clouds that never mix."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pcseg.nn.unet import PCCNUNet, grid_subsample
from pcseg.structures import PointBatch, lengths_to_offset, offset_to_batch


def make_batch(lengths: list[int], seed: int = 0, channels: int = 5) -> PointBatch:
    g = torch.Generator().manual_seed(seed)
    n = sum(lengths)
    return PointBatch(
        coord=torch.rand(n, 3, generator=g) * torch.tensor([12.0, 12.0, 3.0]),
        feat=torch.randn(n, channels, generator=g),
        offset=lengths_to_offset(torch.tensor(lengths)),
    )


def small_net(**kw) -> PCCNUNet:
    args = dict(
        widths=(8, 12, 16),
        depths=(1, 1, 1),
        cells=(1.0, 3.0),
        k=4,
        kernel_hidden=(8,),
        head_hidden=(16,),
    )
    return PCCNUNet(5, 20, **(args | kw))


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


@pytest.mark.parametrize("kernel", ["separable", "full"])
def test_logits_shape_and_every_parameter_gets_a_gradient(kernel):
    """After one step (the head's context projection starts at zero, so the context's
    LayerNorm only receives gradient once that projection has moved), every parameter trains."""
    net = small_net(kernel=kernel)
    batch = make_batch([120, 40])
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    for _ in range(2):
        opt.zero_grad()
        logits = net(batch)
        assert logits.shape == (160, 20)
        logits.square().sum().backward()
        opt.step()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.any()]
    assert not missing


def test_clouds_in_a_batch_do_not_see_each_other():
    net = small_net().eval()
    a, b = make_batch([90], seed=1), make_batch([70], seed=2)
    both = PointBatch(
        coord=torch.cat([a.coord, b.coord]),
        feat=torch.cat([a.feat, b.feat]),
        offset=lengths_to_offset(torch.tensor([90, 70])),
    )
    with torch.no_grad():
        torch.testing.assert_close(net(both)[:90], net(a), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(net(both)[90:], net(b), rtol=1e-4, atol=1e-5)


def test_bad_sizes_are_rejected():
    with pytest.raises(ValueError, match="one cell per level"):
        PCCNUNet(5, 20, widths=(8, 16), depths=(1, 1), cells=(1.0, 2.0))
    with pytest.raises(ValueError, match="bad sizes"):
        PCCNUNet(5, 20, widths=(8, 16), depths=(1, 1), cells=(0.0,))
