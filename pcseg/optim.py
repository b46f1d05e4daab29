"""Learning-rate schedules built as ``_partial_`` Hydra targets.

``configure_optimizers`` calls them with the optimiser and the total number of optimiser
steps (known only once the trainer has seen the data), so configs never hard-code lengths.
A wall-clock budget (``pcseg.callbacks.TimeBudget``) learns the real length only after the
first steps have been timed: :func:`retarget_schedule` then moves the schedule's end so that
it reaches its minimum on the last step that fits.
"""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, OneCycleLR


class WarmupCosineFactor:
    """LR multiplier of step ``s``: linear warm-up over ``warmup`` steps, then cosine decay
    from 1 to ``final_ratio`` at ``total_steps``.

    A plain object, not a closure, so that (1) :meth:`retarget` can move the end mid-run and
    (2) ``LambdaLR.state_dict`` stores its attributes (ints and floats: checkpoints still load
    with ``weights_only=True``) and a resumed run continues the moved schedule.
    Until :meth:`retarget` is called the arithmetic is exactly that of the original closure,
    so a run without a time budget is bit-identical to one before budgets existed.
    """

    def __init__(self, total_steps: int, warmup_fraction: float, final_ratio: float) -> None:
        self.warmup_fraction = float(warmup_fraction)
        self.final_ratio = float(final_ratio)
        self.total_steps = max(int(total_steps), 1)
        self.warmup = max(round(self.warmup_fraction * self.total_steps), 1)
        # After a retarget past the warm-up the decay restarts from (anchor_step, anchor_progress)
        # and runs linearly in progress to 1 at total_steps: the LR stays continuous.
        self.anchor_step: int | None = None
        self.anchor_progress = 0.0

    def progress(self, step: int) -> float:
        """Fraction of the cosine decay done at ``step`` (0 after warm-up, 1 at the end)."""
        if self.anchor_step is None:
            return min((step - self.warmup) / max(self.total_steps - self.warmup, 1), 1.0)
        span = max(self.total_steps - self.anchor_step, 1)
        done = (step - self.anchor_step) / span
        return min(self.anchor_progress + (1.0 - self.anchor_progress) * done, 1.0)

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        progress = self.progress(step)
        return self.final_ratio + (1 - self.final_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    def retarget(self, total_steps: int, step: int) -> None:
        """End the decay at ``total_steps`` instead, ``step`` optimiser steps having been taken.

        Still in the warm-up: the schedule is rebuilt for the new length (warm-up included).
        Past it: the decay continues from the current LR (no jump) and reaches ``final_ratio``
        exactly at ``total_steps``."""
        total = max(int(total_steps), step + 1, 1)
        if step < self.warmup:
            self.total_steps = total
            self.warmup = max(round(self.warmup_fraction * total), 1)
            self.anchor_step = None
            self.anchor_progress = 0.0
            return
        progress = self.progress(step)
        self.anchor_step = int(step)
        self.anchor_progress = float(progress)
        self.total_steps = total


def warmup_cosine(
    optimizer: Optimizer, total_steps: int, warmup_fraction: float = 0.05, final_ratio: float = 0.01
) -> LambdaLR:
    """Linear warm-up over ``warmup_fraction`` of the steps, then cosine decay to
    ``final_ratio`` x the base learning rate (see :class:`WarmupCosineFactor`)."""
    return LambdaLR(optimizer, WarmupCosineFactor(total_steps, warmup_fraction, final_ratio))


def one_cycle(optimizer: Optimizer, total_steps: int, pct_start: float = 0.1) -> OneCycleLR:
    """torch's one-cycle policy peaking at the optimiser's learning rate (fixed length:
    :func:`retarget_schedule` cannot move it)."""
    max_lr = [g["lr"] for g in optimizer.param_groups]
    return OneCycleLR(
        optimizer, max_lr=max_lr, total_steps=max(int(total_steps), 1), pct_start=pct_start
    )


def retarget_schedule(scheduler: LRScheduler, total_steps: int) -> bool:
    """Make a step-wise schedule end at ``total_steps`` optimiser steps, from where it is now
    (``scheduler.last_epoch`` steps taken). The optimiser's current LR is set to the moved
    schedule's value. Returns False (and changes nothing) for a schedule that cannot move:
    anything but a ``LambdaLR`` whose factors have a ``retarget`` method."""
    if not isinstance(scheduler, LambdaLR):
        return False
    factors = scheduler.lr_lambdas
    if not all(hasattr(f, "retarget") for f in factors):
        return False
    step = int(scheduler.last_epoch)
    for factor in factors:
        factor.retarget(total_steps, step)
    for group, base, factor in zip(
        scheduler.optimizer.param_groups, scheduler.base_lrs, factors, strict=True
    ):
        group["lr"] = base * factor(step)
    scheduler._last_lr = [g["lr"] for g in scheduler.optimizer.param_groups]
    return True
