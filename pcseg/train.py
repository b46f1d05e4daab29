"""``train(cfg)``: fit a model from a composed Hydra config; ``train.py`` is its CLI."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

import pcseg.config  # noqa: F401  (registers the config resolvers)
from pcseg.checkpointing import (
    LAST,
    RandomState,
    resolve_ckpt_path,
    run_dir_of,
    safe_torch_load,
)
from pcseg.finetune import init_from_checkpoint
from pcseg.process_group import closing_process_group
from pcseg.run_lock import lock_run_folder

log = logging.getLogger(__name__)


def instantiate_group(group: DictConfig | None) -> list[Any]:
    """Instantiate every ``_target_`` entry of a config group (callbacks, loggers)."""
    if not group:
        return []
    return [instantiate(node) for node in group.values() if node and "_target_" in node]


def runs_dir(cfg: DictConfig) -> Path:
    """Where training run folders live (configs/hydra/default.yaml's ``hydra.run.dir`` parent)."""
    return Path(cfg.paths.log_dir) / cfg.task_name / "runs"


def resume_checkpoint(cfg: DictConfig) -> str | None:
    """Resolve ``cfg.ckpt_path`` to a checkpoint file; None starts a fresh run.

    ``last`` picks the newest ``<log_dir>/<task_name>/runs/*/checkpoints/last.ckpt`` and points
    ``cfg.paths.output_dir`` at that run's folder, so checkpoints, TensorBoard events and the
    rolling ``last.ckpt`` continue there (Hydra's new folder keeps only this invocation's
    config and log). An explicit file or run folder resumes into the new run folder.
    Raises CheckpointNotFoundError naming what was searched, before anything is built.
    """
    requested = cfg.get("ckpt_path")
    ckpt = resolve_ckpt_path(requested, runs_dir(cfg))
    if ckpt is None:
        return None
    # Read it once up front (weights_only=True): a checkpoint whose pickle would run code is
    # refused here, naming it, before any data or model is built (Lightning reads it again
    # through AtomicCheckpointIO, also weights_only=True).
    safe_torch_load(ckpt)
    run_dir = run_dir_of(ckpt)
    if str(requested) == LAST and run_dir is not None:
        new_dir = cfg.paths.output_dir
        with open_dict(cfg):
            cfg.paths.output_dir = str(run_dir)
        log.info("Resuming %s into its run folder %s (this invocation: %s)", ckpt, run_dir, new_dir)
    else:
        log.info("Resuming from %s into %s", ckpt, cfg.paths.output_dir)
    return str(ckpt)


def init_checkpoint(cfg: DictConfig) -> Path | None:
    """Resolve ``cfg.init_from`` (fine-tuning: a file, a run folder or ``last``); None: off.

    Raises ValueError when ``ckpt_path`` (resume) is given too: a run either continues a run
    or starts a new one from weights, never both."""
    value = cfg.get("init_from")
    if value is None or str(value) == "":
        return None
    if cfg.get("ckpt_path") not in (None, ""):
        raise ValueError(
            f"init_from={value} and ckpt_path={cfg.ckpt_path} were both given: ckpt_path "
            "resumes a run (optimiser, schedule and epoch continue), init_from starts a new run "
            "from a checkpoint's weights. Give one of them."
        )
    return resolve_ckpt_path(value, runs_dir(cfg))


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit ``cfg.model`` on ``cfg.data`` with ``cfg.trainer``; return the final metrics.

    The whole composed config is stored in every checkpoint (``pcseg_config``) so
    ``evaluate.py`` rebuilds the same data pipeline and network from the checkpoint alone.
    After fitting, the best checkpoint (by ``val/miou``) is validated and its per-class IoU
    table printed. ``cfg.ckpt_path`` resumes: see :func:`resume_checkpoint`; ``cfg.init_from``
    starts a new run from a checkpoint's weights (:mod:`pcseg.finetune`). The output folder is
    locked for the process's life (:mod:`pcseg.run_lock`): a second run into it fails fast.
    ``cfg.adapt.root`` adds self-training on unlabelled real scans: see :mod:`pcseg.adapt`.
    Under DDP the process group is closed before returning (:mod:`pcseg.process_group`).
    """
    with closing_process_group():
        return _train(cfg)


def _train(cfg: DictConfig) -> dict[str, float]:
    """:func:`train` without closing the process group."""
    if cfg.get("adapt") is not None and cfg.adapt.get("root"):
        from pcseg.adapt import adapt  # simulated training (or adapt.from_ckpt), then real scans

        return adapt(cfg)
    init_from = init_checkpoint(cfg)
    ckpt_path = resume_checkpoint(cfg)
    lock_run_folder(cfg.paths.output_dir)  # one run per folder: a second one stops here
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)

    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model)
    if init_from is not None:  # fine-tuning: weights only (head rebuilt for a new label set)
        init_from_checkpoint(model, init_from)
    model.run_config = OmegaConf.to_container(cfg, resolve=True)
    callbacks = instantiate_group(cfg.get("callbacks"))
    if not any(isinstance(c, RandomState) for c in callbacks):
        callbacks.append(RandomState())  # a resumed run continues the same random streams
    loggers = instantiate_group(cfg.get("logger"))
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)

    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}

    if cfg.get("validate_best") and not trainer.fast_dev_run:
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        log.info("Validating the best checkpoint: %s", best or "<current weights>")
        trainer.validate(
            model, datamodule=datamodule, ckpt_path=best or None, verbose=False, weights_only=True
        )
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
        if model.last_result is not None:  # every process scores its share; rank 0 reports
            out_dir = Path(cfg.paths.output_dir)
            metrics.update(report_best(model, datamodule, best, out_dir, trainer.is_global_zero))
    for callback in callbacks:  # a time budget's closing line: epochs trained, whole run time
        if line := getattr(callback, "budget_summary", lambda: None)():
            log.info(line)
    return metrics


def report_best(
    model: Any, datamodule: Any, best: str, out_dir: Path, main: bool = True
) -> dict[str, float]:
    """Print the best checkpoint's per-class IoU table on the validation split, scored the
    benchmark's way: every original point of every scan (the network ran on voxels; labels go
    back through the voxel index), as ``evaluate.py`` does. Training monitors the same IoU on
    voxel labels (``val/miou``), which weighs sparse far points as much as dense near ones, so
    it reads lower; both are printed. Writes ``out_dir/val_metrics.json`` (evaluate.py's
    metrics.json format) and returns ``val_full/miou``, ``val_full/miou_present`` and
    ``val_full/acc``. Under DDP every process must call it (the scans are shared out and the
    confusion matrices summed); only ``main`` (rank 0) prints and writes."""
    import json

    from rich.console import Console

    from pcseg.evaluate import score_split
    from pcseg.metrics import iou_table, metrics_to_dict

    console = Console()
    voxel = model.last_result
    names = model.label_map.class_names
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    result, _ = score_split(
        model, datamodule, "val", device, description="full resolution", progress=main
    )
    model.train(was_training)
    if not main:
        return {}
    if result is None:  # unlabelled validation scans: only the voxel-level table exists
        console.print(iou_table(voxel, names, title="val (voxels)"))
        return {}
    console.print(iou_table(result, names, title="val, every point (the benchmark's way)"))
    console.print(
        f"voxel-level val mIoU (what training monitors): {100 * float(voxel.miou):.1f} % "
        f"official, {100 * float(voxel.miou_present):.1f} % over the classes present"
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "val_metrics.json").write_text(json.dumps(metrics_to_dict(result, names), indent=2))
    if best:
        console.print(f"best checkpoint: {best}")
    return {
        "val_full/miou": float(result.miou),
        "val_full/miou_present": float(result.miou_present),
        "val_full/acc": float(result.acc),
    }
