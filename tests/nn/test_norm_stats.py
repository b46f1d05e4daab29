"""norm_stats: which BatchNorm statistics an eval-mode forward uses (running averages, each
cloud's own as batch-size-1 training saw them, or own ones only for scans without intensity),
compared with plain references built from the same weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pcseg.nn.pccn import PCCNEncoderDecoder
from pcseg.structures import PointBatch, lengths_to_offset


def _net(norm_stats: str) -> PCCNEncoderDecoder:
    torch.manual_seed(0)
    net = PCCNEncoderDecoder(
        3, 5, width=8, depth=1, coarse_depth=1, levels=1, k=4, norm_stats=norm_stats
    )
    net.train()
    warm = _batch([60, 50], seed=1)
    with torch.no_grad():
        for _ in range(3):
            net(warm)  # running statistics that differ from any one cloud's
    return net.eval()


def _batch(lengths: list[int], seed: int, constant_remission: tuple[int, ...] = ()) -> PointBatch:
    g = torch.Generator().manual_seed(seed)
    coord = torch.rand(sum(lengths), 3, generator=g) * 10
    feat = torch.randn(sum(lengths), 3, generator=g) * 2 + 1
    offset = lengths_to_offset(torch.tensor(lengths))
    start = 0
    for i, n in enumerate(lengths):
        if i in constant_remission:
            feat[start : start + n, 1] = 0.3
        start += n
    return PointBatch(coord=coord, feat=feat, offset=offset)


def _one(batch: PointBatch, i: int) -> PointBatch:
    ends = batch.offset.tolist()
    start = 0 if i == 0 else ends[i - 1]
    return PointBatch(
        coord=batch.coord[start : ends[i]],
        feat=batch.feat[start : ends[i]],
        offset=torch.tensor([ends[i] - start]),
    )


def _with_batch_statistics(net: nn.Module, batch: PointBatch) -> torch.Tensor:
    """Reference: a copy whose BatchNorms run in training mode (dropout stays off)."""
    ref = _net("running")
    ref.load_state_dict(net.state_dict())
    for m in ref.modules():
        if isinstance(m, nn.BatchNorm1d):
            m.train()
    with torch.no_grad():
        return ref.logits(batch)


def test_running_is_torch_eval_and_training_is_unchanged():
    net = _net("running")
    batch = _batch([40, 30], seed=2)
    with torch.no_grad():
        torch.testing.assert_close(net(batch), net.logits(batch))
    a, b = _net("cloud").train(), _net("running").train()
    torch.manual_seed(5)
    la = a(batch)
    torch.manual_seed(5)
    assert torch.equal(la, b(batch))


def test_cloud_normalises_each_cloud_with_its_own_statistics_and_keeps_the_running_ones():
    net = _net("cloud")
    before = {k: v.clone() for k, v in net.state_dict().items()}
    batch = _batch([40, 30], seed=3)
    with torch.no_grad():
        out = net(batch)
    expected = torch.cat([_with_batch_statistics(net, _one(batch, i)) for i in range(2)])
    torch.testing.assert_close(out, expected)
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not any(m.training for m in net.modules())


def test_auto_uses_own_statistics_only_for_a_scan_without_intensity():
    net = _net("auto")
    batch = _batch([40, 30], seed=4, constant_remission=(1,))
    with torch.no_grad():
        out = net(batch)
        plain = net.logits(_one(batch, 0))
    torch.testing.assert_close(out[:40], plain)
    torch.testing.assert_close(out[40:], _with_batch_statistics(net, _one(batch, 1)))
    with torch.no_grad():  # no such scan: the batched running-statistics forward
        whole = _batch([40, 30], seed=4)
        assert torch.equal(net(whole), net.logits(whole))


def test_unknown_norm_stats_is_refused():
    with pytest.raises(ValueError, match="norm_stats"):
        PCCNEncoderDecoder(3, 5, norm_stats="instance")
