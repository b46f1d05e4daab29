"""The segmentation networks: Wang et al.'s PCCN (CVPR 2018) and an encoder-decoder built from it.

:class:`PCCN` (``model=pccn``, the paper's network): input features are lifted by a linear
layer; a stack of residual blocks (continuous conv, BatchNorm, ReLU, skip) runs over the
K-nearest-neighbour window of every point, with the neighbours searched ONCE per forward pass
and shared by all layers; the outputs of all blocks are concatenated with a max-pooled feature
of each cloud (the global context the paper adds) and classified point by point.

:class:`PCCNEncoderDecoder` (``model=pccn_unet``, the default; ``model=unet``): the same fine
blocks, then coarser levels (a strided subset or a grid of growing cells) joined by continuous
convs, for a receptive field of tens of metres on full scans.

Every BatchNorm here is :class:`BatchNorm1d`, which also trains on a single row (a one-point
cloud, or a coarse level that kept one point).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from pcseg.nn.continuous_conv import ContinuousConv
from pcseg.ops import knn
from pcseg.structures import PointBatch, offset_to_batch, offset_to_starts

SUBSAMPLING = ("stride", "grid")
NORM_STATS = ("auto", "cloud", "running")


class BatchNorm1d(nn.BatchNorm1d):
    """``torch.nn.BatchNorm1d`` that also trains on a single row: (N, C) -> (N, C).

    Batch statistics of one row are undefined (torch raises "Expected more than 1 value per
    channel when training"), and a one-point scan, or a coarse level that kept one point, must
    not stop a run. Such a call normalises with the running statistics, as evaluation does, and
    leaves them unchanged; weight and bias still get gradients. Any other input is
    ``torch.nn.BatchNorm1d``'s, to the bit. Same parameters and buffers, so same checkpoints.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] == 1 and self.running_mean is not None:
            return nn.functional.batch_norm(
                x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
            )
        return super().forward(x)


class InputNorm(BatchNorm1d):
    """BatchNorm of the input features whose statistics skip a channel in a cloud where that
    channel is constant: (N, C) features, (B,) offsets -> (N, C).

    Why: a scan without intensity (remission dropout in training, ``.pcd`` files without it
    at inference) carries one constant remission value. Plain BatchNorm with batch size 1
    maps it to 0 in training (batch statistics, zero variance) but feeds zero-variance,
    wrongly centred batches into the running statistics that evaluation uses: with remission
    dropout at p = 0.25 the running variance of remission shrinks every few steps (one
    measurement, simulated validation after one epoch: 16.6 % with plain BatchNorm, 18.6 %
    with this; most of the cost of remission dropout is elsewhere). Here the statistics
    of a channel come only from the clouds where it varies, and the running ones too; a
    channel that is constant in every cloud of the batch is normalised with the running
    statistics, exactly as evaluation will do. So a remission-free scan is seen the same way
    in training and inference, and the running statistics stay those of real remission.
    With ``track_running_stats`` off (see :func:`_batch_statistics`) nothing is updated.

    A batch where every channel varies in every cloud is ``torch.nn.BatchNorm1d``'s, to the
    bit; parameters and buffers are BatchNorm1d's (same checkpoints).
    """

    def forward(self, x: torch.Tensor, offset: torch.Tensor | None = None) -> torch.Tensor:
        if not self.training or offset is None or self.running_mean is None or x.shape[0] < 2:
            return super().forward(x)
        cloud = offset_to_batch(offset)
        varies = _varies_per_cloud(x.detach(), cloud, len(offset))  # (B, C)
        if bool(varies.all()):
            return super().forward(x)
        mask = varies[cloud].to(x.dtype)  # (N, C): the points each channel's statistics use
        count = mask.sum(0)
        usable = count > 1
        n = count.clamp_min(1.0)
        mean_b = (x * mask).sum(0) / n
        var_b = (mask * (x - mean_b) ** 2).sum(0) / n
        mean = torch.where(usable, mean_b, self.running_mean)
        var = torch.where(usable, var_b, self.running_var)
        if self.track_running_stats:
            self._update_running(mean_b.detach(), var_b.detach(), count, usable)
        y = (x - mean) * torch.rsqrt(var + self.eps)
        return y * self.weight + self.bias if self.affine else y

    @torch.no_grad()
    def _update_running(
        self, mean: torch.Tensor, var: torch.Tensor, count: torch.Tensor, usable: torch.Tensor
    ) -> None:
        """Running statistics as BatchNorm updates them (unbiased variance), usable channels
        only."""
        self.num_batches_tracked += 1
        momentum = self.momentum
        if momentum is None:  # cumulative moving average
            momentum = 1.0 / float(self.num_batches_tracked)
        unbiased = var * count / (count - 1).clamp_min(1.0)
        new_mean = (1 - momentum) * self.running_mean + momentum * mean
        new_var = (1 - momentum) * self.running_var + momentum * unbiased
        self.running_mean.copy_(torch.where(usable, new_mean, self.running_mean))
        self.running_var.copy_(torch.where(usable, new_var, self.running_var))


def _varies_per_cloud(x: torch.Tensor, cloud: torch.Tensor, num_clouds: int) -> torch.Tensor:
    """(N, C) values, (N,) cloud index -> (B, C) bool: whether the channel takes more than one
    value in that cloud (an empty cloud counts as varying: it contributes nothing)."""
    index = cloud[:, None].expand_as(x)
    lo = x.new_full((num_clouds, x.shape[1]), float("inf")).scatter_reduce(
        0, index, x, "amin", include_self=True
    )
    hi = x.new_full((num_clouds, x.shape[1]), float("-inf")).scatter_reduce(
        0, index, x, "amax", include_self=True
    )
    return (hi > lo) | torch.isinf(lo)


class ResidualContinuousBlock(nn.Module):
    """h -> h + ReLU(BN(ContinuousConv(h))), same width in and out.

    The residual path lets 8+ layers train from scratch, as in the paper.
    """

    def __init__(self, channels: int, kernel_hidden: Sequence[int], kernel: str) -> None:
        super().__init__()
        self.conv = ContinuousConv(
            channels, channels, kernel_hidden=tuple(kernel_hidden), kernel=kernel
        )
        self.norm = BatchNorm1d(channels)

    def forward(self, feat: torch.Tensor, coord: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """feat (N, C), coord (N, 3) scaled positions, idx (N, K) -> (N, C)."""
        return feat + torch.relu(self.norm(self.conv(feat, coord, coord, idx)))


def segment_max(values: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """Max over each cloud: values (N, C), offset (B,) -> (B, C). Differentiable."""
    batch = offset_to_batch(offset)
    out = values.new_full((offset.shape[0], values.shape[1]), float("-inf"))
    out = out.scatter_reduce(
        0, batch[:, None].expand_as(values), values, reduce="amax", include_self=True
    )
    return torch.nan_to_num(out, neginf=0.0)


class ContextHead(nn.Module):
    """Point-wise classifier that adds a per-cloud context vector AFTER the first BatchNorm.

    The global max-pooled feature is one constant per cloud. Concatenated to every point and fed
    through Linear + BatchNorm, it is largely removed by the batch mean in training (entirely
    when a batch holds one cloud: its gradient is then zero) but added back through the running
    mean in evaluation, so train and eval disagree (batch size 1 collapsed to ~5 % val mIoU).
    Projecting it separately and adding it after the normalisation keeps it in both modes.

    Args:
        point_channels: per-point input width C_p.
        context_channels: per-cloud context width C_c.
        hidden: widths of the hidden layers (at least one).
        num_classes: logits per point.
        dropout: dropout before the last layer.
    """

    #: plain PyTorch: ``pcseg.nn.continuous_conv.compile_network`` may torch.compile it
    compilable = True

    def __init__(
        self,
        point_channels: int,
        context_channels: int,
        hidden: Sequence[int],
        num_classes: int,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        hidden = list(hidden)
        if not hidden:
            raise ValueError("the classifier head needs at least one hidden layer (head_hidden)")
        self.point = nn.Linear(point_channels, hidden[0], bias=False)
        self.norm = BatchNorm1d(hidden[0])
        # LayerNorm works per cloud (any batch size) and keeps the max-pooled magnitudes in
        # range; the projection starts at zero so the context joins in gradually.
        self.context_norm = nn.LayerNorm(context_channels)
        self.context = nn.Linear(context_channels, hidden[0])
        nn.init.zeros_(self.context.weight)
        nn.init.zeros_(self.context.bias)
        layers: list[nn.Module] = [nn.ReLU()]
        prev = hidden[0]
        for h in hidden[1:]:
            layers += [nn.Linear(prev, h, bias=False), BatchNorm1d(h), nn.ReLU()]
            prev = h
        layers += [nn.Dropout(dropout), nn.Linear(prev, num_classes)]
        self.rest = nn.Sequential(*layers)

    def forward(
        self, point_feat: torch.Tensor, context: torch.Tensor, offset: torch.Tensor
    ) -> torch.Tensor:
        """point_feat (N, C_p), context (B, C_c), offset (B,) -> logits (N, num_classes)."""
        # index_select, not [batch]: indexing's CPU backward sums with racing threads (not
        # bit-reproducible); index_select's backward (index_add_) is sequential.
        ctx = self.context(self.context_norm(context)).index_select(0, offset_to_batch(offset))
        return self.rest(self.norm(self.point(point_feat)) + ctx)


@contextmanager
def _batch_statistics(net: nn.Module) -> Iterator[None]:
    """Every BatchNorm of ``net`` normalises with the statistics of its input (training mode
    without tracking, so the running statistics and counters stay as they are); dropout and
    everything else keep their mode."""
    norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm1d)]
    saved = [(m.training, m.track_running_stats) for m in norms]
    try:
        for m in norms:
            m.train()
            m.track_running_stats = False
        yield
    finally:
        for m, (training, tracking) in zip(norms, saved, strict=True):
            m.train(training)
            m.track_running_stats = tracking


class PCCN(nn.Module):
    """Parametric continuous convolution network for point-wise semantic segmentation.

    Args:
        in_channels: input feature width C_in (see ``pcseg.data.features``).
        num_classes: logits per point (20 for SemanticKITTI, class 0 ignored by the loss).
        width: channels of every continuous-conv layer.
        depth: number of residual continuous-conv blocks (the paper uses 8:
            ``experiment=pccn_kitti``).
        k: neighbours per point (the KNN locality window).
        kernel: "full" (an MLP emits a C x C matrix per neighbour, evaluated factorised) or
            "separable" (MLP emits C values, one shared C x C matrix; cheaper).
        kernel_hidden: hidden widths of the kernel MLP.
        kernel_scale: metres; relative offsets are divided by it so the kernel MLP sees O(1)
            inputs whatever the voxel size.
        head_hidden: widths of the point-wise classifier MLP.
        dropout: dropout before the last classifier layer.
        norm_stats: the statistics every BatchNorm uses in evaluation. "running": the running
            averages (torch's usual). "cloud": each cloud's own, as training at batch size 1
            sees them (an eval-mode forward runs cloud by cloud with batch statistics and
            leaves the running ones untouched). "auto" (default): "cloud" for a cloud with a
            constant input channel (a scan without intensity), "running" for the others.
            Why: remission dropout trains 1 scan in 4 without intensity, and such a scan
            shifts every layer's statistics, which batch-size-1 training normalised away scan
            by scan but the running averages (mostly scans with intensity) do not. Measured
            on one model of the default config (6 epochs, generator 3; official mIoU, every
            point):
            simulated validation 39.3 % running / 50.8 % cloud; remission zeroed 9.4 % /
            25.1 %; real SemanticKITTI 00/000000-2 21.8 % / 15.9 %, zeroed 4.3 % / 17.6 %.
            "auto" keeps the real-scan figure with intensity and the zeroed ones of "cloud".

    Defaults are ``configs/model/pccn.yaml``'s (sized for 2 CPU cores).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        width: int = 32,
        depth: int = 6,
        k: int = 12,
        kernel: str = "separable",
        kernel_hidden: Sequence[int] = (16,),
        kernel_scale: float = 1.0,
        head_hidden: Sequence[int] = (64,),
        dropout: float = 0.1,
        norm_stats: str = "auto",
    ) -> None:
        super().__init__()
        if norm_stats not in NORM_STATS:
            raise ValueError(f"norm_stats must be one of {NORM_STATS}, got {norm_stats!r}")
        self.norm_stats = norm_stats
        if depth < 1 or k < 1 or width < 1:
            raise ValueError(f"depth, k and width must be >= 1, got {depth}, {k}, {width}")
        self.k = k
        self.kernel_scale = float(kernel_scale)
        self.input_norm = InputNorm(in_channels)
        self.stem = nn.Sequential(
            nn.Linear(in_channels, width, bias=False), BatchNorm1d(width), nn.ReLU()
        )
        self.blocks = nn.ModuleList(
            ResidualContinuousBlock(width, kernel_hidden, kernel) for _ in range(depth)
        )
        # every block's output per point; the last block's per-cloud max as context
        self.head = ContextHead(width * depth, width, head_hidden, num_classes, dropout)

    def neighbours(self, batch: PointBatch) -> torch.Tensor:
        """(N, K) int64 indices of each point's K nearest neighbours within its own cloud."""
        return knn(batch.coord, batch.coord, self.k, batch.offset, batch.offset).idx

    def encode_fine(self, batch: PointBatch) -> list[torch.Tensor]:
        """Stem and residual blocks on every point, over one shared KNN window: each block's
        output (N, width)."""
        idx = self.neighbours(batch)
        coord = batch.coord / self.kernel_scale
        h = self.stem(self.input_norm(batch.feat, batch.offset))
        outputs = []
        for block in self.blocks:
            h = block(h, coord, idx)
            outputs.append(h)
        return outputs

    def forward(self, batch: PointBatch) -> torch.Tensor:
        """batch with coord (N, 3), feat (N, C_in), offset (B,) -> logits (N, num_classes).

        In evaluation, clouds that ``norm_stats`` puts on their own statistics (see the class
        docstring) run one by one; otherwise :meth:`logits` as is."""
        if self.training or self.norm_stats == "running":
            return self.logits(batch)
        own = torch.ones(len(batch.offset), dtype=torch.bool)
        if self.norm_stats == "auto":
            cloud = offset_to_batch(batch.offset)
            own = ~_varies_per_cloud(batch.feat.detach(), cloud, len(batch.offset)).all(1).cpu()
            if not bool(own.any()):
                return self.logits(batch)
        return self._logits_per_cloud(batch, own.tolist())

    def logits(self, batch: PointBatch) -> torch.Tensor:
        """The network itself: (N, num_classes) logits of a packed batch."""
        outputs = self.encode_fine(batch)
        pooled = segment_max(outputs[-1], batch.offset)
        return self.head(torch.cat(outputs, dim=1), pooled, batch.offset)

    def _logits_per_cloud(self, batch: PointBatch, own_stats: list[bool]) -> torch.Tensor:
        """Eval-mode logits cloud by cloud; clouds with ``own_stats`` True have every BatchNorm
        on their own statistics."""
        starts = offset_to_starts(batch.offset).tolist()
        ends = batch.offset.tolist()
        parts = []
        for start, end, own in zip(starts, ends, own_stats, strict=True):
            if end == start:
                continue
            one = PointBatch(
                coord=batch.coord[start:end],
                feat=batch.feat[start:end],
                offset=batch.offset.new_tensor([end - start]),
            )
            if own:
                with _batch_statistics(self):
                    parts.append(self.logits(one))
            else:
                parts.append(self.logits(one))
        if not parts:
            return self.logits(batch)
        return torch.cat(parts)


def strided_subsample(offset: torch.Tensor, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every ``stride``-th point of each cloud (at least one per non-empty cloud).

    Voxelised clouds are stored in voxel-key order, so a stride keeps a spatially even subset.
    Returns (rows (M,) int64 into the packed points, coarse offset (B,) int64).
    """
    starts = offset_to_starts(offset)
    rows = [torch.arange(int(s), int(e), stride) for s, e in zip(starts, offset, strict=True)]
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.int64)
    return torch.cat(rows).to(offset.device), torch.cumsum(lengths, 0).to(offset.device)


def grid_subsample(
    coord: torch.Tensor, offset: torch.Tensor, cell: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """One point per occupied ``cell``-metre grid cell of each cloud (the first in storage order).

    coord (N, 3), offset (B,) -> (rows (M,) int64 into coord, ordered cloud by cloud;
    coarse offset (B,) int64). Cells never span two clouds and are anchored at each cloud's
    own minimum corner, so a cloud is subsampled the same whatever else is in the batch. A grid
    keeps the subset spatially even whatever the point order, unlike a stride.
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


class PCCNEncoderDecoder(PCCN):
    """PCCN with coarser levels for a larger receptive field on full scans.

    Fine blocks run on every point; a continuous conv carries features from the fine points to
    a coarser subset (queries differ from supports, which the layer allows), more blocks run
    there with a wider neighbourhood in metres, and a last continuous conv brings them back to
    every fine point. The head sees every fine block's output, the decoded coarse features and
    the per-cloud max of the coarsest level. With ``levels`` > 1 the same step repeats on ever
    coarser subsets; decoding adds each level's up-sampled output to the encoder output of the
    level above it. Coarse levels hold few points, so each extra level costs little and widens
    the view by several metres: what tells a parking lane from the road, or a median from a
    sidewalk. All levels have ``width`` channels.

    How a level is subsampled from the one above:

    - ``subsample="stride"`` (``model=pccn_unet``): every ``stride``-th point of each cloud.
      Voxelised clouds are stored in voxel-key order, so this is a spatially even subset, and
      the cheapest one.
    - ``subsample="grid"`` (``model=unet``): one point per occupied grid cell of each cloud, the
      cell ``cell * 2**(l-1)`` metres at level l (0.6, 1.2, 2.4 m for ``cell=0.6``): even
      whatever the point order.

    Args (beyond :class:`PCCN`'s; ``depth`` counts the fine blocks):
        coarse_depth: residual blocks at each coarse level.
        levels: number of coarse levels (>= 1).
        subsample: "stride" or "grid", see above.
        stride: 1 coarse point per ``stride`` points of the level above ("stride" only; None
            with "grid").
        cell: grid cell of level 1 in metres ("grid" only; None with "stride").

    Level l's offsets are divided by ``kernel_scale * 2**(l-1)``, so the kernel MLPs see O(1)
    inputs at every level. Defaults are ``configs/model/pccn_unet.yaml``'s.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        width: int = 32,
        depth: int = 2,
        coarse_depth: int = 3,
        levels: int = 3,
        subsample: str = "stride",
        stride: int | None = 4,
        cell: float | None = None,
        k: int = 12,
        kernel: str = "separable",
        kernel_hidden: Sequence[int] = (16,),
        kernel_scale: float = 1.0,
        head_hidden: Sequence[int] = (64,),
        dropout: float = 0.1,
        norm_stats: str = "auto",
    ) -> None:
        # PCCN builds its own head first (replaced below): it keeps the random initialisation,
        # so a seeded run starts from the same weights as before the networks were merged
        super().__init__(
            in_channels,
            num_classes,
            width=width,
            depth=depth,
            k=k,
            kernel=kernel,
            kernel_hidden=kernel_hidden,
            kernel_scale=kernel_scale,
            head_hidden=head_hidden,
            dropout=dropout,
            norm_stats=norm_stats,
        )
        check_subsampling(levels, subsample, stride, cell)
        self.levels, self.subsample = levels, subsample
        self.stride, self.cell = stride, cell
        hidden = tuple(kernel_hidden)

        def conv() -> ContinuousConv:
            return ContinuousConv(width, width, kernel_hidden=hidden, kernel=kernel)

        def blocks() -> nn.ModuleList:
            return nn.ModuleList(
                ResidualContinuousBlock(width, hidden, kernel) for _ in range(coarse_depth)
            )

        # level 1 keeps its original attribute names (checkpoints of one-level models load)
        self.down = conv()
        self.coarse_blocks = blocks()
        self.up = conv()
        self.up_norm = BatchNorm1d(width)
        self.deep_down = nn.ModuleList(conv() for _ in range(levels - 1))
        self.deep_blocks = nn.ModuleList(blocks() for _ in range(levels - 1))
        self.deep_up = nn.ModuleList(conv() for _ in range(levels - 1))
        self.deep_up_norm = nn.ModuleList(BatchNorm1d(width) for _ in range(levels - 1))
        self.head = ContextHead(width * depth + width, width, head_hidden, num_classes, dropout)

    def _stage(self, level: int) -> tuple[ContinuousConv, nn.ModuleList, ContinuousConv, nn.Module]:
        """(down conv, blocks, up conv, up norm) of coarse ``level`` (1 = the first)."""
        if level == 1:
            return self.down, self.coarse_blocks, self.up, self.up_norm
        i = level - 2
        return self.deep_down[i], self.deep_blocks[i], self.deep_up[i], self.deep_up_norm[i]

    def coarser(
        self, xyz: torch.Tensor, offset: torch.Tensor, level: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Points of coarse ``level`` from those of the level above: xyz (N, 3), offset (B,)
        -> (xyz (M, 3), offset (B,)); every non-empty cloud keeps at least one point."""
        if self.subsample == "stride":
            rows, c_offset = strided_subsample(offset, self.stride)
        else:
            rows, c_offset = grid_subsample(xyz, offset, self.cell * 2.0 ** (level - 1))
        return xyz[rows], c_offset

    def scale(self, level: int) -> float:
        """Metres per unit of the kernel MLPs' input at coarse ``level`` (>= 1)."""
        return self.kernel_scale * 2.0 ** (level - 1)

    def encode_coarse(
        self, h: torch.Tensor, batch: PointBatch
    ) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], list[torch.Tensor]]:
        """Level l-1 -> level l (a subset of the level above), then the blocks there.

        h (N, width): the last fine block's output. Returns every level's points, (xyz (N_l, 3),
        offset (B,)) for l = 0 (fine) .. L, and the encoder output (N_l, width) of l = 1 .. L.
        """
        points = [(batch.coord, batch.offset)]
        skips: list[torch.Tensor] = []
        for level in range(1, self.levels + 1):
            xyz, offset = points[-1]
            c_xyz, c_offset = self.coarser(xyz, offset, level)
            scale = self.scale(level)
            down, blocks, _, _ = self._stage(level)
            down_idx = knn(c_xyz, xyz, self.k, c_offset, offset).idx
            own_idx = knn(c_xyz, c_xyz, self.k, c_offset, c_offset).idx
            c_scaled = c_xyz / scale
            h = torch.relu(down(h, xyz / scale, c_scaled, down_idx))
            for block in blocks:
                h = block(h, c_scaled, own_idx)
            points.append((c_xyz, c_offset))
            skips.append(h)
        return points, skips

    def decode(
        self, points: list[tuple[torch.Tensor, torch.Tensor]], skips: list[torch.Tensor]
    ) -> torch.Tensor:
        """Each level's output carried up by a continuous conv and added to the encoder output
        of the level above; level 1's lands on the fine points: -> (N, width)."""
        h = skips[-1]
        for level in range(self.levels, 0, -1):
            (xyz, offset), (f_xyz, f_offset) = points[level], points[level - 1]
            scale = self.scale(level)
            _, _, up, norm = self._stage(level)
            up_idx = knn(f_xyz, xyz, self.k, f_offset, offset).idx
            h = torch.relu(norm(up(h, xyz / scale, f_xyz / scale, up_idx)))
            if level > 1:
                h = skips[level - 2] + h
        return h

    def logits(self, batch: PointBatch) -> torch.Tensor:
        """The network itself: (N, num_classes) logits of a packed batch."""
        outputs = self.encode_fine(batch)
        points, skips = self.encode_coarse(outputs[-1], batch)
        pooled = segment_max(skips[-1], points[-1][1])
        decoded = self.decode(points, skips)
        return self.head(torch.cat([*outputs, decoded], dim=1), pooled, batch.offset)


def check_subsampling(levels: int, subsample: str, stride: int | None, cell: float | None) -> None:
    """ValueError unless the coarse levels are described by exactly one of ``stride`` / ``cell``,
    matching ``subsample`` (so no configured value is silently ignored)."""
    if levels < 1:
        raise ValueError(f"levels must be >= 1, got {levels}")
    if subsample not in SUBSAMPLING:
        raise ValueError(f"subsample must be one of {SUBSAMPLING}, got {subsample!r}")
    if subsample == "stride" and (stride is None or stride < 2 or cell is not None):
        raise ValueError(
            f"subsample='stride' needs stride >= 2 and cell=None, got stride={stride}, cell={cell}"
        )
    if subsample == "grid" and (cell is None or not cell > 0 or stride is not None):
        raise ValueError(
            f"subsample='grid' needs cell > 0 (metres) and stride=None, got cell={cell}, "
            f"stride={stride}"
        )
