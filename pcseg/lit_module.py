"""LightningModule: neighbours + forward, loss, IoU metric, optimiser and schedule, logging."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch import nn

from pcseg.data.labels import LabelMap, load_label_map
from pcseg.metrics import SemanticKITTIIoU
from pcseg.nn.losses import CrossEntropyLovasz
from pcseg.prior_shift import SOURCE_PRIOR_KEY, MeanClassProbability
from pcseg.structures import PointBatch


def class_weights_from_frequencies(
    freq: np.ndarray, ignore_index: int, power: float = 0.5
) -> torch.Tensor:
    """(C,) loss weights ``1 / freq**power`` normalised to mean 1 over the trained classes;
    0 for the ignored class. freq (C,) class shares or counts (any scale).

    The square root (power 0.5) lifts rare classes (pole, sign, person) without letting their
    few points dominate the loss. A class never seen gets the largest seen class's weight
    rather than an unbounded one."""
    freq = np.asarray(freq, dtype=np.float64)
    freq = freq / max(freq.sum(), 1e-12)
    trained = np.arange(freq.shape[0]) != ignore_index
    seen = trained & (freq > 0)
    weights = np.zeros(freq.shape[0])
    if seen.any():
        weights[seen] = 1.0 / freq[seen] ** power
        weights[trained & ~seen] = weights[seen].max()
        weights[trained] /= weights[trained].mean()
    else:
        weights[trained] = 1.0
    return torch.tensor(weights, dtype=torch.float32)


def class_weights_from_content(label_map: LabelMap, power: float = 0.5) -> torch.Tensor:
    """(num_classes,) loss weights from the label yaml's class frequencies (``content``: the
    real SemanticKITTI mix, :meth:`LabelMap.class_shares`), see
    :func:`class_weights_from_frequencies`."""
    return class_weights_from_frequencies(label_map.class_shares(), label_map.ignore_index, power)


class SegmentationModule(pl.LightningModule):
    """Trains a point-wise segmentation network on ``PointBatch`` batches.

    Args:
        net: module mapping a ``PointBatch`` to logits (N, num_classes).
        optimizer: ``_partial_`` optimiser factory (params -> Optimizer).
        scheduler: ``_partial_`` schedule factory (optimizer, total_steps) -> LR scheduler,
            stepped every optimiser step; None for a constant rate.
        label_config: label yaml path (None: SemanticKITTI).
        class_weights: None (unweighted), "content" (from the label yaml's frequencies: the real
            SemanticKITTI mix) or "train" (from the training split's voxel labels, counted
            once when fitting starts; right for any dataset, the synthetic one included).
        class_weight_power: the weights are ``1 / frequency**power``: 0.5 (square root) lifts
            rare classes strongly, 0.25 less (with the Lovász term, which already favours rare
            classes, 0.5 over-predicts them: recall far above precision).
        lovasz_weight: factor of the Lovász-softmax term added to the cross-entropy (0: none);
            it optimises each class's IoU directly, which lifts rare classes.
        log_images: validation scans rendered to bird's-eye-view images per epoch.
        compile: ``torch.compile`` the network's plain-PyTorch parts (stem and head; see
            :func:`pcseg.nn.continuous_conv.compile_network`).

    Defaults are ``configs/model/pccn.yaml``'s.
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        label_config: str | None = None,
        class_weights: str | None = "train",
        class_weight_power: float = 0.25,
        lovasz_weight: float = 1.0,
        log_images: int = 2,
        compile: bool = False,
    ) -> None:
        super().__init__()
        # Factories stay out of the checkpoint's hparams so checkpoints load with
        # torch.load(weights_only=True); the full run config is stored separately.
        self.save_hyperparameters(logger=False, ignore=["net", "optimizer", "scheduler"])
        self.net = net
        if compile:
            from pcseg.nn.continuous_conv import compile_network

            compile_network(net)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.label_map = load_label_map(label_config)
        self.ignore_index = self.label_map.ignore_index
        weight = None
        if class_weights == "content":
            weight = class_weights_from_content(self.label_map, class_weight_power)
        elif class_weights == "train":  # a placeholder buffer, filled in by setup("fit")
            weight = torch.ones(self.label_map.num_classes)
        elif class_weights is not None:
            raise ValueError(
                f"class_weights must be null, 'content' or 'train', got {class_weights!r}"
            )
        self.criterion = CrossEntropyLovasz(weight, self.ignore_index, lovasz_weight)
        kw = {"num_classes": self.label_map.num_classes, "ignore_index": self.ignore_index}
        self.val_iou = SemanticKITTIIoU(**kw)
        self.test_iou = SemanticKITTIIoU(**kw)
        # the network's mean class probability per validation point: its effective class
        # prior on the training domain, stored in checkpoints for label-shift correction
        self.val_prior = MeanClassProbability(self.label_map.num_classes)
        #: (C,) float64 numpy, from the last validation epoch (or the loaded checkpoint)
        self.source_prior: np.ndarray | None = None
        #: (C,) logit bias added in evaluation mode (pcseg.prior_shift.apply_prior); None: none
        self.logit_bias: torch.Tensor | None = None
        self._step_start = 0.0
        #: Result of the last validation/test epoch (for the end-of-training table).
        self.last_result = None
        #: The composed run config, stored in checkpoints so evaluation can rebuild the run.
        self.run_config: dict | None = None

    def setup(self, stage: str) -> None:
        """With ``class_weights="train"``, weigh the loss by the training split's class mix."""
        if stage != "fit" or self.hparams.class_weights != "train":
            return
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None or not hasattr(datamodule, "dataset"):
            raise ValueError("class_weights='train' needs a SemanticKITTIDataModule to count")
        from pcseg.data.statistics import class_counts

        counts = class_counts(datamodule.dataset("train"))
        weight = class_weights_from_frequencies(
            counts, self.ignore_index, self.hparams.class_weight_power
        )
        self.criterion.ce.weight.copy_(weight.to(self.criterion.ce.weight.device))

    def forward(self, batch: PointBatch) -> torch.Tensor:
        """Logits (N, C); in evaluation mode plus ``logit_bias`` when one is set (a prior
        correction, :mod:`pcseg.prior_shift`). Training and validation never set one."""
        logits = self.net(batch)
        if self.logit_bias is not None and not self.training:
            logits = logits + self.logit_bias.to(logits)
        return logits

    def on_train_batch_start(self, batch: PointBatch, batch_idx: int) -> None:
        self._step_start = time.perf_counter()

    def training_step(self, batch: PointBatch, batch_idx: int) -> torch.Tensor | None:
        if batch.num_clouds == 0:  # every scan of the batch was bad (data.on_bad_scan=skip)
            return self._empty_batch_loss()
        logits = self(batch)
        loss = self.criterion(logits, batch.label)
        n = batch.num_clouds
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        return loss

    def _empty_batch_loss(self) -> torch.Tensor | None:
        """What training_step returns for a batch with no clouds: None skips the step (no
        gradients, the optimiser leaves the weights alone). Lightning does not support None
        under DDP, where every rank must join the gradient all-reduce: there this rank
        contributes a zero loss over every trainable parameter, i.e. zero gradients."""
        if self._trainer is None or self.trainer.world_size == 1:
            return None
        return torch.stack([p.sum() for p in self.parameters() if p.requires_grad]).sum() * 0.0

    def on_train_batch_end(self, outputs: Any, batch: PointBatch, batch_idx: int) -> None:
        elapsed = time.perf_counter() - self._step_start
        if elapsed > 0:
            self.log("train/points_per_s", batch.coord.shape[0] / elapsed, batch_size=1)
        self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"], batch_size=1)

    def _eval_step(self, batch: PointBatch, metric: SemanticKITTIIoU, stage: str) -> torch.Tensor:
        logits = self(batch)
        loss = self.criterion(logits, batch.label)
        pred = logits.argmax(dim=1)
        metric.update(pred, batch.label)
        if stage == "val":
            self.val_prior.update_logits(logits, batch.inverse)
        self.log(f"{stage}/loss", loss, batch_size=batch.num_clouds, sync_dist=True)
        return pred

    def validation_step(self, batch: PointBatch, batch_idx: int) -> torch.Tensor | None:
        """Returns the predicted training ids (N,) for callbacks (TensorBoard3D)."""
        if batch.num_clouds == 0:
            return None  # every scan of the batch was bad (data.on_bad_scan=skip)
        pred = self._eval_step(batch, self.val_iou, "val")
        if batch_idx * batch.num_clouds < self.hparams.log_images:
            self._log_bev(batch, pred, batch_idx)
        return pred

    def test_step(self, batch: PointBatch, batch_idx: int) -> None:
        if batch.num_clouds == 0:
            return  # every scan of the batch was bad (data.on_bad_scan=skip)
        self._eval_step(batch, self.test_iou, "test")

    def _log_iou(self, metric: SemanticKITTIIoU, stage: str) -> None:
        result = metric.compute()
        self.last_result = result
        # compute() has summed the confusion matrices of all processes, so under DDP every rank
        # holds the same numbers: a max-"sync" keeps them exact (and Lightning's warning quiet).
        sync: dict[str, Any] = {"sync_dist": True, "reduce_fx": "max"}
        self.log(f"{stage}/miou", float(result.miou), prog_bar=True, **sync)
        self.log(f"{stage}/miou_present", float(result.miou_present), **sync)
        self.log(f"{stage}/acc", float(result.acc), **sync)
        names = self.label_map.class_names
        for class_id, iou in zip(result.class_ids.tolist(), result.iou.tolist(), strict=True):
            self.log(f"{stage}/iou/{names[class_id]}", iou, **sync)
        metric.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_iou(self.val_iou, "val")
        if self.val_prior.update_count:
            self.source_prior = self.val_prior.compute().cpu().numpy()
        self.val_prior.reset()

    def on_test_epoch_end(self) -> None:
        self._log_iou(self.test_iou, "test")

    def _log_bev(self, batch: PointBatch, pred: torch.Tensor, batch_idx: int) -> None:
        """Bird's-eye views (prediction | error) of the first clouds to TensorBoard (rank 0
        only: the loggers of other ranks discard what they are given, so skip the rendering)."""
        if not self.trainer.is_global_zero:
            return
        experiment = getattr(self.logger, "experiment", None)
        if experiment is None or not hasattr(experiment, "add_image") or batch.label is None:
            return
        from pcseg.vis.bev import bev_panel

        rows = batch.cloud(0)
        image = bev_panel(
            batch.coord[rows].cpu().numpy(),
            pred[rows].cpu().numpy(),
            batch.label[rows].cpu().numpy(),
            self.label_map,
        )
        experiment.add_image(f"val/bev_{batch_idx}", image, self.global_step, dataformats="HWC")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.run_config is not None:
            checkpoint["pcseg_config"] = self.run_config
        if self.source_prior is not None:  # plain floats: loads with weights_only=True
            checkpoint[SOURCE_PRIOR_KEY] = [float(v) for v in self.source_prior]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.run_config = checkpoint.get("pcseg_config", self.run_config)
        if checkpoint.get(SOURCE_PRIOR_KEY) is not None:
            self.source_prior = np.asarray(checkpoint[SOURCE_PRIOR_KEY], np.float64)

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = self.optimizer_factory(params=self.parameters())
        if self.scheduler_factory is None:
            return {"optimizer": optimizer}
        total = int(self.trainer.estimated_stepping_batches)
        scheduler = self.scheduler_factory(optimizer=optimizer, total_steps=total)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }
