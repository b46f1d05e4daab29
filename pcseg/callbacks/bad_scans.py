"""Report the scans the loaders skipped (``data.on_bad_scan=skip``) at the end of every epoch.

Skips happen in DataLoader worker processes; each reaches the main process in its batch's
``PointBatch.skipped`` (see :mod:`pcseg.data.collate`). This callback collects them per stage
and epoch, gathers them from every process (DDP), logs the count as ``data/skipped_scans``
(training), ``data/skipped_scans_val`` and ``data/skipped_scans_test``, and warns once per bad
scan with its file and reason: a known-bad scan is counted every epoch, never re-listed.
"""

from __future__ import annotations

import logging
from typing import Any

import pytorch_lightning as pl
import torch

log = logging.getLogger(__name__)

#: Metric name per stage.
METRIC = {
    "train": "data/skipped_scans",
    "val": "data/skipped_scans_val",
    "test": "data/skipped_scans_test",
}


def _gather(trainer: pl.Trainer, records: list[dict[str, str]]) -> list[dict[str, str]]:
    """Every process's records, on every process (the records themselves without DDP)."""
    dist = torch.distributed
    if trainer.world_size <= 1 or not (dist.is_available() and dist.is_initialized()):
        return list(records)
    parts: list[list[dict[str, str]] | None] = [None] * trainer.world_size
    dist.all_gather_object(parts, list(records))
    return [r for part in parts for r in part or []]


class BadScanLogger(pl.Callback):
    """Counts skipped scans per epoch, logs the count, warns once per bad scan.

    Args:
        max_listed: most new bad scans listed in one warning (the rest are counted).
    """

    def __init__(self, max_listed: int = 20) -> None:
        self.max_listed = max_listed
        self._epoch: dict[str, list[dict[str, str]]] = {stage: [] for stage in METRIC}
        #: Scan paths already listed in a warning (kept in checkpoints, so a resumed run
        #: does not list them again).
        self.reported: set[str] = set()

    # ----------------------------------------------------------------- collecting

    def _collect(self, stage: str, batch: Any) -> None:
        self._epoch[stage].extend(getattr(batch, "skipped", None) or [])

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch["train"] = []

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch["val"] = []

    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch["test"] = []

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._collect("train", batch)

    def on_validation_batch_start(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._collect("val", batch)

    def on_test_batch_start(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._collect("test", batch)

    # ----------------------------------------------------------------- reporting

    def _report(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        records = _gather(trainer, self._epoch[stage])
        self._epoch[stage] = []
        # Every rank holds the gathered total: a max-"sync" keeps it exact under DDP.
        pl_module.log(
            METRIC[stage], float(len(records)), batch_size=1, sync_dist=True, reduce_fx="max"
        )
        if not records or not trainer.is_global_zero:
            return
        new: dict[str, dict[str, str]] = {}
        for r in records:
            if r["scan_path"] not in self.reported:
                new.setdefault(r["scan_path"], r)
        self.reported.update(new)
        where = f"{stage} epoch {trainer.current_epoch}"
        if not new:
            log.info("%s: skipped %d bad scan(s), all reported before", where, len(records))
            return
        listed = [f"  {r['path']}: {r['reason']} [{r['kind']}]" for r in new.values()]
        more = len(listed) - self.max_listed
        lines = listed[: self.max_listed] + ([f"  ... and {more} more"] if more > 0 else [])
        log.warning(
            "%s: skipped %d bad scan(s) (data.on_bad_scan=skip), %d newly found:\n%s\n"
            "Check the whole dataset with: python scripts/check_dataset.py --root <root>",
            where,
            len(records),
            len(new),
            "\n".join(lines),
        )

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._report(trainer, pl_module, "train")

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            self._epoch["val"] = []
            return
        self._report(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._report(trainer, pl_module, "test")

    # ----------------------------------------------------------------- checkpoint state

    def state_dict(self) -> dict[str, Any]:
        return {"reported": sorted(self.reported)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.reported = set(state_dict.get("reported", []))
