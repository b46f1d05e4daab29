"""Close the distributed process group at the end of a run.

Lightning opens the process group (gloo on CPU, NCCL on GPUs) and never closes it. A process
that exits with the group open leaves gloo's worker threads to C++ static destruction, which
sometimes ends in ``terminate called without an active exception`` and exit status 134 after a
run that succeeded (pytorch/pytorch#190489). Every entry point that may run under DDP closes it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch.distributed as dist


def process_group_open() -> bool:
    """Whether this process belongs to an initialised default process group."""
    return dist.is_available() and dist.is_initialized()


def close_process_group(synchronize: bool = True) -> None:
    """Destroy the default process group if one is open; a no-op otherwise.

    ``synchronize`` waits for every process first (a barrier), so none closes while another
    still needs it; pass False after an error, when a peer may be gone and a barrier would hang.
    """
    if not process_group_open():
        return
    if synchronize:
        dist.barrier()
    dist.destroy_process_group()


@contextmanager
def closing_process_group() -> Iterator[None]:
    """Run the body, then close the process group: synchronised on success, at once on error."""
    try:
        yield
    except BaseException:
        close_process_group(synchronize=False)
        raise
    close_process_group()
