"""Label point clouds with a trained checkpoint: :class:`CloudPredictor` for one cloud.

The cloud arrives as the one-cloud ``PointBatch`` the checkpoint's own data pipeline builds
(:class:`pcseg.loose_files.LooseScanLoader`: the run's Dataset voxelises and featurises it), runs
through the network (optionally with test-time augmentation, :mod:`pcseg.tta`) and is carried
back to every original point through the voxel index
(:func:`pcseg.predict.full_resolution_predictions`), as ``evaluate.py`` scores a scan: a scan
predicted here gets exactly the labels ``evaluate.py`` gives it.

Clouds with more voxels than ``max_points`` are cut into overlapping xy tiles
(:mod:`pcseg.tiles`) after voxelisation: voxels and features are those of the whole cloud, each
tile's network pass sees its core plus a margin, and each voxel takes the prediction of the tile
whose core holds it, so every point is labelled and memory stays bounded by the tile size.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn

from pcseg.checkpoint_loading import LoadedRun, build_model, load_checkpoint
from pcseg.data.labels import LabelMap, load_label_map
from pcseg.predict import full_resolution_predictions
from pcseg.structures import PointBatch
from pcseg.tiles import Tile, plan_tiles
from pcseg.tta import tta_logits

log = logging.getLogger(__name__)

__all__ = ["CloudPredictor", "Prediction", "load_checkpoint_model", "resolve_device"]


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; anything else as torch spells it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_checkpoint_model(
    ckpt_path: str | Path, runs_dir: Path | None = None, trusted_targets: Sequence[str] = ()
) -> tuple[nn.Module, LoadedRun]:
    """The network of a checkpoint (eval mode, CPU) and the checkpoint read safely.

    ``ckpt_path``: a checkpoint file, a run folder, or ``last`` (the newest
    ``runs_dir/*/checkpoints/last.ckpt``). Read with ``torch.load(weights_only=True)`` and only
    allow-listed ``_target_``s built (:mod:`pcseg.checkpoint_loading`, plus ``trusted_targets``);
    its errors name the file.
    """
    run = load_checkpoint(ckpt_path, runs_dir, trusted_targets)
    return build_model(run, trusted_targets), run


@dataclass
class Prediction:
    """labels: (P,) int64 training ids of every original point; probs: (P, C) float16 class
    probabilities (None unless asked for); voxels: points the network ran on; tiles: passes."""

    labels: np.ndarray
    probs: np.ndarray | None
    voxels: int
    tiles: int


class CloudPredictor:
    """Predict clouds in memory with one model.

    Args:
        model: the LightningModule (or network) mapping a PointBatch to logits; put in eval mode.
        label_map: the run's label map (class count, names, colours, raw ids).
        features: the run's ``data.features`` (test-time augmentation recomputes them).
        device: where the network runs.
        tta, tta_seed: test-time augmentation views (1: none), see :func:`pcseg.tta.tta_logits`.
        max_points: tile clouds with more voxels than this (None: never tile).
        tile_size, tile_overlap: core side and margin of the tiles, metres.
    """

    def __init__(
        self,
        model: nn.Module,
        label_map: LabelMap,
        features: Sequence[str],
        device: torch.device | str = "cpu",
        tta: int = 1,
        tta_seed: int = 0,
        max_points: int | None = None,
        tile_size: float = 100.0,
        tile_overlap: float = 10.0,
    ) -> None:
        if tta < 1:
            raise ValueError(f"tta must be >= 1, got {tta}")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.label_map = label_map
        self.features = tuple(features)
        self.tta, self.tta_seed = int(tta), int(tta_seed)
        self.max_points = max_points
        self.tile_size, self.tile_overlap = float(tile_size), float(tile_overlap)

    @classmethod
    def from_run(cls, model: nn.Module, run_cfg: DictConfig, **kwargs: Any) -> CloudPredictor:
        """A predictor with the data settings of a checkpoint's run config."""
        data = run_cfg.data
        return cls(
            model,
            load_label_map(data.get("label_config")),
            list(data.features),
            **kwargs,
        )

    @property
    def num_classes(self) -> int:
        return self.label_map.num_classes

    def plan(self, batch: PointBatch) -> list[Tile]:
        """One tile holding every voxel, or the tiles of :func:`pcseg.tiles.plan_tiles`."""
        n = batch.coord.shape[0]
        if self.max_points is None or n <= self.max_points:
            return [Tile(np.arange(n), np.ones(n, dtype=bool), (0.0, 0.0, 0.0, 0.0), 0.0)]
        return plan_tiles(batch.coord.numpy(), self.tile_size, self.tile_overlap, self.max_points)

    @torch.no_grad()
    def predict(
        self,
        batch: PointBatch,
        with_probs: bool = False,
        on_tile: Callable[[int, int], None] | None = None,
    ) -> Prediction:
        """Labels (and optionally probabilities) of every original point of a one-cloud batch.

        batch: B = 1, with ``inverse`` (the dataset's items have it), on the CPU.
        ``on_tile(done, total)`` is called after each network pass (progress of large clouds).
        """
        if batch.num_clouds != 1:
            raise ValueError(f"predict takes one cloud at a time, got {batch.num_clouds}")
        tiles = self.plan(batch)
        n = batch.coord.shape[0]
        pred = torch.empty(n, dtype=torch.int64)
        probs = torch.empty(n, self.num_classes, dtype=torch.float32) if with_probs else None
        for i, tile in enumerate(tiles):
            if len(tiles) == 1:
                part = batch
            else:
                rows = torch.from_numpy(tile.rows)
                part = PointBatch(
                    coord=batch.coord[rows],
                    feat=batch.feat[rows],
                    offset=torch.tensor([rows.shape[0]], dtype=torch.int64),
                )
            scores = tta_logits(
                self.model, part.to(self.device), self.tta, self.tta_seed, self.features
            )
            core = torch.from_numpy(tile.core).to(scores.device)
            target = torch.from_numpy(tile.rows[tile.core])
            pred[target] = scores[core].argmax(dim=1).cpu()
            if probs is not None:
                probs[target] = torch.softmax(scores[core].float(), dim=1).cpu()
            if on_tile is not None:
                on_tile(i + 1, len(tiles))
        labels = full_resolution_predictions(pred, batch)[0]
        # float16 before the (P, C) gather: half the memory for clouds of millions of points
        full_probs = probs.half()[batch.inverse].numpy() if probs is not None else None
        return Prediction(labels, full_probs, n, len(tiles))
