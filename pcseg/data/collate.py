"""Pack variable-size clouds into one :class:`~pcseg.structures.PointBatch` (no padding).

Bad scans under ``data.on_bad_scan=skip``: the dataset returns :func:`skipped_item` in place of
the cloud. DataLoader workers are separate processes, so the marker is how a skip reaches the
main process: the collate leaves it out of the clouds and records it in ``PointBatch.skipped``,
where :class:`~pcseg.callbacks.BadScanLogger` counts it. The other clouds of the batch are
packed as usual; a batch of only bad scans becomes an empty batch (B = 0) that the
LightningModule's steps skip.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from pcseg.data.validation import Problem
from pcseg.structures import PointBatch, lengths_to_offset

#: Key of the marker item that stands in for a skipped scan.
SKIPPED_KEY = "skipped"


def skipped_item(scan_path: str | Path, problem: Problem, channels: int) -> dict[str, Any]:
    """The marker item for a skipped scan: which scan, which file is bad, why.

    ``channels``: the dataset's feature width C, so an all-bad batch still has feat (0, C).
    """
    return {
        SKIPPED_KEY: {
            "scan_path": str(scan_path),
            "path": str(problem.path),
            "kind": problem.kind,
            "reason": problem.reason,
        },
        "channels": channels,
    }


def _empty_batch(channels: int, skipped: list[dict[str, str]]) -> PointBatch:
    """B = 0: coord (0, 3), feat (0, C), offset (0,); only ``skipped`` says what happened."""
    empty = torch.zeros(0, dtype=torch.int64)
    return PointBatch(
        coord=torch.zeros(0, 3),
        feat=torch.zeros(0, channels),
        offset=empty,
        inverse=empty.clone(),
        inverse_offset=empty.clone(),
        skipped=skipped,
    )


def collate_point_clouds(samples: Sequence[dict[str, Any]]) -> PointBatch:
    """Concatenate dataset items along the point axis and record offsets.

    ``inverse`` of each cloud is shifted by the cloud's start row so it indexes the packed
    ``coord``. Labels are kept only if every cloud has them (a batch is all-or-nothing).
    Marker items of skipped scans are left out and listed in ``skipped``.
    """
    if not samples:
        raise ValueError("cannot collate an empty list of clouds")
    markers = [s for s in samples if SKIPPED_KEY in s]
    skipped = [m[SKIPPED_KEY] for m in markers]
    samples = [s for s in samples if SKIPPED_KEY not in s]
    if not samples:
        return _empty_batch(int(markers[0]["channels"]), skipped)
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
        skipped=skipped,
    )
