"""Adaptation to unlabelled real scans: self-training with class-balanced pseudo-labels and
simulated/real mixing, after training on simulated scans.

``python train.py adapt.root=<folder>`` (configs/adapt/default.yaml): ``train()`` first fits
on the simulated data as usual (or loads ``adapt.from_ckpt`` and skips that), then runs
``adapt.rounds`` rounds of ``adapt.epochs_per_round`` epochs in ONE Lightning fit:

1. at the start of each round the current model predicts every real scan, probabilities
   averaged over ``adapt.tta`` rotated/mirrored views (:mod:`pcseg.tta`);
2. class-balanced, confidence-filtered pseudo-labels (:mod:`pcseg.data.pseudo_labels`) are
   written beside links to the scans in ``<run>/adapt/pseudo`` (SemanticKITTI layout), so the
   ordinary dataset code reads them; untrusted points are 'unlabeled' and the loss skips them;
3. the model trains on :class:`~pcseg.data.mixing.MixedDataset` samples: simulated and
   pseudo-labelled real scans, mixed CoSMix- or LaserMix-style (``adapt.mix``).

Model selection never looks at labelled real scans: the result is the last round's weights
(``<run>/checkpoints/adapted.ckpt``, loadable by ``evaluate.py``); each round's weights are
kept in ``<run>/adapt/checkpoints``. Simulated validation is scored after every round (it shows
whether adaptation forgets the source domain) and at the end on every point. A per-round line
gives the pseudo-label coverage per class, the mean confidence and the time; the same numbers
go to ``<run>/adapt/rounds.json``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from rich.console import Console
from rich.progress import Progress
from torch.utils.data import DataLoader

import pcseg.config  # noqa: F401  (registers the config resolvers)
from pcseg.checkpoint_loading import CheckpointError, LoadedRun, build_model, load_checkpoint
from pcseg.checkpointing import LAST_CHECKPOINT, RandomState
from pcseg.data.collate import collate_point_clouds
from pcseg.data.labels import LabelMap
from pcseg.data.mixing import MixedDataset
from pcseg.data.pseudo_labels import select_pseudo_labels, stage_scans, write_pseudo_labels
from pcseg.prior_shift import correction_bias
from pcseg.structures import offset_to_lengths
from pcseg.tta import tta_logits

if TYPE_CHECKING:
    from pcseg.lit_module import SegmentationModule

log = logging.getLogger(__name__)

#: Features of the datasets the mixer reads: positions and remission, nothing derived yet
#: (the network's features are computed after mixing and augmentation).
RAW_FEATURES = ("xyz", "remission")
#: The adapted model, in the run's checkpoints folder.
ADAPTED_CHECKPOINT = "adapted.ckpt"


def adapt_requested(cfg: DictConfig) -> bool:
    """True when ``cfg.adapt.root`` names real scans to adapt to."""
    block = cfg.get("adapt")
    return block is not None and bool(block.get("root"))


# --------------------------------------------------------------------------- checkpoints


def source_checkpoint(ckpt_dir: Path) -> Path:
    """The simulated stage's best checkpoint in ``ckpt_dir`` (chosen on simulated validation by
    ModelCheckpoint: the newest ``epoch_*.ckpt``), else ``last.ckpt``."""
    best = sorted(ckpt_dir.glob("epoch_*.ckpt"), key=lambda p: p.stat().st_mtime)
    if best:
        return best[-1]
    if (ckpt_dir / LAST_CHECKPOINT).is_file():
        return ckpt_dir / LAST_CHECKPOINT
    raise CheckpointError(
        f"{ckpt_dir}: the simulated training wrote no checkpoint to adapt (fast_dev_run writes "
        "none); give a trained model with adapt.from_ckpt=<ckpt>"
    )


# --------------------------------------------------------------------------- pseudo-labels


class PseudoLabeller:
    """Predicts the staged real scans and writes class-balanced pseudo-labels beside them.

    Args:
        dataset: the staged scans (a SemanticKITTIDataset over the pseudo-label root, with the
            network's features and voxel size, no augmentation).
        out_root: the pseudo-label root (labels go to ``sequences/NN/labels``).
        label_map: training ids <-> raw ids, class names.
        features: the network's feature names (TTA recomputes them per view).
        keep_fraction, max_threshold, min_confidence: see
            :func:`~pcseg.data.pseudo_labels.select_pseudo_labels`.
        tta: views averaged per prediction (1: the plain pass).
        history: where every round's statistics are written (JSON list).
        max_share: (C,) optional cap on each class's share of all voxels (``adapt.prior_slack``
            x the label yaml's class frequencies); see
            :func:`~pcseg.data.pseudo_labels.class_thresholds`.
        prior: ``adapt.prior``: predict under this class mix (:mod:`pcseg.prior_shift`).
        max_range: voxels farther than this (m, horizontal, from the sensor) get no
            pseudo-label; None: no limit.
    """

    def __init__(
        self,
        dataset: Any,
        out_root: Path,
        label_map: LabelMap,
        features: Sequence[str],
        keep_fraction: float,
        max_threshold: float,
        min_confidence: float,
        tta: int,
        history: Path,
        max_share: np.ndarray | None = None,
        prior: str | None = None,
        max_range: float | None = None,
    ) -> None:
        self.dataset = dataset
        self.out_root = Path(out_root)
        self.label_map = label_map
        self.features = tuple(features)
        self.keep_fraction = keep_fraction
        self.max_threshold = max_threshold
        self.min_confidence = min_confidence
        self.tta = tta
        self.max_share = max_share
        self.prior = prior
        self.max_range = max_range
        self.history_path = history
        self.history: list[dict[str, Any]] = []

    @torch.no_grad()
    def predict(
        self, model: torch.nn.Module, progress: bool
    ) -> list[tuple[dict, np.ndarray, np.ndarray, np.ndarray]]:
        """(meta, prob (V, C) float32 per voxel, inverse (P,) voxel of each point, horizontal
        range (V,) of each voxel from the sensor) per scan."""
        device = next(model.parameters()).device
        loader = DataLoader(self.dataset, batch_size=1, collate_fn=collate_point_clouds)
        out = []
        with Progress(transient=True, disable=not progress) as bar:
            task = bar.add_task("pseudo-labelling real scans", total=len(self.dataset))
            for batch in loader:
                for skipped in batch.skipped:
                    log.warning("adapt: skipping %s: %s", skipped["path"], skipped["reason"])
                if batch.num_clouds:
                    logits = tta_logits(model, batch.to(device), self.tta, features=self.features)
                    prob = torch.softmax(logits.float(), dim=1).cpu().numpy()
                    # one cloud per batch: the inverse indexes this cloud's rows directly
                    assert int(offset_to_lengths(batch.offset)[0]) == prob.shape[0]
                    ranges = batch.coord[:, :2].norm(dim=1).cpu().numpy()
                    out.append((batch.meta[0], prob, batch.inverse.numpy(), ranges))
                bar.advance(task, 1)
        return out

    def refresh(self, model: torch.nn.Module, round_index: int, progress: bool = False) -> dict:
        """Predict every scan with ``model`` (switched to eval mode and back), write the
        pseudo-labels, log one line and return the round's statistics."""
        start = time.perf_counter()
        was_training = model.training
        model.eval()
        if self.prior:  # adapt.prior: pseudo-labels under the target class mix
            # its current prior on the simulated scans (or the source checkpoint's)
            model.logit_bias = correction_bias(model, self.prior, "adapt: the source model")
        try:
            scans = self.predict(model, progress)
        finally:
            model.logit_bias = None
            model.train(was_training)
        if not scans:
            raise RuntimeError(f"{self.out_root}: no readable real scan to pseudo-label")
        pooled = select_pseudo_labels(
            np.concatenate([prob for _, prob, _, _ in scans]),
            self.keep_fraction,
            self.max_threshold,
            self.min_confidence,
            self.label_map.ignore_index,
            self.max_share,
        )
        if self.max_range is not None:  # far voxels: the source's least reliable predictions
            far = np.concatenate([ranges for *_, ranges in scans]) > self.max_range
            pooled.label[far] = self.label_map.ignore_index
        start_row = 0
        for meta, prob, inverse, _ in scans:
            voxel_label = pooled.label[start_row : start_row + prob.shape[0]]
            start_row += prob.shape[0]
            write_pseudo_labels(
                self.out_root, meta["sequence"], meta["frame"], voxel_label[inverse], self.label_map
            )
        stats = self._stats(pooled, round_index, len(scans), time.perf_counter() - start)
        self.history.append(stats)
        self.history_path.parent.mkdir(parents=True, exist_ok=True)
        self.history_path.write_text(json.dumps(self.history, indent=2))
        return stats

    def _stats(self, pooled: Any, round_index: int, n_scans: int, seconds: float) -> dict:
        names = self.label_map.class_names
        kept, predicted = pooled.coverage(self.label_map.num_classes)
        labelled = pooled.label != self.label_map.ignore_index
        per_class = {
            names[c]: {
                "predicted": int(predicted[c]),
                "kept": int(kept[c]),
                "threshold": float(pooled.thresholds[c]),
            }
            for c in range(len(names))
            if predicted[c] > 0
        }
        stats = {
            "round": round_index,
            "scans": n_scans,
            "voxels": int(labelled.size),
            "coverage": float(labelled.mean()),
            "mean_confidence": float(pooled.confidence.mean()),
            "mean_confidence_kept": float(pooled.confidence[labelled].mean())
            if labelled.any()
            else 0.0,
            "seconds": round(seconds, 2),
            "classes": per_class,
        }
        classes = ", ".join(
            f"{name} {v['kept']}/{v['predicted']}"
            for name, v in sorted(per_class.items(), key=lambda kv: -kv[1]["predicted"])
        )
        log.info(
            "adapt round %d: %d scans, %.1f %% of %d voxels pseudo-labelled, mean confidence "
            "%.3f (kept %.3f), %.1f s | kept/predicted voxels: %s",
            round_index,
            n_scans,
            100 * stats["coverage"],
            stats["voxels"],
            stats["mean_confidence"],
            stats["mean_confidence_kept"],
            seconds,
            classes,
        )
        return stats


class PseudoLabelRounds(pl.Callback):
    """Refreshes the pseudo-labels at the start of every round (every ``epochs_per_round``
    epochs after the first; round 0's are written before fitting) and saves each round's
    weights as ``<ckpt_dir>/round_<k>.ckpt`` when it ends."""

    def __init__(self, labeller: PseudoLabeller, epochs_per_round: int, ckpt_dir: Path) -> None:
        self.labeller = labeller
        self.epochs_per_round = epochs_per_round
        self.ckpt_dir = Path(ckpt_dir)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch
        if epoch > 0 and epoch % self.epochs_per_round == 0:
            if trainer.is_global_zero:
                self.labeller.refresh(pl_module, epoch // self.epochs_per_round)
            trainer.strategy.barrier("pseudo-labels")

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if (trainer.current_epoch + 1) % self.epochs_per_round == 0 and not trainer.fast_dev_run:
            k = (trainer.current_epoch + 1) // self.epochs_per_round - 1
            trainer.save_checkpoint(self.ckpt_dir / f"round_{k}.ckpt", weights_only=False)


# --------------------------------------------------------------------------- data


class AdaptDataModule(pl.LightningDataModule):
    """Training batches from the mixed simulated + pseudo-labelled real set; validation on the
    simulated validation split (never on labelled real scans).

    ``dataset(split)`` is the simulated datamodule's, so ``class_weights: train`` weighs the
    loss by the simulated class mix the source model was trained with.
    """

    def __init__(
        self,
        sim: Any,
        sim_raw: Any,
        real_raw: Any,
        mixed: dict[str, Any],
        batch_size: int,
        num_workers: int,
    ) -> None:
        super().__init__()
        self.sim, self.sim_raw, self.real_raw = sim, sim_raw, real_raw
        self.mixed_kwargs = mixed
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.mixed: MixedDataset | None = None

    def prepare_data(self) -> None:
        self.sim.prepare_data()

    def dataset(self, split: str) -> Any:
        return self.sim.dataset(split)

    def setup(self, stage: str | None = None) -> None:
        self.sim.setup("validate")
        if stage in (None, "fit") and self.mixed is None:
            sim_train = self.sim_raw.dataset("train")
            kwargs = dict(self.mixed_kwargs)
            if kwargs.get("length") is None:
                kwargs["length"] = len(sim_train)
            self.mixed = MixedDataset(sim_train, self.real_raw.dataset("train"), **kwargs)

    def train_dataloader(self) -> DataLoader:
        assert self.mixed is not None, "setup('fit') first"
        return DataLoader(
            self.mixed,
            batch_size=self.batch_size,
            shuffle=True,
            num_workers=self.num_workers,
            collate_fn=collate_point_clouds,
            persistent_workers=self.num_workers > 0,
        )

    def val_dataloader(self) -> DataLoader:
        return self.sim.val_dataloader()


# --------------------------------------------------------------------------- the stage


def _without_adapt(cfg: DictConfig) -> DictConfig:
    sim_cfg = cfg.copy()
    with open_dict(sim_cfg):
        sim_cfg.adapt.root = None
    return sim_cfg


#: Callbacks of the run that the adaptation trainer leaves out: checkpointing (adaptation keeps
#: its own: every round's weights and the last; none is picked by a metric), the run's time
#: budget (it plans the simulated training's schedule) and the weight average (pseudo-labels
#: come from the weights being trained).
_NOT_IN_ADAPTATION = ("model_checkpoint", "step_checkpoint", "time_budget", "weight_average")


def _callbacks(cfg: DictConfig) -> list[pl.Callback]:
    """The run's callbacks minus :data:`_NOT_IN_ADAPTATION`, plus RandomState."""
    from pcseg.train import instantiate_group

    nodes = OmegaConf.to_container(cfg.get("callbacks") or {}, resolve=True)
    group = OmegaConf.create({k: v for k, v in nodes.items() if k not in _NOT_IN_ADAPTATION})
    callbacks = instantiate_group(group)
    return [*callbacks, RandomState()]


def _loggers(cfg: DictConfig, out: Path) -> list[Any]:
    loggers = []
    for node in (cfg.get("logger") or {}).values():
        if node and "_target_" in node:
            kwargs = {"save_dir": str(out / "tensorboard")} if "save_dir" in node else {}
            loggers.append(instantiate(node, **kwargs))
    return loggers


def _trusted_targets(acfg: DictConfig) -> list[str]:
    """``adapt.trusted_targets`` as a list: the extra ``_target_`` names the source checkpoint
    may carry (pcseg.checkpoint_loading allows only its allow-list otherwise)."""
    return list(acfg.get("trusted_targets") or [])


def _sim_overrides(acfg: DictConfig) -> dict[str, Any]:
    """Data overrides for the simulated scans to mix in: none (the checkpoint's own), or
    ``adapt.sim_root`` (e.g. the copy a from_ckpt model was trained on, when the embedded
    dataset has been regenerated since), read as it is, never regenerated."""
    return {"root": str(acfg.sim_root), "generate": False} if acfg.get("sim_root") else {}


def _source_stage(cfg: DictConfig, out_dir: Path) -> tuple[Path, dict[str, float]]:
    """The checkpoint to adapt and the simulated stage's metrics: ``adapt.from_ckpt`` as given
    (nothing trained, no metrics), else train on the simulated scans first (``train()`` with
    ``adapt.root`` cleared, so it does not recurse here) and take its best checkpoint."""
    if cfg.adapt.get("from_ckpt"):
        return Path(cfg.adapt.from_ckpt), {}
    from pcseg.train import train

    metrics = train(_without_adapt(cfg))
    return source_checkpoint(out_dir / "checkpoints"), dict(metrics)


def _fine_tuning_model(run: LoadedRun, acfg: DictConfig, source: Path) -> SegmentationModule:
    """The source network in train mode, set up for fine-tuning: its stored run config gains
    the simulated-data overrides and the ``adapt`` block (with ``source_ckpt``), so the adapted
    checkpoint rebuilds exactly in ``evaluate.py``; the same optimiser at ``adapt.lr``, and a
    fresh schedule."""
    model = build_model(run, _trusted_targets(acfg)).train()
    stored = OmegaConf.to_container(run.config, resolve=True)
    stored["data"].update(_sim_overrides(acfg))
    stored["adapt"] = {**OmegaConf.to_container(acfg, resolve=True), "source_ckpt": str(source)}
    model.run_config = stored
    model.optimizer_factory = instantiate(run.config.model.optimizer, lr=float(acfg.lr))
    return model


@dataclass(frozen=True)
class _AdaptationData:
    """The four datamodules of the adaptation, all built from the source checkpoint's data
    config: the staged real scans read with the network's features (``real_predict``, for the
    pseudo-labeller: no augmentation, no workers) and with raw features (``real_raw``, for the
    mixer); the simulated scans as trained on (``sim``, validation) and with raw features and
    no augmentation (``sim_raw``, for the mixer, which augments after mixing)."""

    real_predict: Any
    real_raw: Any
    sim: Any
    sim_raw: Any


def _adaptation_data(run_cfg: DictConfig, acfg: DictConfig, pseudo_root: Path) -> _AdaptationData:
    """Stage the real scans of ``adapt.root`` as links in ``pseudo_root`` (SemanticKITTI
    layout, every staged sequence in every split, so the ordinary dataset code reads them and
    their pseudo-labels) and build the datamodules over them and over the simulated scans."""
    staged = stage_scans(acfg.root, pseudo_root, acfg.get("sequences"))
    sequences = sorted({s.sequence for s in staged})
    split = {"train": sequences, "valid": sequences, "test": sequences}
    sim_kw = _sim_overrides(acfg)
    real_kw = {"root": str(pseudo_root), "sequences": split, "generate": False, "augment": None}
    data = _AdaptationData(
        real_predict=instantiate(run_cfg.data, **real_kw, num_workers=0, persistent_workers=False),
        real_raw=instantiate(run_cfg.data, **real_kw, features=list(RAW_FEATURES)),
        sim=instantiate(run_cfg.data, **sim_kw),
        sim_raw=instantiate(run_cfg.data, **sim_kw, augment=None, features=list(RAW_FEATURES)),
    )
    log.info("adapt: %d real scans staged in %s", len(staged), pseudo_root)
    return data


def _pseudo_labeller(
    data: _AdaptationData,
    model: SegmentationModule,
    run_cfg: DictConfig,
    acfg: DictConfig,
    adapt_dir: Path,
) -> PseudoLabeller:
    """The PseudoLabeller over the staged real scans (their test split, the network's
    features), with ``adapt``'s selection and TTA settings; labels go beside the staged scans
    in ``<adapt_dir>/pseudo``, the round statistics to ``<adapt_dir>/rounds.json``."""
    return PseudoLabeller(
        data.real_predict.dataset("test"),
        adapt_dir / "pseudo",
        model.label_map,
        list(run_cfg.data.features),
        keep_fraction=float(acfg.keep_fraction),
        max_threshold=float(acfg.max_threshold),
        min_confidence=float(acfg.min_confidence),
        tta=int(acfg.tta),
        history=adapt_dir / "rounds.json",
        max_share=_prior_caps(model.label_map, acfg.get("prior_slack")),
        prior=acfg.get("prior"),
        max_range=acfg.get("max_range"),
    )


def _prior_caps(label_map: LabelMap, slack: float | None) -> np.ndarray | None:
    """``adapt.prior_slack`` x each class's share of points in the label yaml's ``content``:
    the most of all voxels a class may hold as pseudo-labels (None: no cap). Needs ``content``."""
    if slack is None:
        return None
    shares = label_map.class_shares()
    if not shares.any():
        raise ValueError(
            f"{label_map.path}: adapt.prior_slack needs class frequencies ('content') in the "
            "label yaml; set adapt.prior_slack=null or add them"
        )
    return float(slack) * shares


def _adapt_datamodule(
    cfg: DictConfig, run_cfg: DictConfig, data: _AdaptationData, model: SegmentationModule
) -> AdaptDataModule:
    """Training on the mixed simulated + pseudo-labelled real scans (``adapt.mix`` and its
    settings; the source run's augmentation, applied after mixing; ``adapt.samples_per_epoch``
    samples, None: as many as simulated training scans), validation on simulated scans. The
    batch size is the source run's, the workers this run's."""
    acfg = cfg.adapt
    return AdaptDataModule(
        data.sim,
        data.sim_raw,
        data.real_raw,
        mixed={
            "features": list(run_cfg.data.features),
            "length": acfg.get("samples_per_epoch"),
            "augment": instantiate(run_cfg.data.augment) if run_cfg.data.get("augment") else None,
            "mode": str(acfg.mix),
            "mix_prob": float(acfg.mix_prob),
            "real_fraction": float(acfg.real_fraction),
            "cosmix_share": float(acfg.cosmix_share),
            "max_bands": int(acfg.lasermix_bands),
            "ignore_index": model.label_map.ignore_index,
        },
        batch_size=int(run_cfg.data.batch_size),
        num_workers=int(cfg.data.num_workers),
    )


def _adaptation_trainer(
    cfg: DictConfig, labeller: PseudoLabeller, adapt_dir: Path, validate: bool
) -> pl.Trainer:
    """This run's trainer for ``adapt.rounds`` rounds of ``adapt.epochs_per_round`` epochs in
    one fit: simulated validation after every round (none when not ``validate``), no
    Lightning checkpointing (:class:`PseudoLabelRounds` refreshes the pseudo-labels and keeps
    each round's weights in ``<adapt_dir>/checkpoints``), logs under ``adapt_dir``."""
    acfg = cfg.adapt
    epochs = int(acfg.epochs_per_round)
    rounds = PseudoLabelRounds(labeller, epochs, adapt_dir / "checkpoints")
    return instantiate(
        cfg.trainer,
        max_epochs=int(acfg.rounds) * epochs,
        min_epochs=1,
        check_val_every_n_epoch=epochs,
        **({} if validate else {"limit_val_batches": 0}),
        enable_checkpointing=False,
        default_root_dir=str(adapt_dir),
        callbacks=[*_callbacks(cfg), rounds],
        logger=_loggers(cfg, adapt_dir) or False,
    )


def _adaptation_metrics(
    trainer: pl.Trainer,
    model: SegmentationModule,
    labeller: PseudoLabeller,
    sim: Any,
    adapt_dir: Path,
    seconds: float,
    validate: bool,
) -> dict[str, float]:
    """``adapt/...`` metrics of the fit: the trainer's last logged metrics, the last round's
    pseudo-label coverage, the time and, when it validated (not under fast_dev_run), the
    adapted model scored on every point of the simulated validation scans (``report_best``,
    which also writes its report under ``adapt_dir``)."""
    metrics = {f"adapt/{k}": float(v) for k, v in trainer.callback_metrics.items()}
    metrics["adapt/pseudo_coverage"] = labeller.history[-1]["coverage"]
    metrics["adapt/seconds"] = seconds
    if validate and model.last_result is not None and not trainer.fast_dev_run:
        from pcseg.train import report_best

        full = report_best(model, sim, "", adapt_dir, trainer.is_global_zero)
        metrics.update({f"adapt/{k}": v for k, v in full.items()})
    return metrics


def adapt(cfg: DictConfig) -> dict[str, float]:
    """Train on simulated scans (unless ``cfg.adapt.from_ckpt``), then self-train on the real
    scans of ``cfg.adapt.root``; returns the metrics of both stages (``adapt/...`` keys for the
    adaptation: simulated validation of the adapted model, final pseudo-label coverage).

    The simulated data and the network come from the source checkpoint's stored config, so an
    adapted checkpoint rebuilds exactly in ``evaluate.py``; trainer, callbacks, loggers and
    paths are this run's.
    """
    acfg = cfg.adapt
    out_dir = Path(cfg.paths.output_dir)
    adapt_dir = out_dir / "adapt"
    validate = bool(acfg.get("validate", True))
    source, metrics = _source_stage(cfg, out_dir)
    # weights_only=True and only allow-listed _target_s (pcseg.checkpoint_loading)
    run = load_checkpoint(source, trusted_targets=_trusted_targets(acfg))
    log.info("Adapting %s to the real scans in %s", source, acfg.root)
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)
    start = time.perf_counter()

    model = _fine_tuning_model(run, acfg, source)
    data = _adaptation_data(run.config, acfg, adapt_dir / "pseudo")
    labeller = _pseudo_labeller(data, model, run.config, acfg, adapt_dir)
    labeller.refresh(model, 0, progress=Console().is_terminal)
    datamodule = _adapt_datamodule(cfg, run.config, data, model)
    trainer = _adaptation_trainer(cfg, labeller, adapt_dir, validate)
    trainer.fit(model, datamodule=datamodule, weights_only=True)
    adapted = out_dir / "checkpoints" / ADAPTED_CHECKPOINT
    trainer.save_checkpoint(adapted, weights_only=False)
    seconds = time.perf_counter() - start
    metrics.update(
        _adaptation_metrics(trainer, model, labeller, data.sim, adapt_dir, seconds, validate)
    )
    log.info(
        "adapted checkpoint (last round, %d rounds, %.0f s): %s  evaluate it: python evaluate.py "
        "ckpt_path=%s data.root=<real root>",
        int(acfg.rounds),
        seconds,
        adapted,
        adapted,
    )
    return metrics
