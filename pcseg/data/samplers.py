"""Distributed sampling for evaluation: every scan of a split exactly once across processes.

PyTorch's ``DistributedSampler`` (what Lightning injects by default) pads the index list with
repeated samples until it divides evenly among the processes, so that every process runs the
same number of batches. For training that is harmless; for evaluation it counts the repeated
scans twice in the confusion matrix and the IoUs no longer match a single-process evaluation.
:class:`UnpaddedDistributedSampler` deals the scans round-robin instead (rank r takes
``r, r + W, r + 2W, ...``), so the per-process counts differ by at most one and their union is
the split, each scan once. Evaluation may run uneven batch counts: nothing synchronises per
batch there (no gradients; the IoU metric and logged means are reduced once, at epoch end).
"""

from __future__ import annotations

from collections.abc import Iterator, Sized

import torch.distributed as dist
from torch.utils.data import DistributedSampler


class UnpaddedDistributedSampler(DistributedSampler):
    """In-order, non-repeating share of ``dataset`` for rank ``rank`` of ``num_replicas``.

    A subclass of ``DistributedSampler`` so Lightning keeps it instead of injecting its own
    padding sampler. Raises ``ValueError`` when the dataset has fewer items than processes: a
    process without a single batch would skip the epoch-end reduction the others wait in.

    Args:
        dataset: any sized dataset.
        num_replicas: number of processes W (default: the initialised process group's size).
        rank: this process's rank in [0, W) (default: from the process group).
    """

    def __init__(
        self, dataset: Sized, num_replicas: int | None = None, rank: int | None = None
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)
        if len(dataset) < self.num_replicas:
            raise ValueError(
                f"an evaluation split of {len(dataset)} scans cannot be shared by "
                f"{self.num_replicas} processes (each needs at least one): use fewer devices"
            )
        self.num_samples = len(range(self.rank, len(dataset), self.num_replicas))
        self.total_size = len(dataset)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.total_size, self.num_replicas))

    def __len__(self) -> int:
        return self.num_samples


def distributed_world_size() -> int:
    """Number of processes of the initialised default process group; 1 when there is none."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def evaluation_sampler(dataset: Sized) -> UnpaddedDistributedSampler | None:
    """The sampler of an evaluation loader: an :class:`UnpaddedDistributedSampler` when this
    process belongs to a process group of several processes, None (plain in-order loading)
    otherwise."""
    if distributed_world_size() > 1:
        return UnpaddedDistributedSampler(dataset)
    return None
