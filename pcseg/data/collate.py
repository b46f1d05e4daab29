"""Pack variable-size clouds into one :class:`~pcseg.structures.PointBatch` (no padding)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from pcseg.structures import PointBatch, lengths_to_offset


def collate_point_clouds(samples: Sequence[dict[str, Any]]) -> PointBatch:
    """Concatenate dataset items along the point axis and record offsets.

    ``inverse`` of each cloud is shifted by the cloud's start row so it indexes the packed
    ``coord``. Labels are kept only if every cloud has them (a batch is all-or-nothing).
    """
    if not samples:
        raise ValueError("cannot collate an empty list of clouds")
    lengths = torch.tensor([s["coord"].shape[0] for s in samples], dtype=torch.int64)
    offset = lengths_to_offset(lengths)
    starts = offset - lengths
    has_labels = all("label" in s for s in samples)
    inverse = torch.cat(
        [s["inverse"] + start for s, start in zip(samples, starts.tolist(), strict=True)]
    )
    inverse_lengths = torch.tensor([s["inverse"].shape[0] for s in samples], dtype=torch.int64)
    return PointBatch(
        coord=torch.cat([s["coord"] for s in samples]),
        feat=torch.cat([s["feat"] for s in samples]),
        offset=offset,
        label=torch.cat([s["label"] for s in samples]) if has_labels else None,
        inverse=inverse,
        inverse_offset=lengths_to_offset(inverse_lengths),
        meta=[s["meta"] for s in samples],
    )
