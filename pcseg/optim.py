"""Learning-rate schedules built as ``_partial_`` Hydra targets.

``configure_optimizers`` calls them with the optimiser and the total number of optimiser
steps (known only once the trainer has seen the data), so configs never hard-code lengths.
"""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, OneCycleLR


def warmup_cosine(
    optimizer: Optimizer, total_steps: int, warmup_fraction: float = 0.05, final_ratio: float = 0.01
) -> LambdaLR:
    """Linear warm-up over ``warmup_fraction`` of the steps, then cosine decay to
    ``final_ratio`` x the base learning rate."""
    total_steps = max(int(total_steps), 1)
    warmup = max(round(warmup_fraction * total_steps), 1)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min((step - warmup) / max(total_steps - warmup, 1), 1.0)
        return final_ratio + (1 - final_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)


def one_cycle(optimizer: Optimizer, total_steps: int, pct_start: float = 0.1) -> OneCycleLR:
    """torch's one-cycle policy peaking at the optimiser's learning rate."""
    max_lr = [g["lr"] for g in optimizer.param_groups]
    return OneCycleLR(
        optimizer, max_lr=max_lr, total_steps=max(int(total_steps), 1), pct_start=pct_start
    )
