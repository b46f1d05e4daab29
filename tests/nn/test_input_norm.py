"""InputNorm: the input BatchNorm whose statistics skip a channel that is constant in a cloud
(a scan without intensity), so remission dropout cannot corrupt the running statistics."""

from __future__ import annotations

import torch
from torch import nn

from pcseg.nn.pccn import InputNorm
from pcseg.structures import lengths_to_offset


def _pair(channels: int = 3) -> tuple[InputNorm, nn.BatchNorm1d]:
    torch.manual_seed(0)
    ours, plain = InputNorm(channels), nn.BatchNorm1d(channels)
    with torch.no_grad():
        for m in (ours, plain):
            m.weight.copy_(torch.tensor([1.5, 0.5, 2.0][:channels]))
            m.bias.copy_(torch.tensor([0.1, -0.2, 0.3][:channels]))
    return ours, plain


def test_varying_channels_are_torch_batchnorm_to_the_bit():
    ours, plain = _pair()
    x = torch.randn(50, 3, dtype=torch.float64).float()
    offset = lengths_to_offset(torch.tensor([20, 30]))
    for _ in range(3):
        assert torch.equal(ours(x, offset), plain(x))
    assert torch.equal(ours.running_mean, plain.running_mean)
    assert torch.equal(ours.running_var, plain.running_var)
    assert ours.state_dict().keys() == plain.state_dict().keys()


def test_a_constant_channel_in_one_cloud_is_left_out_of_the_statistics():
    """Cloud 0 has remission (channel 1) dropped to 0.3; the channel's batch and running
    statistics must be cloud 1's alone, the other channels use both clouds."""
    ours, _ = _pair()
    torch.manual_seed(1)
    a, b = torch.randn(20, 3), torch.randn(30, 3) * 2 + 1
    a[:, 1] = 0.3
    x = torch.cat([a, b])
    offset = lengths_to_offset(torch.tensor([20, 30]))
    y = ours(x, offset)

    mean = x.mean(0)
    var = x.var(0, unbiased=False)
    mean[1], var[1] = b[:, 1].mean(), b[:, 1].var(unbiased=False)
    expected = (x - mean) / torch.sqrt(var + ours.eps) * ours.weight + ours.bias
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)

    unbiased = x.var(0)
    unbiased[1] = b[:, 1].var()
    torch.testing.assert_close(ours.running_mean, 0.9 * torch.zeros(3) + 0.1 * mean)
    torch.testing.assert_close(ours.running_var, 0.9 * torch.ones(3) + 0.1 * unbiased)
    assert int(ours.num_batches_tracked) == 1


def test_a_scan_without_remission_trains_as_it_will_be_evaluated():
    """Batch size 1, remission constant: plain BatchNorm maps it to 0 with batch statistics
    and shrinks the running variance; InputNorm normalises it with the running statistics
    (what evaluation uses) and leaves them unchanged for that channel."""
    ours, plain = _pair()
    torch.manual_seed(2)
    warm = torch.randn(40, 3)
    offset = lengths_to_offset(torch.tensor([40]))
    ours(warm, offset)
    plain(warm)
    before = ours.running_var.clone(), ours.running_mean.clone()

    scan = torch.randn(40, 3)
    scan[:, 1] = 0.3
    y_train = ours(scan, offset)
    assert ours.running_var[1] == before[0][1] and ours.running_mean[1] == before[1][1]
    ours.eval()
    y_eval = ours(scan, offset)
    torch.testing.assert_close(y_train[:, 1], y_eval[:, 1])

    plain(scan)
    assert plain.running_var[1] < 0.95 * before[0][1]  # the corruption InputNorm avoids


def test_gradients_match_a_plain_reference_in_float64():
    """Backward through the masked statistics equals autograd through the literal formula
    with the mask fixed (a finite-difference gradcheck would break the constant channel)."""
    ours = InputNorm(3).double()
    torch.manual_seed(3)
    x = torch.randn(12, 3, dtype=torch.float64)
    x[:5, 2] = 1.0  # constant in cloud 0
    offset = lengths_to_offset(torch.tensor([5, 7]))
    upstream = torch.randn(12, 3, dtype=torch.float64)

    x1 = x.clone().requires_grad_(True)
    (ours(x1, offset) * upstream).sum().backward()

    x2 = x.clone().requires_grad_(True)
    mask = torch.ones(12, 3, dtype=torch.float64)
    mask[:5, 2] = 0.0
    mean = (x2 * mask).sum(0) / mask.sum(0)
    var = (mask * (x2 - mean) ** 2).sum(0) / mask.sum(0)
    ref = (x2 - mean) / torch.sqrt(var + ours.eps) * ours.weight + ours.bias
    (ref * upstream).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad)
