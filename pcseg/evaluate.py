"""``evaluate(cfg)``: score a checkpoint the benchmark's way, at full resolution; optionally
export SemanticKITTI submission files. ``evaluate.py`` is its CLI.

The checkpoint is read and its model and data rebuilt by :mod:`pcseg.checkpoint_loading`
(``weights_only=True``, allow-listed ``_target_``s only)."""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from rich.console import Console
from rich.progress import Progress

import pcseg.config  # noqa: F401  (registers the config resolvers)
from pcseg.checkpoint_loading import (
    CheckpointError,
    build_datamodule,
    build_model,
    load_checkpoint,
)
from pcseg.data.io import read_labels
from pcseg.export import SubmissionExport
from pcseg.metrics import SemanticKITTIIoU, iou_table, metrics_to_dict, save_confusion_png
from pcseg.predict import full_resolution_predictions, write_submission
from pcseg.prior_shift import apply_prior, ensure_source_prior
from pcseg.tta import tta_logits

log = logging.getLogger(__name__)

__all__ = ["CheckpointError", "evaluate", "load_run", "score_split", "train_runs_dir"]


def load_run(ckpt_path: str | Path) -> tuple[DictConfig, dict[str, Any]]:
    """Read a checkpoint and the composed config stored in it by ``train()``, safely
    (see :func:`pcseg.checkpoint_loading.load_checkpoint`, which this wraps)."""
    run = load_checkpoint(ckpt_path)
    return run.config, run.ckpt


def train_runs_dir(cfg: DictConfig) -> Path:
    """Where ``ckpt_path=last`` looks: the training runs, ``<paths.log_dir>/train/runs``."""
    return Path(cfg.paths.log_dir) / "train" / "runs"


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@torch.no_grad()
def score_split(
    model: torch.nn.Module,
    datamodule: Any,
    split: str,
    device: torch.device,
    export_dir: Path | None = None,
    description: str | None = None,
    progress: bool = True,
    tta: int = 1,
    tta_seed: int = 0,
) -> tuple[Any | None, list[dict[str, str]]]:
    """Predict every ORIGINAL point of every scan of ``split`` and score it the benchmark's way.

    The network runs on the voxelised cloud; labels are carried back to each point through the
    voxel index (see :func:`pcseg.predict.full_resolution_predictions`), so the IoU counts every
    point of a scan, as the SemanticKITTI benchmark does. ``export_dir``: also write submission
    files there. Returns (the metric's result, or None when the split has no labels; the
    scans skipped under ``on_bad_scan=skip``). ``model`` must be in eval mode on ``device``.
    Under an initialised process group every process must call it: each scores its share of
    the scans (the evaluation sampler) and the confusion matrices are summed across processes.
    ``tta`` > 1 predicts with test-time augmentation (:func:`pcseg.tta.tta_logits`, seeded by
    ``tta_seed``); 1 is the plain forward pass.
    """
    label_map = model.label_map
    dataset = datamodule.dataset(split)
    loader = datamodule._loader(split, datamodule.val_batch_size, shuffle=False)
    metric = SemanticKITTIIoU(label_map.num_classes, label_map.ignore_index).to(device)
    has_labels = False
    skipped: list[dict[str, str]] = []
    with Progress(transient=True, disable=not progress) as bar:
        task = bar.add_task(description or f"evaluating {split}", total=len(dataset))
        for batch in loader:
            skipped.extend(batch.skipped)
            bar.advance(task, len(batch.skipped))
            if batch.num_clouds == 0:
                continue
            batch = batch.to(device)
            # tta > 1: mean class probabilities over rotated/mirrored views (pcseg.tta)
            pred = tta_logits(model, batch, tta, tta_seed, datamodule.features).argmax(dim=1)
            for meta, full in zip(
                batch.meta, full_resolution_predictions(pred, batch), strict=True
            ):
                if meta.get("label_path"):
                    semantic, _ = read_labels(meta["label_path"], num_points=meta["num_points"])
                    target = label_map.to_train(semantic, meta["label_path"])
                    metric.update(
                        torch.from_numpy(full).to(device), torch.from_numpy(target).to(device)
                    )
                    has_labels = True
                if export_dir is not None:
                    write_submission(export_dir, meta["sequence"], meta["frame"], full, label_map)
            bar.advance(task, batch.num_clouds)
    labelled = torch.tensor(float(has_labels), device=device)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(labelled)  # every process computes (and syncs) or none
    return (metric.compute() if labelled.item() > 0 else None), skipped


@torch.no_grad()
def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate ``cfg.ckpt_path`` on ``cfg.data.split``; returns the metrics dict (empty when
    the split has no labels). Writes ``metrics.json`` and ``confusion.png`` into
    ``cfg.paths.output_dir`` and, with ``export=true``, the submission tree."""
    trusted = list(cfg.get("trusted_targets") or [])
    run = load_checkpoint(cfg.ckpt_path, train_runs_dir(cfg), trusted)
    datamodule = build_datamodule(run.config, cfg.data, run.path, trusted)
    datamodule.prepare_data()
    split = str(cfg.data.split)

    model = build_model(run, trusted)
    device = _device(cfg.get("device", "auto"))
    model.to(device).eval()
    prior = cfg.get("prior")
    if prior:  # prior=content: predict under SemanticKITTI's class mix
        ensure_source_prior(model, run, trusted, device)
        apply_prior(model, prior, run.path)
    names = model.label_map.class_names

    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # predictions go to a fresh staging folder; export_dir is replaced only when it is whole
    export = SubmissionExport(cfg.export_dir) if cfg.get("export") else None
    with export or contextlib.nullcontext():
        result, skipped = score_split(
            model,
            datamodule,
            split,
            device,
            export.staging if export else None,
            tta=int(cfg.get("tta", 1)),
            tta_seed=int(cfg.get("tta_seed", 0)),
        )
        label = f"{split} (prior={prior})" if prior else split
        metrics = _report(result, skipped, names, label, run.path, out_dir, prior)
        if export is not None:
            summary = export.publish(
                datamodule.root,
                datamodule.sequences(split),
                model.label_map,
                skipped,
                allow_skipped=bool(cfg.get("export_allow_skipped")),
            )
            Console().print(f"submission written and verified: {export.target} ({summary})")
    return metrics


def _report(
    result: Any | None,
    skipped: list[dict[str, str]],
    names: list[str],
    split: str,
    ckpt: Path,
    out_dir: Path,
    prior: str | None = None,
) -> dict[str, Any]:
    """Print the skipped scans and the IoU table; write metrics.json and confusion.png."""
    console = Console()
    for r in skipped:
        console.print(f"[yellow]skipped (data.on_bad_scan=skip):[/] {r['path']}: {r['reason']}")
    metrics: dict[str, Any] = {}
    if result is not None:
        console.print(iou_table(result, names, title=f"{split}: {ckpt}"))
        metrics = metrics_to_dict(result, names)
        if prior:
            metrics["prior"] = prior
        (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
        save_confusion_png(result.confusion, names, out_dir / "confusion.png")
        console.print(
            f"metrics: {out_dir / 'metrics.json'}, confusion matrix: {out_dir / 'confusion.png'}"
        )
    else:
        console.print(f"split '{split}' has no labels: no metrics computed")
    return metrics
