"""A wall-clock budget for a whole training run, which the learning-rate schedule follows.

``python train.py time_budget_min=9.5`` (what ``make train`` runs) promises that the process,
counted from its start (imports, dataset simulation in ``prepare_data``, class counting,
training, and the closing full-resolution scoring), ends within the budget on any machine:

1. after the first ``measure_steps`` optimiser steps the callback times a step, estimates an
   epoch (training steps + validation) and the closing phase (``validate_best``: one more
   validation pass at voxel level, then every original point scored), and plans the number
   of whole epochs that fit, capped by ``trainer.max_epochs``;
2. it sets ``trainer.max_epochs`` to that number (training ends at an epoch boundary, after
   that epoch's validation and checkpoint) and moves the LR schedule's end there
   (:func:`pcseg.optim.retarget_schedule`), so the cosine reaches its minimum on the last
   step instead of being cut off half-way;
3. after every epoch it re-plans with the measured epoch and validation times (the machine's
   load changes): fewer epochs if they no longer fit, more only with a 15 % margin;
4. if a step ever pushes past the point of no return (machine suddenly much slower), it stops
   mid-epoch (Lightning still validates and checkpoints), so the budget holds regardless.

When every epoch of ``trainer.max_epochs`` fits, nothing is changed: the run is
bit-identical to one without a budget. ``minutes: null`` turns the callback off entirely.
Decisions are taken on rank 0 and broadcast, so every DDP process plans the same epochs.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from pcseg.callbacks.epoch_log import format_duration
from pcseg.optim import retarget_schedule

log = logging.getLogger(__name__)

_IMPORT_TIME = time.time()


def process_start_time() -> float:
    """Unix time at which this process started (Linux ``/proc``), so the budget also counts
    the interpreter start and imports; elsewhere the time this module was imported."""
    try:
        stat = Path("/proc/self/stat").read_text()
        # field 22 (starttime, clock ticks after boot); fields after the ")" start at field 3
        start_ticks = int(stat.rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return time.time() - uptime + start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return _IMPORT_TIME


def plan_epochs(
    *,
    budget_s: float,
    elapsed_s: float,
    epoch_s: float,
    reserve_s: float,
    epochs_started: int,
    current_left_s: float,
    max_epochs: int,
) -> int:
    """How many epochs in total the run can train (>= ``epochs_started``, <= ``max_epochs``).

    ``elapsed_s`` since the process started; ``current_left_s``: what the epoch under way
    still needs (0 at an epoch boundary); ``epoch_s``: one more whole epoch, validation
    included; ``reserve_s``: what must stay free after the last epoch (the closing scoring).
    The epoch under way always counts: only :class:`TimeBudget`'s hard stop cuts it short.
    """
    free = budget_s - reserve_s - elapsed_s - current_left_s
    more = math.floor(free / max(epoch_s, 1e-9) + 1e-9) if free > 0 else 0
    return int(max(min(epochs_started + more, max_epochs), min(epochs_started, max_epochs), 1))


@dataclass
class BudgetReport:
    """What the budget did: read by ``train()``'s closing line and the tests."""

    budget_s: float
    max_epochs: int
    planned_epochs: int
    trained_epochs: int = 0
    trained_steps: int = 0
    steps_per_epoch: int = 0
    schedule_steps: int = 0
    schedule_moved: bool = False
    stopped_mid_epoch: bool = False
    fit_end_s: float = 0.0
    reserve_s: float = 0.0


class TimeBudget(pl.Callback):
    """Fit training into ``minutes`` of wall time since the process started (see the module
    docstring for how).

    Args:
        minutes: the budget for the whole process; None disables the callback.
        measure_steps: optimiser steps timed before the first plan (the very first step,
            which pays for warm-up, is not counted).
        eval_step_ratio: a validation step's time as a fraction of a training step's, used
            until the first validation has been timed.
        final_validation: whether ``train()`` scores the best checkpoint after fitting
            (``validate_best``): then ``final_factor`` x the validation time is reserved.
        final_factor: the closing phase's length in validation passes: ``validate_best``'s
            voxel-level pass, plus every original point scored (~1.5 passes: the network
            runs again and labels go back through the voxel index).
        overhead_s: fixed reserve for loading the best checkpoint, writing files, exiting.
        start_time: Unix time the budget counts from (None: the process start). ``make
            train`` passes the time ``make`` started, so the set-up of a fresh clone (the
            ``.venv`` bootstrap) counts too; a time in the future is refused.
        clock: the time source, ``time.time`` (tests pass a simulated clock to check the
            planning deterministically on a machine whose speed they cannot know).
    """

    def __init__(
        self,
        minutes: float | None = None,
        measure_steps: int = 10,
        eval_step_ratio: float = 0.5,
        final_validation: bool = True,
        final_factor: float = 2.5,
        overhead_s: float = 15.0,
        start_time: float | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if minutes is not None and minutes <= 0:
            raise ValueError(f"time budget must be positive minutes or null, got {minutes!r}")
        self.budget_s = None if minutes is None else 60.0 * float(minutes)
        self.measure_steps = max(int(measure_steps), 1)
        self.eval_step_ratio = float(eval_step_ratio)
        self.final_factor = float(final_factor) if final_validation else 0.0
        self.overhead_s = float(overhead_s)
        self._clock = clock or time.time
        self.start_time = process_start_time() if start_time is None else float(start_time)
        if clock is None and self.start_time > time.time() + 1.0:
            raise ValueError(
                f"time budget start {start_time!r} lies in the future (Unix time expected)"
            )
        self.report: BudgetReport | None = None
        self._steps_seen = 0
        self._step_times: list[float] = []
        self._last_batch_end: float | None = None
        self._epoch_start = 0.0
        self._epoch_times: list[float] = []
        self._val_start = 0.0
        self._val_s: float | None = None
        self._planned_once = False
        self._stop_step: int | None = None
        self._logged_kept = False

    @property
    def active(self) -> bool:
        return self.budget_s is not None

    def elapsed(self) -> float:
        """Seconds since the budget's start."""
        return self._clock() - self.start_time

    # ---- estimates -------------------------------------------------------------------
    def _step_s(self) -> float:
        times = sorted(self._step_times[-50:])
        return times[len(times) // 2] if times else 0.0

    def _val_estimate(self, trainer: pl.Trainer) -> float:
        if self._val_s is not None:
            return self._val_s
        batches = sum(_as_count(n) for n in _as_list(trainer.num_val_batches))
        if not batches:  # val loader not built yet: Lightning builds it at the first validation
            batches = _val_batches_from_datamodule(trainer)
        return batches * self._step_s() * self.eval_step_ratio

    def _epoch_estimate(self, trainer: pl.Trainer) -> float:
        steps = _as_count(trainer.num_training_batches)
        from_steps = steps * self._step_s() + self._val_estimate(trainer)
        if not self._epoch_times:
            return from_steps
        # measured epochs, the slower of the mean and the latest (load can only be guessed)
        recent = max(sum(self._epoch_times) / len(self._epoch_times), self._epoch_times[-1])
        return recent

    def _reserve(self, trainer: pl.Trainer) -> float:
        return self.final_factor * self._val_estimate(trainer) + self.overhead_s

    # ---- hooks -----------------------------------------------------------------------
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.active:
            return
        steps_per_epoch = math.ceil(
            _as_count(trainer.num_training_batches) / max(trainer.accumulate_grad_batches, 1)
        )
        max_epochs = int(trainer.max_epochs or 1)
        # Lightning ignores should_stop until min_epochs are done: a machine so slow that
        # not even one epoch fits must still stop inside the budget
        trainer.fit_loop.min_epochs = 0
        self.report = BudgetReport(
            budget_s=float(self.budget_s),
            max_epochs=max_epochs,
            planned_epochs=max_epochs,
            steps_per_epoch=steps_per_epoch,
            schedule_steps=steps_per_epoch * max_epochs,
        )
        self._epoch_start = self._clock()
        log.info(
            "time budget %s for the whole run (%s already spent before training: set-up, "
            "start-up, data); "
            "at most %d epochs of %d steps; planning after %d timed steps",
            format_duration(self.budget_s),
            format_duration(self.elapsed()),
            max_epochs,
            steps_per_epoch,
            self.measure_steps,
        )

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.active:
            self._last_batch_end = None  # the gap to the first batch includes worker start-up

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if not self.active or self.report is None:
            return
        now = self._clock()
        if self._last_batch_end is not None:
            self._step_times.append(now - self._last_batch_end)
        self._last_batch_end = now
        self._steps_seen += 1
        left = _as_count(trainer.num_training_batches) - (batch_idx + 1)
        if not self._planned_once and len(self._step_times) >= self.measure_steps and left > 0:
            self._planned_once = True
            current_left = left * self._step_s() + self._val_estimate(trainer)
            self._replan(trainer, current_left, f"after {len(self._step_times)} timed steps")
        if self._stop_step is not None and trainer.global_step >= self._stop_step and left > 0:
            if not trainer.should_stop:  # the planned partial last epoch ends here
                trainer.should_stop = True
                self.report.stopped_mid_epoch = True
                log.info(
                    "time budget: stopping after step %d, as planned (%s spent)",
                    trainer.global_step,
                    format_duration(self.elapsed()),
                )
            return
        # hard stop: one more step plus validation plus the reserve would overrun the budget
        need = self._step_s() + self._val_estimate(trainer) + self._reserve(trainer)
        stop = left > 0 and self.elapsed() + need > self.report.budget_s
        stop = bool(trainer.strategy.broadcast(stop, src=0))
        if stop and not trainer.should_stop:
            trainer.should_stop = True
            self.report.stopped_mid_epoch = True
            log.warning(
                "time budget: stopping in the middle of epoch %d (%s of %s spent; the closing "
                "scoring needs ~%s): the machine got slower than planned",
                trainer.current_epoch + 1,
                format_duration(self.elapsed()),
                format_duration(self.report.budget_s),
                format_duration(self._reserve(trainer)),
            )

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.active and not trainer.sanity_checking:
            self._val_start = self._clock()

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.active and trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._val_s = self._clock() - self._val_start

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.active or self.report is None:
            return
        now = self._clock()
        self._epoch_times.append(now - self._epoch_start)
        self._epoch_start = now
        self.report.trained_epochs = trainer.current_epoch + 1
        if not trainer.should_stop:
            self._replan(trainer, 0.0, f"after epoch {trainer.current_epoch + 1}")

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.active or self.report is None:
            return
        r = self.report
        r.fit_end_s = self.elapsed()
        r.trained_steps = int(trainer.global_step)
        r.reserve_s = self._reserve(trainer)
        log.info(
            "time budget: trained %d of at most %d epochs (%d optimiser steps, LR schedule %s) "
            "in %s since the start; %s reserved for the closing scoring",
            r.trained_epochs,
            r.max_epochs,
            r.trained_steps,
            f"moved to end at step {r.schedule_steps}" if r.schedule_moved else "unchanged",
            format_duration(r.fit_end_s),
            format_duration(r.reserve_s),
        )

    def budget_summary(self) -> str | None:
        """One closing line for the end of the run (None without a budget)."""
        if self.report is None:
            return None
        r = self.report
        limited = r.trained_epochs < r.max_epochs or r.stopped_mid_epoch
        reason = "the time budget" if limited else "max_epochs"
        partial = ", the last one stopped early" if r.stopped_mid_epoch else ""
        return (
            f"trained {r.trained_epochs} epoch(s) (limited by {reason}; at most {r.max_epochs}"
            f"{partial}; {r.trained_steps} optimiser steps); "
            f"whole run {format_duration(self.elapsed())} of the {format_duration(r.budget_s)} "
            f"time budget"
        )

    # ---- planning --------------------------------------------------------------------
    def _replan(self, trainer: pl.Trainer, current_left: float, when: str) -> None:
        r = self.report
        assert r is not None
        epoch_s = self._epoch_estimate(trainer)
        reserve = self._reserve(trainer)
        kwargs = {
            "budget_s": r.budget_s,
            "elapsed_s": self.elapsed(),
            "reserve_s": reserve,
            "epochs_started": trainer.current_epoch + 1,
            "current_left_s": current_left,
            "max_epochs": r.max_epochs,
        }
        planned = plan_epochs(epoch_s=epoch_s, **kwargs)
        if planned > r.planned_epochs:  # more epochs only with a margin: no flip-flopping
            planned = max(r.planned_epochs, plan_epochs(epoch_s=1.15 * epoch_s, **kwargs))
        planned = int(trainer.strategy.broadcast(planned, src=0))
        last_started = planned == trainer.current_epoch + 1
        if current_left > 0 and last_started and not self._fits(current_left, reserve, r):
            self._plan_partial(trainer, reserve)
            return
        if planned == r.planned_epochs:
            if not self._logged_kept:
                self._logged_kept = True
                log.info(
                    "time budget (%s): ~%s per epoch, %s reserved for the closing scoring: "
                    "%d epochs fit%s",
                    when,
                    format_duration(epoch_s),
                    format_duration(reserve),
                    planned,
                    "" if r.schedule_moved else ", LR schedule unchanged",
                )
            return
        r.planned_epochs = planned
        trainer.fit_loop.max_epochs = planned
        total = planned * r.steps_per_epoch
        moved = any(retarget_schedule(c.scheduler, total) for c in trainer.lr_scheduler_configs)
        if moved:
            r.schedule_steps = total
            r.schedule_moved = True
        log.info(
            "time budget (%s): ~%s per epoch, %s reserved for the closing scoring, %s spent "
            "-> %d of at most %d epochs%s",
            when,
            format_duration(epoch_s),
            format_duration(reserve),
            format_duration(self.elapsed()),
            planned,
            r.max_epochs,
            f"; LR schedule now ends at step {total}"
            if moved
            else " (this LR schedule cannot be moved: it is cut off where training stops)",
        )

    def _fits(self, current_left: float, reserve: float, r: BudgetReport) -> bool:
        return self.elapsed() + current_left + reserve <= r.budget_s

    def _plan_partial(self, trainer: pl.Trainer, reserve: float) -> None:
        """Not even the epoch under way fits: stop after the optimiser steps that do (then
        validate), with the LR schedule ending on that step."""
        r = self.report
        assert r is not None
        step_s = max(self._step_s(), 1e-9)
        free = r.budget_s - reserve - self.elapsed() - self._val_estimate(trainer)
        # one step of margin, so that normal step-time noise ends training here and not at
        # the hard stop a step or two earlier (which would cut the schedule short)
        stop = trainer.global_step + max(math.floor(free / step_s) - 1, 0)
        stop = int(trainer.strategy.broadcast(stop, src=0))
        self._stop_step = max(stop, trainer.global_step)
        r.planned_epochs = trainer.current_epoch + 1
        trainer.fit_loop.max_epochs = r.planned_epochs
        moved = any(
            retarget_schedule(c.scheduler, max(self._stop_step, 1))
            for c in trainer.lr_scheduler_configs
        )
        if moved:
            r.schedule_steps = self._stop_step
            r.schedule_moved = True
        log.warning(
            "time budget: ~%s per step, %s reserved for the closing scoring, %s spent: not even "
            "epoch %d fits; training stops after optimiser step %d (of %d in the epoch)%s",
            format_duration(step_s),
            format_duration(reserve),
            format_duration(self.elapsed()),
            trainer.current_epoch + 1,
            self._stop_step,
            r.steps_per_epoch * (trainer.current_epoch + 1),
            ", where the LR schedule now ends" if moved else "",
        )


def _as_list(value: Any) -> list:
    return list(value) if isinstance(value, list | tuple) else [value]


def _as_count(value: Any) -> int:
    """Lightning's batch counts may be inf (iterable datasets): count those as 0."""
    try:
        return int(value) if math.isfinite(float(value)) else 0
    except (TypeError, ValueError):
        return 0


def _val_batches_from_datamodule(trainer: pl.Trainer) -> int:
    datamodule = getattr(trainer, "datamodule", None)
    if datamodule is None:
        return 0
    try:
        return len(datamodule.val_dataloader())
    except Exception:  # a datamodule without validation data: nothing to reserve
        return 0
