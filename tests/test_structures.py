"""PointBatch and the offset helpers."""

from __future__ import annotations

import pytest
import torch

from pcseg.structures import (
    PointBatch,
    batch_to_offset,
    lengths_to_offset,
    offset_to_batch,
    offset_to_lengths,
    offset_to_starts,
)


def test_offset_helpers_round_trip():
    lengths = torch.tensor([3, 0, 5, 1])
    offset = lengths_to_offset(lengths)
    assert offset.tolist() == [3, 3, 8, 9]
    assert offset_to_lengths(offset).tolist() == lengths.tolist()
    assert offset_to_starts(offset).tolist() == [0, 3, 3, 8]
    batch = offset_to_batch(offset)
    assert batch.tolist() == [0, 0, 0, 2, 2, 2, 2, 2, 3]
    assert batch_to_offset(batch, num_clouds=4).tolist() == offset.tolist()


def test_point_batch_validates_shapes():
    coord = torch.zeros(5, 3)
    with pytest.raises(ValueError, match="offset must be"):
        PointBatch(coord=coord, feat=torch.zeros(5, 2), offset=torch.tensor([2, 4]))
    with pytest.raises(ValueError, match="feat has 4 rows"):
        PointBatch(coord=coord, feat=torch.zeros(4, 2), offset=torch.tensor([5]))
    with pytest.raises(ValueError, match="label must be"):
        PointBatch(
            coord=coord, feat=torch.zeros(5, 2), offset=torch.tensor([5]), label=torch.zeros(4)
        )


def test_point_batch_cloud_slices_and_to():
    b = PointBatch(
        coord=torch.arange(15.0).view(5, 3),
        feat=torch.ones(5, 1),
        offset=torch.tensor([2, 5]),
        label=torch.tensor([1, 1, 2, 2, 2]),
    )
    assert b.num_clouds == 2
    assert b.cloud(1) == slice(2, 5)
    assert b.lengths.tolist() == [2, 3]
    moved = b.to("cpu")
    assert torch.equal(moved.coord, b.coord) and moved.label is not None
