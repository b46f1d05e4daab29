"""An exponential moving average (EMA) of the network's weights: validated, picked and saved.

Why: a network trained on simulated scans is judged on real ones it never saw. An average of
the weights along the end of the trajectory lies in a flatter region of the loss than the last
iterate, and flat minima transfer better across domains (SWA, Izmailov et al. 2018; SWAD,
Cha et al., NeurIPS 2021, on domain generalisation). The average costs one copy of the weights
and one ``lerp`` per optimiser step.

The decay is not a tuned constant that only suits one run length: after ``t`` optimiser steps
it is ``min(max_decay, (1 + t) / (horizon + t))``, so the average always covers about the last
``1 / horizon`` of the steps taken so far (``horizon = 10``: the last ~10 %), whether a run
has 300 steps (``make train`` on a slow machine) or 30,000. Floating-point buffers (BatchNorm's
running statistics) are averaged like the weights; integer ones (``num_batches_tracked``) are
copied.

What the rest of pcseg sees: during fitting, validation runs on the averaged weights (so
``val/miou``, the best-checkpoint choice, the stored class prior and the TensorBoard clouds all
describe them), and every checkpoint's ``state_dict`` holds the averaged weights, so
``evaluate.py``, ``predict.py``, ``init_from`` and ``validate_best`` use them without knowing
this callback. The raw training weights travel in the callback's own checkpoint state and come
back on resume, so a resumed run continues bit for bit (``tests/test_resume.py``).
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch

__all__ = ["WeightAverage", "ema_decay"]


def ema_decay(step: int, horizon: float = 10.0, max_decay: float = 0.9999) -> float:
    """The averaging decay after ``step`` optimiser steps (1 = the first).

    ``(1 + step) / (horizon + step)`` weighs the recent ~``1 / horizon`` of the trajectory: the
    first step's weights already get ``1 - 2 / 11`` of the average (horizon 10), so the random
    initialisation fades at once; capped at ``max_decay``.
    """
    return min(max_decay, (1.0 + step) / (horizon + step))


class WeightAverage(pl.Callback):
    """Keep an EMA of the LightningModule's ``state_dict`` and validate/save it in their place.

    Args:
        enabled: False makes the callback a no-op (the raw weights are validated and saved).
        horizon: the average covers about the last ``1 / horizon`` of the steps so far.
        max_decay: cap on the decay (only reached after ``~horizon / (1 - max_decay)`` steps).
    """

    def __init__(self, enabled: bool = True, horizon: float = 10.0, max_decay: float = 0.9999):
        if horizon < 1.0:
            raise ValueError(f"WeightAverage: horizon must be >= 1, got {horizon}")
        if not 0.0 <= max_decay < 1.0:
            raise ValueError(f"WeightAverage: max_decay must be in [0, 1), got {max_decay}")
        self.enabled = enabled
        self.horizon = float(horizon)
        self.max_decay = float(max_decay)
        #: name -> averaged tensor, the keys of ``pl_module.state_dict()``; None before fitting
        self.average: dict[str, torch.Tensor] | None = None
        #: optimiser steps folded into the average
        self.steps = 0
        #: the raw training weights while validation runs on the average
        self._raw: dict[str, torch.Tensor] | None = None
        #: raw weights read from a checkpoint, put back into the module when fitting starts
        self._resumed_raw: dict[str, torch.Tensor] | None = None

    @property
    def state_key(self) -> str:
        return "WeightAverage"

    # ------------------------------------------------------------------ averaging

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.enabled:
            return
        current = pl_module.state_dict()
        if self._resumed_raw is not None:
            # resumed: the module was loaded with the checkpoint's state_dict, i.e. the average;
            # the raw training weights come from this callback's state
            self.average = {k: v.detach().clone() for k, v in current.items()}
            pl_module.load_state_dict(
                {k: v.to(current[k].device) for k, v in self._resumed_raw.items()}
            )
            self._resumed_raw = None
        elif self.average is None:
            self.average = {k: v.detach().clone() for k, v in current.items()}

    @torch.no_grad()
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, i: int
    ) -> None:
        if not self.enabled or self.average is None:
            return
        if trainer.global_step <= self.steps:  # no optimiser step (accumulation, skipped batch)
            return
        self.steps = trainer.global_step
        decay = ema_decay(self.steps, self.horizon, self.max_decay)
        for name, value in pl_module.state_dict().items():
            avg = self.average[name]
            if avg.is_floating_point():
                avg.lerp_(value.detach(), 1.0 - decay)
            else:
                avg.copy_(value)

    # ------------------------------------------------------------------ validation on the average

    def _fitting(self, trainer: pl.Trainer) -> bool:
        return (
            self.enabled
            and self.average is not None
            and trainer.state.fn == pl.trainer.states.TrainerFn.FITTING
        )

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._fitting(trainer) and self._raw is None:
            self._raw = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
            pl_module.load_state_dict(self.average)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._raw is not None:
            pl_module.load_state_dict(self._raw)
            self._raw = None

    # ------------------------------------------------------------------ checkpoints

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if not self.enabled or self.average is None:
            return
        raw = self._raw if self._raw is not None else pl_module.state_dict()
        checkpoint["state_dict"] = {k: v.detach().clone() for k, v in self.average.items()}
        state = checkpoint.setdefault("callbacks", {}).setdefault(self.state_key, {})
        state["raw_state_dict"] = {k: v.detach().clone() for k, v in raw.items()}

    def state_dict(self) -> dict[str, Any]:
        # the raw weights are added in on_save_checkpoint, where the module is at hand
        return {"steps": self.steps}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.steps = int(state_dict.get("steps", 0))
        raw = state_dict.get("raw_state_dict")
        self._resumed_raw = dict(raw) if raw is not None else None
