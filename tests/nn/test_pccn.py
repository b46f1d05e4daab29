"""The PCCN network: shapes, per-cloud max-pooling, and clouds that never see each other."""

from __future__ import annotations

import pytest
import torch

from pcseg.nn.pccn import PCCN, segment_max
from pcseg.structures import PointBatch, lengths_to_offset


def make_batch(lengths: list[int], seed: int = 0, channels: int = 5) -> PointBatch:
    g = torch.Generator().manual_seed(seed)
    n = sum(lengths)
    return PointBatch(
        coord=torch.rand(n, 3, generator=g) * 10,
        feat=torch.randn(n, channels, generator=g),
        offset=lengths_to_offset(torch.tensor(lengths)),
    )


def test_segment_max_matches_a_loop():
    batch = make_batch([5, 1, 7])
    values = torch.randn(13, 4, requires_grad=True)
    out = segment_max(values, batch.offset)
    expected = torch.stack([values[batch.cloud(b)].max(dim=0).values for b in range(3)])
    torch.testing.assert_close(out, expected)
    out.sum().backward()
    assert values.grad.sum() == 3 * 4  # one arg-max per cloud and channel gets the gradient


@pytest.mark.parametrize("kernel", ["separable", "full"])
def test_logits_shape_and_gradients(kernel):
    net = PCCN(5, 20, width=8, depth=2, k=4, kernel=kernel, kernel_hidden=(8,), head_hidden=(16,))
    batch = make_batch([30, 12])
    logits = net(batch)
    assert logits.shape == (42, 20)
    logits.sum().backward()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)


def test_clouds_in_a_batch_do_not_see_each_other():
    torch.manual_seed(0)
    net = PCCN(5, 20, width=8, depth=3, k=6, kernel_hidden=(8,), head_hidden=(16,)).eval()
    a, b = make_batch([40], seed=1), make_batch([25], seed=2)
    both = PointBatch(
        coord=torch.cat([a.coord, b.coord]),
        feat=torch.cat([a.feat, b.feat]),
        offset=torch.tensor([40, 65]),
    )
    with torch.no_grad():
        joint = net(both)
        torch.testing.assert_close(joint[:40], net(a))
        torch.testing.assert_close(joint[40:], net(b))


def test_bad_sizes_are_rejected():
    from pcseg.nn.pccn import PCCNEncoderDecoder

    with pytest.raises(ValueError, match="must be >= 1"):
        PCCN(5, 20, depth=0)
    with pytest.raises(ValueError, match="levels must be >= 1"):
        PCCNEncoderDecoder(5, 20, levels=0)


@pytest.mark.parametrize("levels", [1, 2])
def test_encoder_decoder_shapes_and_cloud_independence(levels):
    from pcseg.nn.pccn import PCCNEncoderDecoder, strided_subsample

    rows, off = strided_subsample(torch.tensor([10, 13, 20]), 4)
    assert rows.tolist() == [0, 4, 8, 10, 13, 17] and off.tolist() == [3, 4, 6]
    torch.manual_seed(0)
    net = PCCNEncoderDecoder(
        5,
        20,
        width=8,
        depth=1,
        coarse_depth=2,
        stride=3,
        k=5,
        kernel_hidden=(8,),
        head_hidden=(16,),
        levels=levels,
    )
    a, b = make_batch([40], seed=1), make_batch([25], seed=2)
    both = PointBatch(
        coord=torch.cat([a.coord, b.coord]),
        feat=torch.cat([a.feat, b.feat]),
        offset=torch.tensor([40, 65]),
    )
    logits = net(both)
    assert logits.shape == (65, 20)
    logits.sum().backward()
    assert all(p.grad is not None for p in net.parameters())
    assert len(net.deep_blocks) == levels - 1
    net.eval()
    with torch.no_grad():
        joint = net(both)
        torch.testing.assert_close(joint[:40], net(a))
        torch.testing.assert_close(joint[40:], net(b))


@pytest.mark.parametrize("which", ["pccn", "encoder_decoder", "unet"])
def test_cloud_context_is_trained_with_one_cloud_per_batch(which):
    """The per-cloud max-pool is one constant per cloud. Fed through BatchNorm with the point
    features, a single cloud's constant is subtracted away in training (zero gradient) yet
    added back by the running mean in evaluation; it must reach the logits in both modes."""
    from pcseg.nn.pccn import PCCNEncoderDecoder
    from pcseg.nn.unet import PCCNUNet

    small = dict(k=4, kernel_hidden=(8,), head_hidden=(16,), dropout=0.0)
    net = {
        "pccn": lambda: PCCN(5, 20, width=8, depth=2, **small),
        "encoder_decoder": lambda: PCCNEncoderDecoder(5, 20, width=8, depth=1, **small),
        "unet": lambda: PCCNUNet(5, 20, widths=(8, 12), depths=(1, 1), cells=(2.0,), **small),
    }[which]()
    batch = make_batch([60])
    net(batch).square().sum().backward()
    grad = net.head.context.weight.grad
    assert grad is not None and grad.abs().sum() > 0
