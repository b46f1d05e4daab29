"""Validation clouds in TensorBoard, in 3D, through Open3D's TensorBoard plugin.

Every ``every_n_epochs`` epochs the first ``scans`` validation clouds are written with their
predicted and true labels (``open3d.visualization.tensorboard_plugin``: the geometry goes to
``<tensorboard dir>/plugins/Open3D/*.msgpack``, a summary in the event file points at it).
``tensorboard --logdir logs/train/runs`` then shows an "Open3D" tab where the scan can be
turned around, coloured by ``predict_labels`` or ``gt_labels`` (the class names come with the
summary), and the epochs compared with the step slider.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

from pcseg.structures import PointBatch

log = logging.getLogger(__name__)

#: Summary tag of the clouds (the Open3D tab lists it).
TAG = "val/cloud"


def cloud_summary(
    coord: np.ndarray,
    pred: np.ndarray,
    label: np.ndarray,
    colors: np.ndarray,
    max_points: int | None,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """The ``add_3d`` dictionary of one cloud, subsampled to at most ``max_points`` points
    (a fixed seeded choice, so the same points are shown every epoch).

    coord (N, 3) float; pred, label (N,) int training ids; colors (N, 3) float in [0, 1]
    (the prediction in the label yaml's colours). Returns ``vertex_positions`` (n, 3) float32,
    ``vertex_colors`` (n, 3) float32, ``vertex_predict_labels`` and ``vertex_gt_labels``
    (n, 1) int32: the names Open3D-ML's own pipelines use, which the plugin colours by class.
    """
    n = coord.shape[0]
    if not (pred.shape[0] == label.shape[0] == colors.shape[0] == n):
        raise ValueError(
            f"cloud_summary: {n} points but {pred.shape[0]} predictions, "
            f"{label.shape[0]} labels, {colors.shape[0]} colours"
        )
    keep = np.arange(n)
    if max_points and n > max_points:
        keep = np.sort(np.random.default_rng(seed).choice(n, size=max_points, replace=False))
    return {
        "vertex_positions": np.ascontiguousarray(coord[keep], dtype=np.float32),
        "vertex_colors": np.ascontiguousarray(colors[keep], dtype=np.float32),
        "vertex_predict_labels": pred[keep].astype(np.int32).reshape(-1, 1),
        "vertex_gt_labels": label[keep].astype(np.int32).reshape(-1, 1),
    }


class TensorBoard3D(pl.Callback):
    """Writes validation clouds with predicted and true labels as Open3D 3D summaries.

    Args:
        every_n_epochs: write at the end of epochs n, 2n, ... (1-based) and at the last epoch;
            0 disables the callback.
        scans: how many validation clouds (the first ones of the validation loader).
        max_points: subsample each cloud to at most this many points (None: all): the
            plugin streams every point to the browser.
    """

    def __init__(self, every_n_epochs: int = 5, scans: int = 1, max_points: int | None = 20000):
        self.every_n_epochs = int(every_n_epochs)
        self.scans = int(scans)
        self.max_points = max_points
        self._written = 0
        self._warned = False
        self._used = False

    def _due(self, trainer: pl.Trainer) -> bool:
        if self.every_n_epochs <= 0 or self.scans <= 0 or trainer.sanity_checking:
            return False
        if not trainer.is_global_zero or trainer.state.fn != "fit":
            return False
        epoch = trainer.current_epoch + 1
        last = trainer.max_epochs is not None and epoch == trainer.max_epochs
        return epoch % self.every_n_epochs == 0 or last

    def _writer(self, trainer: pl.Trainer) -> Any:
        for logger in trainer.loggers:
            experiment = getattr(logger, "experiment", None)
            if experiment is not None and hasattr(experiment, "add_scalar"):
                try:
                    # registers SummaryWriter.add_3d (Open3D's plugin patches torch's writer)
                    from open3d.visualization.tensorboard_plugin import summary  # noqa: F401
                except ImportError as err:
                    if not self._warned:
                        log.warning("3D summaries off: Open3D's TensorBoard plugin: %s", err)
                        self._warned = True
                    return None
                return experiment
        return None

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule):
        self._written = 0

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self._written >= self.scans or not self._due(trainer):
            return
        if not isinstance(batch, PointBatch) or batch.label is None or batch.num_clouds == 0:
            return
        writer = self._writer(trainer)
        if writer is None:
            return
        pred = outputs if isinstance(outputs, torch.Tensor) else None
        if pred is None:  # a module whose validation_step returns nothing: predict again
            with torch.no_grad():
                pred = pl_module(batch).argmax(dim=1)
        from pcseg.vis.colors import class_colors

        label_map = pl_module.label_map
        names = {i: name for i, name in enumerate(label_map.class_names)}
        for b in range(batch.num_clouds):
            if self._written >= self.scans:
                break
            rows = batch.cloud(b)
            p = pred[rows].detach().cpu().numpy()
            data = cloud_summary(
                batch.coord[rows].detach().cpu().numpy(),
                p,
                batch.label[rows].detach().cpu().numpy(),
                class_colors(p, label_map),
                self.max_points,
            )
            tag = TAG if self.scans == 1 else f"{TAG}_{self._written}"
            writer.add_3d(tag, data, step=trainer.global_step, label_to_names=names)
            self._written += 1
            self._used = True

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Wait for the plugin's writer thread and close its files (the data is complete on
        disk when fitting returns, not only at interpreter exit)."""
        if not self._used:
            return
        try:
            from open3d.visualization.tensorboard_plugin import summary
        except ImportError:
            return
        writer = getattr(summary, "_async_data_writer", None)
        if writer is not None:
            writer.close()
        for logger in trainer.loggers:
            experiment = getattr(logger, "experiment", None)
            if experiment is not None and hasattr(experiment, "flush"):
                experiment.flush()
