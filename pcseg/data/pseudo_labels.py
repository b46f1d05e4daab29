"""Pseudo-labels for unlabelled real scans: class-balanced confidence filtering, and the folder
they live in (SemanticKITTI layout, so the ordinary dataset code reads them).

Self-training (Zou et al., "Unsupervised domain adaptation for semantic segmentation via
class-balanced self-training", ECCV 2018) keeps only the predictions a model is sure of. One
global confidence threshold keeps almost only the easy, frequent classes (road, building): a
model trained on simulated scans is rarely very sure of a real pole or trunk, so a rare class
would lose every label and self-training would teach the model to forget it. Here every class
gets its own threshold, the confidence at which the most confident ``keep_fraction`` of the
points predicted as that class are kept, capped at ``max_threshold`` (a prediction that sure is
always kept, whatever the class) and floored at ``min_confidence``. Points below their class's
threshold get the ignored id, so the loss skips them. Optionally a class-frequency prior caps each
class's share of all points (``max_share``, ``adapt.prior_slack``), even for sure predictions.

Staging: :func:`stage_scans` links every scan of a loose folder (``.bin``/``.pcd``/``.ply``) or
of a SemanticKITTI-layout root into ``OUT/sequences/NN/velodyne/``; :func:`write_pseudo_labels`
writes ``OUT/sequences/NN/labels/<frame>.label`` beside them (raw ids through
``learning_map_inv``; ignored points raw id 0, 'unlabeled').
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pcseg.data.errors import DatasetFileError
from pcseg.data.io import SCAN_SUFFIXES, write_labels
from pcseg.data.labels import LabelMap

__all__ = [
    "LOOSE_SEQUENCE",
    "PseudoLabels",
    "StagedScan",
    "class_thresholds",
    "pseudo_label_path",
    "select_pseudo_labels",
    "stage_scans",
    "write_pseudo_labels",
]

#: Sequence name the scans of a loose folder are staged under.
LOOSE_SEQUENCE = "00"


def class_thresholds(
    confidence: np.ndarray,
    prediction: np.ndarray,
    num_classes: int,
    keep_fraction: float,
    max_threshold: float = 1.0,
    min_confidence: float = 0.0,
    ignore_index: int | None = 0,
    max_share: np.ndarray | None = None,
) -> np.ndarray:
    """Per-class confidence thresholds, (num_classes,) float64.

    confidence: (V,) the probability of the predicted class of each point (or voxel);
    prediction: (V,) int, the predicted class.
    The threshold of class c is the ``1 - keep_fraction`` quantile of the confidences of the
    points predicted c (so about ``keep_fraction`` of them pass), lowered to ``max_threshold``
    and raised to ``min_confidence``. A class never predicted, and ``ignore_index``, get +inf.
    max_share: (num_classes,) optional cap, applied last: at most ``max_share[c] * V`` points
    pass for class c (its most confident ones; ties at the threshold may add a few), whatever
    ``max_threshold`` says. Why: a model that over-predicts a class on the new domain is often
    sure of it too, and self-training would then teach the error back round after round.
    """
    if not 0.0 < keep_fraction <= 1.0:
        raise ValueError(f"keep_fraction must lie in (0, 1], got {keep_fraction}")
    if not 0.0 <= min_confidence <= max_threshold:
        raise ValueError(
            f"need 0 <= min_confidence <= max_threshold, got {min_confidence}, {max_threshold}"
        )
    confidence = np.asarray(confidence, dtype=np.float64).reshape(-1)
    prediction = np.asarray(prediction, dtype=np.int64).reshape(-1)
    if confidence.shape != prediction.shape:
        raise ValueError(f"{confidence.shape[0]} confidences for {prediction.shape[0]} predictions")
    thresholds = np.full(num_classes, np.inf)
    for c in np.unique(prediction):
        if c == ignore_index or not 0 <= c < num_classes:
            continue
        q = float(np.quantile(confidence[prediction == c], 1.0 - keep_fraction))
        thresholds[c] = max(min(q, max_threshold), min_confidence)
    if max_share is not None:
        _apply_share_caps(thresholds, confidence, prediction, np.asarray(max_share))
    return thresholds


def _apply_share_caps(
    thresholds: np.ndarray, confidence: np.ndarray, prediction: np.ndarray, max_share: np.ndarray
) -> None:
    """Raise ``thresholds`` (C,) in place so that at most ``floor(max_share[c] * V)`` of the
    points predicted c reach their class's threshold (+inf when that is 0)."""
    if max_share.shape != thresholds.shape:
        raise ValueError(f"max_share has shape {max_share.shape}, expected {thresholds.shape}")
    for c in np.flatnonzero(np.isfinite(thresholds)):
        passing = np.sort(confidence[(prediction == c) & (confidence >= thresholds[c])])
        allowed = int(np.floor(max(float(max_share[c]), 0.0) * confidence.shape[0]))
        if passing.shape[0] > allowed:
            thresholds[c] = passing[-allowed] if allowed > 0 else np.inf


@dataclass
class PseudoLabels:
    """Class-balanced pseudo-labels of a set of points.

    label: (V,) int64 training ids, ``ignore_index`` where the prediction was not trusted;
    prediction: (V,) int64 the argmax class (over the trained classes);
    confidence: (V,) float32 its probability;
    thresholds: (C,) float64 per-class thresholds (+inf: class never predicted).
    """

    label: np.ndarray
    prediction: np.ndarray
    confidence: np.ndarray
    thresholds: np.ndarray

    def coverage(self, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
        """(kept, predicted): (C,) int64 points per class kept as labels and predicted."""
        kept = np.bincount(self.prediction[self.label == self.prediction], minlength=num_classes)
        return kept[:num_classes], np.bincount(self.prediction, minlength=num_classes)[:num_classes]


def select_pseudo_labels(
    prob: np.ndarray,
    keep_fraction: float,
    max_threshold: float = 1.0,
    min_confidence: float = 0.0,
    ignore_index: int | None = 0,
    max_share: np.ndarray | None = None,
) -> PseudoLabels:
    """Pseudo-labels from class probabilities ``prob`` (V, C) (rows sum to 1).

    The ignored class is never predicted (its column is dropped and the rest renormalised:
    the network never learnt it), thresholds come from :func:`class_thresholds` over all V rows
    at once (pool every scan of a round, so thresholds do not vary scan to scan), and rows
    below their class's threshold are labelled ``ignore_index``. ``max_share``: see
    :func:`class_thresholds`.
    """
    prob = np.asarray(prob, dtype=np.float64)
    if prob.ndim != 2:
        raise ValueError(f"prob must be (V, C), got shape {prob.shape}")
    num_classes = prob.shape[1]
    if ignore_index is not None and 0 <= ignore_index < num_classes:
        prob = prob.copy()
        prob[:, ignore_index] = 0.0
        prob /= np.maximum(prob.sum(axis=1, keepdims=True), 1e-12)
    prediction = prob.argmax(axis=1).astype(np.int64)
    confidence = prob[np.arange(prob.shape[0]), prediction]
    thresholds = class_thresholds(
        confidence,
        prediction,
        num_classes,
        keep_fraction,
        max_threshold,
        min_confidence,
        ignore_index,
        max_share,
    )
    keep = confidence >= thresholds[prediction]
    fill = ignore_index if ignore_index is not None else -1
    label = np.where(keep, prediction, fill).astype(np.int64)
    return PseudoLabels(label, prediction, confidence.astype(np.float32), thresholds)


# --------------------------------------------------------------------------- the folder


@dataclass(frozen=True)
class StagedScan:
    """A real scan staged for self-training: its original file and the staged link."""

    source: Path
    sequence: str
    frame: str
    path: Path


def _scan_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in SCAN_SUFFIXES)


def _link(source: Path, target: Path) -> None:
    """Symlink ``target`` -> ``source`` (absolute); a copy where links are not allowed."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_symlink() or target.exists():
        target.unlink()
    try:
        os.symlink(source.resolve(), target)
    except OSError:
        shutil.copy2(source, target)


def stage_scans(
    root: str | Path, out_root: str | Path, sequences: list[int | str] | None = None
) -> list[StagedScan]:
    """Link the scans of ``root`` into ``out_root`` in SemanticKITTI layout; return them.

    ``root`` is either a SemanticKITTI-layout root (``root/sequences/NN/velodyne/*``; only
    ``sequences`` if given, else every sequence with a velodyne folder; its labels, if any, are
    never read) or a loose folder of ``.bin``/``.pcd``/``.ply`` files (staged as sequence
    :data:`LOOSE_SEQUENCE`, frame = file stem). Raises :class:`DatasetFileError` naming the
    folder when it is missing, holds no scans, or two files share a stem.
    """
    root, out_root = Path(root), Path(out_root)
    if not root.is_dir():
        raise DatasetFileError(
            root,
            "adapt.root is not a folder (a folder of .bin/.pcd/.ply "
            "scans or a SemanticKITTI-layout root is expected)",
        )
    groups: dict[str, list[Path]] = {}
    if (root / "sequences").is_dir():
        names = (
            [f"{int(s):02d}" if str(s).isdigit() else str(s) for s in sequences]
            if sequences is not None
            else sorted(p.name for p in (root / "sequences").iterdir() if (p / "velodyne").is_dir())
        )
        for name in names:
            velodyne = root / "sequences" / name / "velodyne"
            if not velodyne.is_dir():
                raise DatasetFileError(velodyne, f"sequence {name} has no velodyne folder")
            groups[name] = _scan_files(velodyne)
    else:
        groups[LOOSE_SEQUENCE] = _scan_files(root)
    staged: list[StagedScan] = []
    for seq, files in groups.items():
        stems: dict[str, Path] = {}
        for f in files:
            if f.stem in stems:
                raise DatasetFileError(
                    f,
                    f"two scans share the name '{f.stem}' (also {stems[f.stem].name}): "
                    "rename one, frames are named by file stem",
                )
            stems[f.stem] = f
            target = out_root / "sequences" / seq / "velodyne" / f.name
            _link(f, target)
            staged.append(StagedScan(f, seq, f.stem, target))
    if not staged:
        raise DatasetFileError(root, f"no scans ({'/'.join(SCAN_SUFFIXES)}) found for adaptation")
    return staged


def pseudo_label_path(out_root: str | Path, sequence: str, frame: str) -> Path:
    """``out_root/sequences/<sequence>/labels/<frame>.label``, where the dataset looks."""
    return Path(out_root) / "sequences" / sequence / "labels" / f"{frame}.label"


def write_pseudo_labels(
    out_root: str | Path, sequence: str, frame: str, label: np.ndarray, label_map: LabelMap
) -> Path:
    """Write training ids ``label`` (P,) of every original point of a staged scan as raw ids
    (the ignored id -> raw 0, 'unlabeled'); returns the file written (atomically)."""
    path = pseudo_label_path(out_root, sequence, frame)
    write_labels(path, label_map.to_raw(np.asarray(label, dtype=np.int64)))
    return path
