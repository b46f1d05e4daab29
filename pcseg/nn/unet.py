"""A multi-level continuous-convolution U-Net: PCCN blocks at several resolutions.

The paper's network runs every block on every point, so its receptive field grows by one KNN
window per layer: a few metres after 8 layers, too little to tell a sidewalk from a road or a
fence from a wall on a full scan. This variant keeps the paper's pieces (continuous convs over
shared KNN windows, residual blocks, a global max-pooled context, a point-wise head) and
arranges them as an encoder-decoder over grid-subsampled levels:

    level 0 (every point, width w0) -> grid cell g1 (w1) -> ... -> grid cell gL (wL)
    back up: continuous conv coarse -> fine queries, concatenated with the encoder skip

Continuous convs carry features between levels: the layer allows query points that differ
from support points, so "pooling" and "unpooling" are the same operator. Coarse levels hold
few points, so they can be wide at little cost; most time goes to level 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from pcseg.nn.continuous_conv import ContinuousConv
from pcseg.nn.pccn import ContextHead, ResidualContinuousBlock, segment_max
from pcseg.ops import knn
from pcseg.structures import PointBatch, offset_to_batch


def grid_subsample(
    coord: torch.Tensor, offset: torch.Tensor, cell: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """One point per occupied ``cell``-metre grid cell of each cloud (the first in storage order).

    coord (N, 3), offset (B,) -> (rows (M,) int64 into coord, ordered cloud by cloud;
    coarse offset (B,) int64). Cells never span two clouds and are anchored at each cloud's
    own minimum corner, so a cloud is subsampled the same whatever else is in the batch. A grid keeps the subset spatially
    even whatever the point order, unlike a stride.
    """
    n = coord.shape[0]
    if n == 0:
        return coord.new_zeros(0, dtype=torch.int64), offset.clone()
    batch = offset_to_batch(offset)
    lo = coord.new_full((offset.shape[0], 3), float("inf"))
    lo = lo.scatter_reduce(0, batch[:, None].expand(-1, 3), coord, reduce="amin")
    q = torch.floor((coord - lo[batch]) / cell).to(torch.int64)  # cells anchored per cloud
    dims = q.amax(0) + 1
    key = ((batch * dims[0] + q[:, 0]) * dims[1] + q[:, 1]) * dims[2] + q[:, 2]
    uniq, inverse = torch.unique(key, return_inverse=True)  # sorted: clouds stay in order
    rows = torch.full((uniq.shape[0],), n, dtype=torch.int64, device=coord.device)
    rows = rows.scatter_reduce(
        0, inverse, torch.arange(n, device=coord.device), reduce="amin", include_self=True
    )
    counts = torch.bincount(batch[rows], minlength=offset.shape[0])
    return rows, torch.cumsum(counts, 0)


@dataclass
class Level:
    """Points of one resolution level: positions (N_l, 3), offset (B,), KNN window (N_l, K)."""

    coord: torch.Tensor
    offset: torch.Tensor
    idx: torch.Tensor
    scale: float

    @property
    def scaled(self) -> torch.Tensor:
        """Positions divided by the level's kernel scale: what the kernel MLPs see."""
        return self.coord / self.scale


class Transition(nn.Module):
    """Continuous conv from one point set to another, then BatchNorm + ReLU (pool or unpool)."""

    def __init__(self, c_in: int, c_out: int, kernel_hidden: Sequence[int], kernel: str) -> None:
        super().__init__()
        self.conv = ContinuousConv(c_in, c_out, kernel_hidden=tuple(kernel_hidden), kernel=kernel)
        self.norm = nn.BatchNorm1d(c_out)

    def forward(
        self, feat: torch.Tensor, support: torch.Tensor, query: torch.Tensor, idx: torch.Tensor
    ) -> torch.Tensor:
        """feat (N, C_in) on support (N, 3); query (M, 3); idx (M, K) into support -> (M, C_out)."""
        return torch.relu(self.norm(self.conv(feat, support, query, idx)))


class PCCNUNet(nn.Module):
    """Continuous-convolution encoder-decoder over grid-subsampled levels.

    Args:
        in_channels: input feature width C_in (see ``pcseg.data.features``).
        num_classes: logits per point.
        widths: channels per level, finest first (level 0 runs on every input point).
        depths: residual continuous-conv blocks per level in the encoder.
        cells: grid cell (metres) of levels 1..L; ``len(cells) == len(widths) - 1``.
        k: neighbours per point, in every KNN window.
        kernel: "full" or "separable" (see :class:`~pcseg.nn.ContinuousConv`).
        kernel_hidden: hidden widths of every kernel MLP.
        kernel_scale: metres; level 0's offsets are divided by it, level l's by
            ``2 * kernel_scale * cells[l-1] / cells[0]`` (level 1 twice level 0, then growing
            with the cell), so the kernel MLPs see O(1) offsets at every level.
        head_hidden: widths of the point-wise classifier MLP.
        dropout: dropout before the last classifier layer.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        widths: Sequence[int] = (32, 64, 96, 128),
        depths: Sequence[int] = (1, 2, 2, 2),
        cells: Sequence[float] = (0.6, 1.2, 2.4),
        k: int = 12,
        kernel: str = "separable",
        kernel_hidden: Sequence[int] = (16,),
        kernel_scale: float = 1.0,
        head_hidden: Sequence[int] = (64,),
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        widths, depths, cells = list(widths), list(depths), [float(c) for c in cells]
        if len(depths) != len(widths) or len(cells) != len(widths) - 1:
            raise ValueError(
                f"need one depth per width and one cell per level below the first: "
                f"widths={widths}, depths={depths}, cells={cells}"
            )
        if k < 1 or min(widths) < 1 or min(depths) < 0 or any(c <= 0 for c in cells):
            raise ValueError(f"bad sizes: k={k}, widths={widths}, depths={depths}, cells={cells}")
        self.k, self.cells = k, cells
        base = cells[0] if cells else 1.0
        self.scales = [float(kernel_scale)] + [kernel_scale * c / base * 2.0 for c in cells]
        hidden = tuple(kernel_hidden)
        self.input_norm = nn.BatchNorm1d(in_channels)
        self.stem = nn.Sequential(
            nn.Linear(in_channels, widths[0], bias=False), nn.BatchNorm1d(widths[0]), nn.ReLU()
        )
        self.down = nn.ModuleList(
            Transition(widths[i], widths[i + 1], hidden, kernel) for i in range(len(cells))
        )
        self.encoders = nn.ModuleList(
            nn.ModuleList(ResidualContinuousBlock(w, hidden, kernel) for _ in range(d))
            for w, d in zip(widths, depths, strict=True)
        )
        self.up = nn.ModuleList(
            Transition(widths[i + 1], widths[i], hidden, kernel) for i in range(len(cells))
        )
        self.fuse = nn.ModuleList(
            nn.Sequential(
                nn.Linear(2 * widths[i], widths[i], bias=False),
                nn.BatchNorm1d(widths[i]),
                nn.ReLU(),
            )
            for i in range(len(cells))
        )
        # decoded level-0 features per point; the per-cloud max of the last level as context
        self.head = ContextHead(widths[0], widths[-1], head_hidden, num_classes, dropout)

    def _window(self, query: torch.Tensor, q_off: torch.Tensor, support: torch.Tensor, s_off):
        return knn(query, support, self.k, q_off, s_off).idx

    def levels(self, batch: PointBatch) -> list[Level]:
        """Every level's points and KNN window, searched once per forward pass."""
        coord, offset = batch.coord, batch.offset
        levels = [Level(coord, offset, self._window(coord, offset, coord, offset), self.scales[0])]
        for cell, scale in zip(self.cells, self.scales[1:], strict=True):
            rows, offset = grid_subsample(coord, offset, cell)
            coord = coord[rows]
            levels.append(Level(coord, offset, self._window(coord, offset, coord, offset), scale))
        return levels

    def forward(self, batch: PointBatch) -> torch.Tensor:
        """batch with coord (N, 3), feat (N, C_in), offset (B,) -> logits (N, num_classes)."""
        levels = self.levels(batch)
        h = self.stem(self.input_norm(batch.feat))
        skips: list[torch.Tensor] = []
        for i, level in enumerate(levels):
            if i > 0:
                fine = levels[i - 1]
                idx = self._window(level.coord, level.offset, fine.coord, fine.offset)
                h = self.down[i - 1](h, fine.coord / level.scale, level.scaled, idx)
            for block in self.encoders[i]:
                h = block(h, level.scaled, level.idx)
            skips.append(h)
        pooled = segment_max(h, levels[-1].offset)
        for i in range(len(levels) - 2, -1, -1):
            fine, coarse = levels[i], levels[i + 1]
            idx = self._window(fine.coord, fine.offset, coarse.coord, coarse.offset)
            up = self.up[i](h, coarse.coord / coarse.scale, fine.coord / coarse.scale, idx)
            h = self.fuse[i](torch.cat([up, skips[i]], dim=1))
        return self.head(h, pooled, batch.offset)
