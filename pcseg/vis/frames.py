"""Find and load the frames of one SemanticKITTI sequence for viewing, and colour them by mode.

Shared by the interactive window and the PNG/PLY export so both read the same files the same
way. Layout: ``ROOT/sequences/NN/velodyne/NNNNNN.{bin,pcd,ply}``, ``.../labels/NNNNNN.label``
(optional)
and predictions (optional, RAW ids like the labels) in either

- a submission root: ``PRED/sequences/NN/predictions/NNNNNN.label`` (what
  ``evaluate.py export=true`` writes), or
- a folder holding the ``NNNNNN.label`` files directly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import numpy as np

from pcseg.data.io import SCAN_SUFFIXES, read_labels
from pcseg.data.labels import LabelMap
from pcseg.data.validation import read_checked_scan
from pcseg.vis.colors import class_colors, error_colors, height_colors, remission_colors

Mode = Literal["gt", "pred", "error", "remission", "height"]
MODES: tuple[str, ...] = get_args(Mode)


class VisualizationError(ValueError):
    """The requested sequence, frames or predictions cannot be shown (the message says why)."""


def printable_name(path: Path) -> str:
    """``path``'s name, printable on any terminal: bytes that are not UTF-8 (kept by Python as
    surrogate escapes) are shown as ``\\xNN`` instead of failing to print."""
    raw = os.fsencode(path.name)
    return raw.decode("utf-8", errors="backslashreplace")


def ignored_scan_files(velodyne: Path) -> list[str]:
    """Printable names of the files in ``velodyne`` that are not frames (NNNNNN + a scan
    suffix): unknown suffixes, non-numeric or non-UTF-8 names. Shown so nothing is silently
    left out."""
    if not velodyne.is_dir():
        return []
    return sorted(
        printable_name(p)
        for p in velodyne.iterdir()
        if not (p.suffix.lower() in SCAN_SUFFIXES and _frame_id(p) is not None)
    )


def _frame_id(path: Path) -> int | None:
    stem = path.stem
    return int(stem) if stem.isascii() and stem.isdigit() else None


@dataclass(frozen=True)
class FrameFiles:
    """Files of one frame: ``scan`` always, ``labels`` / ``prediction`` when present."""

    sequence: str
    frame: int
    scan: Path
    labels: Path | None
    prediction: Path | None


@dataclass(frozen=True)
class Frame:
    """One loaded frame: ``xyz`` (N, 3) float32, ``remission`` (N,) float32, and training
    ids (N,) int64 ``target`` (ground truth) and ``pred`` where their files exist."""

    files: FrameFiles
    xyz: np.ndarray
    remission: np.ndarray
    target: np.ndarray | None
    pred: np.ndarray | None

    def modes(self) -> list[str]:
        """The modes this frame can be coloured in."""
        out = []
        if self.target is not None:
            out.append("gt")
        if self.pred is not None:
            out.append("pred")
        if self.target is not None and self.pred is not None:
            out.append("error")
        return [*out, "remission", "height"]


def resolve_predictions(predictions: str | Path, sequence: str) -> Path:
    """The folder holding this sequence's prediction ``.label`` files (see module doc)."""
    predictions = Path(predictions)
    nested = predictions / "sequences" / sequence / "predictions"
    if nested.is_dir():
        return nested
    if predictions.is_dir() and any(predictions.glob("*.label")):
        return predictions
    raise VisualizationError(
        f"no predictions for sequence {sequence}: neither {nested} exists nor does "
        f"{predictions} hold .label files"
    )


def parse_frames(spec: str | None, available: list[int]) -> list[int]:
    """Select frame numbers (file ids, e.g. 5 = 000005) from ``available`` (sorted).

    ``spec``: None = all; ``"0:10"`` = ids 0..9 (end exclusive, like Python; ``"5:"``,
    ``":3"`` and ``"0:100:10"`` work too); ``"3,7,12"`` = a list; ``"4"`` = one frame.
    Listed ids that do not exist raise :class:`VisualizationError`.
    """
    if spec is None or spec.strip() in ("", ":"):
        return list(available)
    spec = spec.strip()
    try:
        if ":" in spec:
            parts = [int(p) if p.strip() else None for p in spec.split(":")]
            if len(parts) > 3:
                raise ValueError
            start, stop = parts[0], parts[1]
            step = parts[2] if len(parts) == 3 and parts[2] else 1
            lo = start if start is not None else 0
            hi = stop if stop is not None else (max(available) + 1 if available else 0)
            wanted = set(range(lo, hi, step))
            chosen = [f for f in available if f in wanted]
            if not chosen:
                raise VisualizationError(f"--frames {spec}: no frame in that range exists")
            return chosen
        wanted_list = [int(p) for p in spec.split(",") if p.strip()]
    except ValueError as e:
        raise VisualizationError(
            f"--frames {spec!r}: expected a range like 0:10 or a list like 3,7,12"
        ) from e
    missing = [f for f in wanted_list if f not in set(available)]
    if missing:
        raise VisualizationError(f"--frames {spec}: frames {missing} do not exist")
    return wanted_list


def find_frames(
    root: str | Path,
    sequence: str | int,
    frames: str | None = None,
    predictions: str | Path | None = None,
) -> list[FrameFiles]:
    """List the frames to show. ``sequence``: "08" or 8; ``frames``: see :func:`parse_frames`.

    Scans are ``NNNNNN.bin``, ``.pcd`` or ``.ply`` (one frame id in two formats: an error);
    other files are listed by :func:`ignored_scan_files`. Raises :class:`VisualizationError`
    for a missing sequence or scan folder, and for a selected frame whose prediction file is
    missing (naming it).
    """
    seq = f"{int(sequence):02d}" if str(sequence).isdigit() else str(sequence)
    seq_dir = Path(root) / "sequences" / seq
    if not seq_dir.is_dir():
        have = sorted(p.name for p in (Path(root) / "sequences").glob("*") if p.is_dir())
        raise VisualizationError(
            f"sequence {seq} not found: {seq_dir} does not exist"
            + (f" (available: {', '.join(have)})" if have else "")
        )
    velodyne = seq_dir / "velodyne"
    if not velodyne.is_dir():
        holds = sorted(printable_name(p) for p in seq_dir.iterdir())
        raise VisualizationError(
            f"no scans: sequence {seq} has no velodyne/ folder ({seq_dir} holds: "
            f"{', '.join(holds) or 'nothing'})"
        )
    scans: dict[int, Path] = {}
    for p in sorted(velodyne.iterdir()):
        frame = _frame_id(p)
        if frame is None or p.suffix.lower() not in SCAN_SUFFIXES:
            continue
        if frame in scans:
            raise VisualizationError(
                f"frame {frame:06d} of sequence {seq} is there twice: {scans[frame].name} and "
                f"{p.name}; keep one"
            )
        scans[frame] = p
    if not scans:
        ignored = ignored_scan_files(velodyne)
        raise VisualizationError(
            f"no scans: {velodyne} holds no NNNNNN{{{','.join(SCAN_SUFFIXES)}}} files"
            + (f" (ignored: {', '.join(ignored[:5])})" if ignored else "")
        )
    pred_dir = resolve_predictions(predictions, seq) if predictions is not None else None
    out = []
    for frame in parse_frames(frames, sorted(scans)):
        labels = seq_dir / "labels" / f"{frame:06d}.label"
        pred = None
        if pred_dir is not None:
            pred = pred_dir / f"{frame:06d}.label"
            if not pred.is_file():
                raise VisualizationError(f"{pred}: prediction file missing for frame {frame}")
        out.append(FrameFiles(seq, frame, scans[frame], labels if labels.is_file() else None, pred))
    return out


def load_frame(files: FrameFiles, label_map: LabelMap) -> Frame:
    """Read a frame; label and prediction counts must match the scan (errors name the file).

    The scan gets the dataset's checks, so one with garbage coordinates (e.g. 1e30, which
    would wreck the view bounds) raises :class:`~pcseg.data.errors.ScanFormatError`.
    """
    xyz, remission = read_checked_scan(files.scan, min_points=1)
    n = xyz.shape[0]
    target = pred = None
    if files.labels is not None:
        target = label_map.to_train(read_labels(files.labels, n)[0], files.labels)
    if files.prediction is not None:
        pred = label_map.to_train(read_labels(files.prediction, n)[0], files.prediction)
    return Frame(files, xyz, remission, target, pred)


def default_mode(frame_files: FrameFiles) -> str:
    """error if labels and predictions exist; else gt, pred or remission, whichever exists."""
    if frame_files.labels is not None and frame_files.prediction is not None:
        return "error"
    if frame_files.labels is not None:
        return "gt"
    if frame_files.prediction is not None:
        return "pred"
    return "remission"


def frame_colors(frame: Frame, mode: str, label_map: LabelMap) -> np.ndarray:
    """Colours (N, 3) float32 of ``frame`` in ``mode`` (one of :data:`MODES`)."""
    if mode not in frame.modes():
        need = {"gt": "labels", "pred": "predictions", "error": "labels and predictions"}
        raise VisualizationError(
            f"mode {mode!r} needs {need.get(mode, 'a known mode')}; frame {frame.files.frame:06d} "
            f"of sequence {frame.files.sequence} can be shown as: {', '.join(frame.modes())}"
        )
    if mode == "gt":
        return class_colors(frame.target, label_map)
    if mode == "pred":
        return class_colors(frame.pred, label_map)
    if mode == "error":
        return error_colors(frame.pred, frame.target, label_map.ignore_index)
    if mode == "remission":
        return remission_colors(frame.remission)
    return height_colors(frame.xyz)
