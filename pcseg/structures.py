"""The one batch representation: clouds packed end to end, plus ``offset``.

Shape-letter glossary used in docstrings across pcseg:
    B clouds in a batch, N support points, M query points, K neighbours,
    C / F channels, H kernel-MLP hidden width, P original (full-resolution) points.

``offset`` (B,) int64 holds the cumulative END index of each cloud in the packed arrays, as in
Pointcept: cloud b owns rows ``offset[b-1]:offset[b]`` (``0:offset[0]`` for b = 0). No padding.
The offset <-> batch-index helpers live here and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch


def offset_to_lengths(offset: torch.Tensor) -> torch.Tensor:
    """(B,) cumulative end indices -> (B,) cloud sizes."""
    return torch.diff(offset, prepend=offset.new_zeros(1))


def lengths_to_offset(lengths: torch.Tensor) -> torch.Tensor:
    """(B,) cloud sizes -> (B,) cumulative end indices (int64)."""
    return torch.cumsum(lengths.to(torch.int64), dim=0)


def offset_to_batch(offset: torch.Tensor) -> torch.Tensor:
    """(B,) offsets -> (N,) int64 cloud index of each packed point."""
    lengths = offset_to_lengths(offset)
    return torch.repeat_interleave(torch.arange(len(offset), device=offset.device), lengths)


def batch_to_offset(batch: torch.Tensor, num_clouds: int | None = None) -> torch.Tensor:
    """(N,) sorted cloud index of each point -> (B,) offsets. Empty clouds are kept when
    ``num_clouds`` is given."""
    counts = torch.bincount(batch, minlength=num_clouds or 0)
    return lengths_to_offset(counts)


def offset_to_starts(offset: torch.Tensor) -> torch.Tensor:
    """(B,) offsets -> (B,) start index of each cloud."""
    return offset - offset_to_lengths(offset)


@dataclass
class PointBatch:
    """A batch of B point clouds packed along the first axis.

    coord:  (N, 3) float32, point positions in the sensor frame (after any augmentation).
    feat:   (N, C) float32, per-point input features (see the data module's ``features``).
    offset: (B,) int64, cumulative end index of each cloud.
    label:  (N,) int64 training ids (0 = ignored), or None where there is no ground truth.
    inverse: (P,) int64, for every ORIGINAL point of every cloud, the packed row of the point
        that represents it after voxel downsampling (identity without voxelisation). Carries
        predictions back to full resolution.
    inverse_offset: (B,) int64, offsets of the original points (P total).
    meta: one dict per cloud (sequence, frame, paths) for logging and export.
    skipped: scans the loader dropped from this batch under ``data.on_bad_scan=skip``, one dict
        each (``scan_path``, ``kind``, ``reason``); they are not among the B clouds. A batch
        whose scans were all bad has B = 0 and only ``skipped``.
    """

    coord: torch.Tensor
    feat: torch.Tensor
    offset: torch.Tensor
    label: torch.Tensor | None = None
    inverse: torch.Tensor | None = None
    inverse_offset: torch.Tensor | None = None
    meta: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = self.coord.shape[0]
        if self.coord.ndim != 2 or self.coord.shape[1] != 3:
            raise ValueError(f"coord must be (N, 3), got {tuple(self.coord.shape)}")
        if self.feat.shape[0] != n:
            raise ValueError(f"feat has {self.feat.shape[0]} rows for {n} points")
        if self.label is not None and self.label.shape != (n,):
            raise ValueError(f"label must be ({n},), got {tuple(self.label.shape)}")
        if self.offset.ndim != 1 or (len(self.offset) and int(self.offset[-1]) != n):
            raise ValueError(f"offset must be (B,) ending at N={n}, got {self.offset.tolist()}")

    @property
    def num_clouds(self) -> int:
        return int(self.offset.shape[0])

    @property
    def batch(self) -> torch.Tensor:
        """(N,) cloud index of each point."""
        return offset_to_batch(self.offset)

    @property
    def lengths(self) -> torch.Tensor:
        """(B,) points per cloud."""
        return offset_to_lengths(self.offset)

    def cloud(self, b: int) -> slice:
        """Row slice of cloud ``b`` in the packed arrays."""
        end = int(self.offset[b])
        start = int(self.offset[b - 1]) if b > 0 else 0
        return slice(start, end)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> PointBatch:
        """Move every tensor to ``device`` (Lightning calls this through transfer hooks)."""
        moved = {
            f.name: getattr(self, f.name).to(device, non_blocking=non_blocking)
            for f in fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        return replace(self, **moved)

    def pin_memory(self) -> PointBatch:
        """Page-locked copies, so DataLoader(pin_memory=True) works with this type."""
        pinned = {
            f.name: getattr(self, f.name).pin_memory()
            for f in fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        return replace(self, **pinned)
