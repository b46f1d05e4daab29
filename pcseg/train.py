"""``train(cfg)``: fit a model from a composed Hydra config; ``train.py`` is its CLI."""

from __future__ import annotations

import logging
from typing import Any

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

import pcseg.config  # noqa: F401  (registers the config resolvers)

log = logging.getLogger(__name__)


def instantiate_group(group: DictConfig | None) -> list[Any]:
    """Instantiate every ``_target_`` entry of a config group (callbacks, loggers)."""
    if not group:
        return []
    return [instantiate(node) for node in group.values() if node and "_target_" in node]


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit ``cfg.model`` on ``cfg.data`` with ``cfg.trainer``; return the final metrics.

    The whole composed config is stored in every checkpoint (``pcseg_config``) so
    ``evaluate.py`` rebuilds the same data pipeline and network from the checkpoint alone.
    After fitting, the best checkpoint (by ``val/miou``) is validated and its per-class IoU
    table printed.
    """
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)

    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model)
    model.run_config = OmegaConf.to_container(cfg, resolve=True)
    callbacks = instantiate_group(cfg.get("callbacks"))
    loggers = instantiate_group(cfg.get("logger"))
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)

    trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}

    if cfg.get("validate_best") and not trainer.fast_dev_run:
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        log.info("Validating the best checkpoint: %s", best or "<current weights>")
        trainer.validate(model, datamodule=datamodule, ckpt_path=best or None, verbose=False)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
        if model.last_result is not None and trainer.is_global_zero:
            from rich.console import Console

            from pcseg.metrics import iou_table

            Console().print(iou_table(model.last_result, model.label_map.class_names))
            if best:
                Console().print(f"best checkpoint: {best}")
    return metrics
