"""Submission exports that are whole or fail: staged in a fresh folder, published by rename.

``evaluate.py export=true`` used to write into ``export_dir`` directly: a reused folder kept the
previous model's prediction for a scan this run skipped, and the check passed it as "verified".
Here every prediction goes into a fresh staging folder beside ``export_dir``
(``.<name>.<pid>.partial``); only when the staged tree verifies (one file per scan, point
counts, ids; :func:`pcseg.predict.verify_submission`) and no scan was skipped (or skipped
scans are explicitly allowed, ``export_allow_skipped=true``, and listed) does it replace
``export_dir`` (two renames in one directory). So every file under ``export_dir`` is from one
run, and a failed export leaves ``export_dir`` as it was.

An existing ``export_dir`` is replaced only when it looks like an export (``sequences/NN/
predictions/*.label`` and an optional ``description.txt``, which is carried over); anything else
there is refused up front, before any scan is predicted, rather than deleted.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType

from pcseg.data.labels import LabelMap
from pcseg.predict import SubmissionSummary, verify_submission

__all__ = ["ExportError", "SubmissionExport"]

#: Files at the top of an export folder that are kept when it is replaced.
CARRIED_OVER = ("description.txt",)
_LISTED = 10


class ExportError(ValueError):
    """An export cannot be written whole; the message names the folder and what is wrong."""


def _foreign_entries(folder: Path) -> list[Path]:
    """Entries of an existing export folder that a pcseg export did not put there."""
    foreign: list[Path] = []
    for entry in folder.iterdir():
        if entry.name in CARRIED_OVER and entry.is_file():
            continue
        if entry.name != "sequences" or not entry.is_dir():
            foreign.append(entry)
            continue
        for seq in entry.iterdir():
            if not seq.is_dir():
                foreign.append(seq)
                continue
            for sub in seq.iterdir():
                if sub.name != "predictions" or not sub.is_dir():
                    foreign.append(sub)
                    continue
                foreign += [p for p in sub.iterdir() if p.suffix != ".label" or not p.is_file()]
    return sorted(foreign)


def _listed(items: Sequence[str]) -> str:
    more = [f"... and {len(items) - _LISTED} more"] if len(items) > _LISTED else []
    return "\n".join(f"  {line}" for line in [*items[:_LISTED], *more])


class SubmissionExport:
    """One export: predictions go to :attr:`staging`; :meth:`publish` verifies and swaps it in.

    Use as a context manager: leaving the block without a successful :meth:`publish` removes
    the staging folder and leaves ``export_dir`` untouched.

    Raises ExportError at construction when ``export_dir`` exists and holds anything an export
    would not (it is never deleted), or is a file.
    """

    def __init__(self, export_dir: str | os.PathLike) -> None:
        self.target = Path(export_dir).expanduser().absolute()
        if self.target.exists():
            if not self.target.is_dir():
                raise ExportError(f"{self.target}: export_dir is a file, not a folder")
            foreign = _foreign_entries(self.target)
            if foreign:
                raise ExportError(
                    f"{self.target}: export_dir holds files that are not a SemanticKITTI "
                    f"export; an export replaces the folder, so give a new or empty export_dir "
                    f"(or move them):\n" + _listed([str(p) for p in foreign])
                )
        self.staging = self.target.with_name(f".{self.target.name}.{os.getpid()}.partial")
        shutil.rmtree(self.staging, ignore_errors=True)
        self.staging.mkdir(parents=True)
        self.published = False

    def __enter__(self) -> SubmissionExport:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.discard()

    def discard(self) -> None:
        """Remove the staging folder (a no-op after :meth:`publish`)."""
        shutil.rmtree(self.staging, ignore_errors=True)

    def publish(
        self,
        dataset_root: str | os.PathLike,
        sequences: Sequence[int | str],
        label_map: LabelMap,
        skipped: Iterable[Mapping[str, str]] = (),
        allow_skipped: bool = False,
    ) -> SubmissionSummary:
        """Verify the staged tree against the dataset and make it ``export_dir``.

        skipped: the scans left out under ``data.on_bad_scan=skip`` (``PointBatch.skipped``
            records: ``scan_path``, ``path`` of the bad file, ``reason``);
            any makes the export fail (ExportError listing them) unless ``allow_skipped``, in
            which case they are allowed to have no prediction and listed in the summary.
        Raises SubmissionError (from verify_submission) when the staged tree is incomplete or
        invalid. On any failure ``export_dir`` keeps its previous content.
        """
        skipped = list(skipped)
        if skipped and not allow_skipped:
            raise ExportError(
                f"{self.target}: export not written: {len(skipped)} scan(s) were skipped "
                "(data.on_bad_scan=skip) and would have no prediction:\n"
                + _listed([f"{r['path']}: {r['reason']}" for r in skipped])
                + "\nFix or remove them, or pass export_allow_skipped=true to export the rest "
                "(the benchmark rejects an incomplete submission). export_dir is unchanged."
            )
        summary = verify_submission(
            self.staging,
            dataset_root,
            sequences,
            label_map=label_map,
            skipped=[r.get("scan_path", r["path"]) for r in skipped],
        )
        for name in CARRIED_OVER:
            old = self.target / name
            if old.is_file():
                shutil.copy2(old, self.staging / name)
        retired = self.target.with_name(f".{self.target.name}.{os.getpid()}.old")
        if self.target.exists():
            os.replace(self.target, retired)
        os.replace(self.staging, self.target)
        shutil.rmtree(retired, ignore_errors=True)
        self.published = True
        return summary
