"""Plain epoch lines for runs without a terminal, and a progress bar only where there is one.

A run under SLURM, ``nohup`` or CI has no terminal: Rich's live bar cannot redraw there and
prints its last frame at the very end, so the log shows nothing for the whole run. Instead,
:class:`EpochLog` writes one line per epoch::

    epoch 3/7 | train loss 0.8123 | val mIoU 45.2 % | 68.1 s | 36,512 points/s | lr 6.1e-03 | ETA 4 min 32 s

through the ``pcseg.epochs`` logger, so Hydra's file handler puts it in the run folder's
``train.log`` always, and on stdout when stdout is not a terminal (on a terminal the
:class:`TerminalRichProgressBar` shows the same numbers live).
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, Literal

import pytorch_lightning as pl
from pytorch_lightning.callbacks import RichProgressBar

log = logging.getLogger("pcseg.epochs")

Mode = Literal["auto", "always", "never"]


def stdout_is_terminal() -> bool:
    """True when stdout is an interactive terminal (False under nohup, SLURM, CI, pipes)."""
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):  # replaced or closed stdout
        return False


def format_duration(seconds: float) -> str:
    """``75.2`` -> ``'1 min 15 s'``; ``8.3`` -> ``'8.3 s'``; ``4000`` -> ``'1 h 06 min'``."""
    seconds = max(float(seconds), 0.0)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _file_handlers() -> list[logging.Handler]:
    """The root logger's file handlers (Hydra's ``<run>/<job>.log``)."""
    return [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]


def _console_handlers() -> list[logging.Handler]:
    """The root logger's handlers that write to stdout or stderr (Hydra's console handler)."""
    consoles = {id(s) for s in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)}
    return [
        h
        for h in logging.getLogger().handlers
        if isinstance(h, logging.StreamHandler)
        and not isinstance(h, logging.FileHandler)
        and id(getattr(h, "stream", None)) in consoles
    ]


def emit(line: str, console: bool) -> None:
    """Log ``line`` at INFO to the root logger's file handlers, and to the console when
    ``console`` (through the console handlers, or ``print`` where logging has none: a plain
    ``train(cfg)`` call outside Hydra)."""
    record = log.makeRecord(log.name, logging.INFO, __file__, 0, line, None, None)
    handlers = _file_handlers()
    if console:
        stream = _console_handlers()
        if stream:
            handlers += stream
        else:
            print(line, flush=True)
    for handler in handlers:
        if record.levelno >= handler.level:
            handler.handle(record)


def console_wanted(mode: Mode) -> bool:
    """``auto``: the console gets the lines when stdout is not a terminal."""
    if mode not in ("auto", "always", "never"):
        raise ValueError(f"console must be 'auto', 'always' or 'never', got {mode!r}")
    return mode == "always" or (mode == "auto" and not stdout_is_terminal())


class EpochLog(pl.Callback):
    """One line per training epoch: epoch, mean train loss, val mIoU (voxel level), epoch wall
    time (validation included), training points per second, learning rate and the ETA of the
    remaining epochs (``trainer.max_epochs``, which a time budget lowers to what fits).

    Args:
        console: ``auto`` prints the lines on stdout only when it is not a terminal (SLURM,
            nohup, CI); ``always``/``never`` force it. The run's ``train.log`` gets them always.
        metric: the validation metric shown as "val mIoU".
    """

    def __init__(self, console: Mode = "auto", metric: str = "val/miou") -> None:
        self.console = console_wanted(console)
        self.metric = metric
        self._epoch_start = 0.0
        self._train_end = 0.0
        self._loss_sum = 0.0
        self._loss_count = 0
        self._points = 0
        self._validated = False
        self._epoch_times: list[float] = []

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_start = self._train_end = time.perf_counter()
        self._loss_sum, self._loss_count, self._points = 0.0, 0, 0
        self._validated = False

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self._train_end = time.perf_counter()
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is not None:
            self._loss_sum += float(loss.detach())
            self._loss_count += 1
        coord = getattr(batch, "coord", None)
        if coord is not None:
            self._points += int(coord.shape[0])

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._validated = True

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        elapsed = time.perf_counter() - self._epoch_start
        self._epoch_times.append(elapsed)
        if not trainer.is_global_zero:
            return
        emit(self.line(trainer, elapsed), self.console)

    def line(self, trainer: pl.Trainer, elapsed: float) -> str:
        """The epoch's line (see the module docstring for an example)."""
        done = trainer.current_epoch + 1
        total = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else None
        parts = [f"epoch {done}/{total}" if total else f"epoch {done}"]
        if self._loss_count:
            parts.append(f"train loss {self._loss_sum / self._loss_count:.4f}")
        else:
            parts.append("train loss -")
        value = trainer.callback_metrics.get(self.metric)
        if self._validated and value is not None:
            parts.append(f"val mIoU {100 * float(value):.1f} %")
        else:
            parts.append("val mIoU -")
        parts.append(format_duration(elapsed))
        train_s = self._train_end - self._epoch_start
        if self._points and train_s > 0:
            parts.append(f"{self._points / train_s:,.0f} points/s")
        if trainer.optimizers:
            parts.append(f"lr {trainer.optimizers[0].param_groups[0]['lr']:.2e}")
        if total:
            mean = sum(self._epoch_times) / len(self._epoch_times)
            parts.append(f"ETA {format_duration(max(total - done, 0) * mean)}")
        return " | ".join(parts)


class TerminalRichProgressBar(RichProgressBar):
    """Lightning's Rich progress bar where stdout is a terminal; disabled elsewhere (a live bar
    cannot redraw in a file or pipe, and :class:`EpochLog` prints plain lines there). It stays
    registered while disabled, so Lightning does not fall back to its tqdm bar.

    Args:
        enabled: ``auto`` (on a terminal only), ``always`` or ``never``.
        **kwargs: passed to ``RichProgressBar`` (``refresh_rate``, ``leave``, ``theme``...).
    """

    def __init__(self, enabled: Mode = "auto", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if enabled not in ("auto", "always", "never"):
            raise ValueError(f"enabled must be 'auto', 'always' or 'never', got {enabled!r}")
        if enabled == "never" or (enabled == "auto" and not stdout_is_terminal()):
            self.disable()
