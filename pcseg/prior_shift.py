"""Label-shift correction: predict under the real class mix, not the simulator's.

A network trained on simulated scans learns p_sim(y | x), whose class prior is the simulator's
(and the loss weighting's). When only the class mix differs on the target data, Bayes' rule
gives the target posterior without retraining (Saerens et al., Neural Computation 2002;
Lipton et al., ICML 2018):

    p_real(y | x)  ∝  p_sim(y | x) · π_real(y) / π_sim(y)

i.e. a bias log π_real − log π_sim added to the logits. ``π_sim`` is what the trained network
itself predicts on average over the simulated validation points (its effective prior, class
weights and Lovász term included), accumulated during validation and stored in every
checkpoint (``pcseg_source_prior``; for an older checkpoint it is estimated on its run's own
validation split, :func:`ensure_source_prior`); ``π_real`` is the label yaml's ``content``
(SemanticKITTI's class frequencies over the whole dataset). Nothing is fitted, no real scan is
read.

Measured (2026-12-02, three 30-minute ``experiment=sim2real`` models, generator 4 and
generator 5 twice; real SemanticKITTI 00/000000-2, official mIoU): 25.3 → 26.3 %,
24.6 → 26.3 % and 24.4 → 26.1 %, accuracy 74.6 → 79.0 %, 76.3 → 81.6 % and 72.6 → 79.8 %;
simulated validation drops (52.8 → 50.4 % on the first), as it must when its own class mix is
traded for SemanticKITTI's. Use it for real scans:
``python evaluate.py ckpt_path=... prior=content``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.progress import Progress
from torchmetrics import Metric

from pcseg.data.labels import LabelMap

log = logging.getLogger(__name__)

#: checkpoint key of the network's mean predicted class probabilities on simulated validation
SOURCE_PRIOR_KEY = "pcseg_source_prior"
#: ``prior=`` values: where the target class mix comes from
TARGET_PRIORS = ("content",)
#: shares below this count as this (a class the simulator never predicts would get +inf)
PRIOR_FLOOR = 1e-6


class PriorShiftError(ValueError):
    """A prior correction that cannot be made (old checkpoint, unknown target, bad shares)."""


class MeanClassProbability(Metric):
    """Mean softmax probability per class over every ORIGINAL point seen: (C,) float64.

    ``update(probs, weight)``: probs (V, C) per voxel, weight (V,) points per voxel (None: 1),
    so the mean is per point like ``content``'s counts. Sums across processes under DDP.
    """

    full_state_update = False

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.add_state("total", torch.zeros(num_classes, dtype=torch.float64), "sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), "sum")

    def update(self, probs: torch.Tensor, weight: torch.Tensor | None = None) -> None:
        probs = probs.detach().to(torch.float64)
        if weight is None:
            weight = torch.ones(probs.shape[0], dtype=torch.float64, device=probs.device)
        weight = weight.to(torch.float64)
        self.total += weight @ probs
        self.count += weight.sum()

    def update_logits(self, logits: torch.Tensor, inverse: torch.Tensor | None) -> None:
        """``update`` from a batch's logits (V, C) and its ``inverse`` (P,) (None: 1 point per
        voxel): what validation and :func:`estimate_source_prior` both accumulate."""
        self.update(torch.softmax(logits.float(), dim=1), points_per_voxel(inverse, len(logits)))

    def compute(self) -> torch.Tensor:
        return self.total / self.count.clamp_min(1.0)


def points_per_voxel(inverse: torch.Tensor | None, num_voxels: int) -> torch.Tensor | None:
    """(V,) original points behind each packed voxel row, from a batch's ``inverse`` (P,)."""
    if inverse is None or inverse.numel() == 0:
        return None
    return torch.bincount(inverse, minlength=num_voxels)


def target_prior(name: str, label_map: LabelMap) -> np.ndarray:
    """(C,) class shares of the target data: ``content`` = the label yaml's class frequencies
    (0 for the ignored class)."""
    if name != "content":
        raise PriorShiftError(f"prior must be one of {', '.join(TARGET_PRIORS)}, got {name!r}")
    shares = label_map.class_shares()  # sums to 1, or all zeros without `content`
    if not shares.any():
        raise PriorShiftError(f"{label_map.path}: the label yaml has no `content` frequencies")
    return shares


def prior_bias(source: np.ndarray, target: np.ndarray, ignore_index: int) -> torch.Tensor:
    """(C,) float32 logit bias log target − log source; 0 for ``ignore_index``.

    source, target: (C,) class shares (need not be normalised without the ignored class)."""
    source, target = np.asarray(source, np.float64), np.asarray(target, np.float64)
    if source.shape != target.shape:
        raise PriorShiftError(
            f"the checkpoint's class prior has {source.shape[0]} classes, the label map "
            f"{target.shape[0]}"
        )
    keep = np.arange(len(source)) != ignore_index
    src = np.maximum(source[keep] / max(source[keep].sum(), PRIOR_FLOOR), PRIOR_FLOOR)
    tgt = np.maximum(target[keep] / max(target[keep].sum(), PRIOR_FLOOR), PRIOR_FLOOR)
    bias = np.zeros(len(source))
    bias[keep] = np.log(tgt) - np.log(src)
    return torch.from_numpy(bias).float()


@torch.no_grad()
def estimate_source_prior(
    model: Any, datamodule: Any, device: torch.device | str = "cpu"
) -> np.ndarray:
    """(C,) the model's mean class probability per original point of ``datamodule``'s
    validation split: what training stores at every validation, for a checkpoint written
    before it did. ``model`` in eval mode on ``device``; ``prepare_data()`` already called."""
    metric = MeanClassProbability(model.label_map.num_classes).to(device)
    loader = datamodule._loader("val", datamodule.val_batch_size, shuffle=False)
    bias, model.logit_bias = model.logit_bias, None
    total = len(datamodule.dataset("val"))
    try:
        with Progress(transient=True) as bar:
            task = bar.add_task("estimating the class prior (validation split)", total=total)
            for batch in loader:
                bar.advance(task, batch.num_clouds + len(batch.skipped))
                if batch.num_clouds == 0:
                    continue
                batch = batch.to(device)
                metric.update_logits(model(batch), batch.inverse)
    finally:
        model.logit_bias = bias
    if not metric.update_count:
        raise PriorShiftError("the run's validation split holds no scan to estimate a prior on")
    return metric.compute().cpu().numpy()


def ensure_source_prior(
    model: Any, run: Any, trusted_targets: Sequence[str] = (), device: torch.device | str = "cpu"
) -> None:
    """Give ``model`` (built from the checkpoint ``run``, eval mode on ``device``) a source
    prior: the stored one, or for a checkpoint from before 2026-12-02 one estimated on its
    run's own validation split (:func:`estimate_source_prior`; the embedded dataset is
    regenerated if missing). Raises :class:`PriorShiftError` naming the checkpoint when that
    data cannot be read."""
    if getattr(model, "source_prior", None) is not None:
        return
    from pcseg.checkpoint_loading import build_datamodule

    log.info("%s: no stored class prior; estimating it on the run's validation split", run.path)
    try:
        datamodule = build_datamodule(run.config, None, run.path, trusted_targets)
        datamodule.prepare_data()
        model.source_prior = estimate_source_prior(model, datamodule, device)
    except (OSError, ValueError) as exc:
        raise PriorShiftError(
            f"{run.path}: the checkpoint stores no class prior of its training data "
            f"('{SOURCE_PRIOR_KEY}', since 2026-12-02), and its run's validation data could "
            f"not be read to estimate one: {exc}"
        ) from exc


def correction_bias(model: Any, target: str, source: Path | str = "the checkpoint") -> torch.Tensor:
    """(C,) logit bias from ``model.source_prior`` (restored from its checkpoint by
    :func:`~pcseg.checkpoint_loading.build_model`, or set by its last validation) to the
    ``target`` class mix. Raises :class:`PriorShiftError` naming ``source`` when the model has
    no stored prior (a checkpoint from before 2026-12-02)."""
    prior = getattr(model, "source_prior", None)
    if prior is None:
        raise PriorShiftError(
            f"{source}: the checkpoint has no class prior of its training data "
            f"('{SOURCE_PRIOR_KEY}', stored since 2026-12-02 at every validation); "
            "run without prior=, or retrain"
        )
    return prior_bias(prior, target_prior(str(target), model.label_map), model.ignore_index)


def apply_prior(model: Any, target: str | None, source: Path | str) -> torch.Tensor | None:
    """Set ``model.logit_bias`` for predicting under ``target``'s class mix (None: clear it).

    model: a :class:`~pcseg.lit_module.SegmentationModule` built from the checkpoint file
    ``source`` (named in errors). Returns the bias (C,) or None."""
    model.logit_bias = correction_bias(model, target, source) if target else None
    return model.logit_bias
