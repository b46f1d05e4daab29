"""SemanticKITTI label definitions as lookup tables.

The label map is data (``configs/labels/semantic-kitti.yaml``); this module loads it once into
numpy lookup tables so remapping a scan is one indexing operation:

- ``learning_lut[raw_id] -> train id`` (0..19, 0 = ignored/unlabeled), ``-1`` for raw ids the
  yaml does not define (so unknown ids can be detected, never silently mapped);
- ``inverse_lut[train_id] -> raw id`` for exporting predictions;
- ``train_colors_rgb[train_id]`` (0..1 floats) and ``raw_colors_rgb`` for visualisation
  (the yaml stores BGR, as the official tool does);
- ``class_names[train_id]`` and ``ignore`` flags.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import yaml

from pcseg import PROJECT_ROOT
from pcseg.data.errors import LabelConfigError, LabelFormatError

DEFAULT_LABEL_CONFIG = PROJECT_ROOT / "configs" / "labels" / "semantic-kitti.yaml"
_REQUIRED_KEYS = ("labels", "color_map", "learning_map", "learning_map_inv", "learning_ignore")


@dataclass(frozen=True)
class LabelMap:
    """Lookup tables built from one label yaml. Build with :func:`load_label_map`."""

    path: Path
    raw_names: dict[int, str]
    learning_map: dict[int, int]
    learning_map_inv: dict[int, int]
    learning_ignore: dict[int, bool]
    color_map_bgr: dict[int, tuple[int, int, int]]
    content: dict[int, float]
    split: dict[str, list[int]]
    learning_lut: np.ndarray = field(repr=False)  # (max_raw_id + 1,) int64, -1 = undefined id
    inverse_lut: np.ndarray = field(repr=False)  # (num_classes,) int64

    @property
    def num_classes(self) -> int:
        """Number of training ids including 0 (20 for SemanticKITTI)."""
        return len(self.learning_map_inv)

    @property
    def ignore_index(self) -> int:
        """The training id that losses and metrics ignore (SemanticKITTI: 0, 'unlabeled')."""
        ignored = [k for k, v in self.learning_ignore.items() if v]
        return ignored[0] if ignored else -100

    def class_shares(self) -> np.ndarray:
        """(num_classes,) float64: each training class's share of the labelled points, from the
        yaml's ``content`` (raw-id frequencies over the whole dataset) folded through
        ``learning_map``; the ignored class gets 0 and the rest sums to 1 (all zeros when the
        yaml has no ``content``). A prior for what real scans hold, e.g. to cap pseudo-labels."""
        shares = np.zeros(self.num_classes)
        for raw, ratio in self.content.items():
            train = self.learning_map.get(raw)
            if train is not None and train != self.ignore_index:
                shares[train] += ratio
        total = shares.sum()
        return shares / total if total > 0 else shares

    @property
    def class_names(self) -> list[str]:
        """Name of each training id, index = train id (0 is 'unlabeled')."""
        return [self.raw_names[self.learning_map_inv[c]] for c in range(self.num_classes)]

    @property
    def train_colors_rgb(self) -> np.ndarray:
        """(num_classes, 3) float32 in [0, 1], RGB colour of each training id."""
        bgr = np.array(
            [self.color_map_bgr[self.learning_map_inv[c]] for c in range(self.num_classes)],
            dtype=np.float32,
        )
        return bgr[:, ::-1] / 255.0

    def known_raw_ids(self) -> np.ndarray:
        """Sorted raw ids the yaml defines."""
        return np.array(sorted(self.learning_map), dtype=np.int64)

    def to_train(self, semantic: np.ndarray, path: str | Path = "<labels>") -> np.ndarray:
        """Map raw semantic ids (N,) to training ids (N,) int64.

        Raises :class:`LabelFormatError` naming ``path`` if any id is not in the yaml: an
        unknown id usually means the wrong label file or a corrupt one, and silently mapping
        it to 'unlabeled' would hide that.
        """
        semantic = np.asarray(semantic).astype(np.int64, copy=False)
        lut = self.learning_lut
        in_range = (semantic >= 0) & (semantic < lut.shape[0])
        train = np.full(semantic.shape, -1, dtype=np.int64)
        train[in_range] = lut[semantic[in_range]]
        bad = train < 0
        if bad.any():
            ids, counts = np.unique(semantic[bad], return_counts=True)
            listed = ", ".join(
                f"{i} ({c} points)" for i, c in zip(ids[:8], counts[:8], strict=True)
            )
            more = f" and {len(ids) - 8} more" if len(ids) > 8 else ""
            raise LabelFormatError(
                path,
                f"unknown raw label ids not in the label map: {listed}{more}",
                kind="unknown_ids",
            )
        return train

    def to_raw(self, train: np.ndarray) -> np.ndarray:
        """Map training ids (N,) to raw SemanticKITTI ids (N,) uint32, for export."""
        train = np.asarray(train, dtype=np.int64)
        if train.size and (train.min() < 0 or train.max() >= self.num_classes):
            raise ValueError(
                f"training ids must lie in [0, {self.num_classes}), got "
                f"[{train.min()}, {train.max()}]"
            )
        return self.inverse_lut[train].astype(np.uint32)


def _int_keys(d: dict, key: str, path: Path) -> dict[int, object]:
    try:
        return {int(k): v for k, v in d.items()}
    except (TypeError, ValueError) as e:
        raise LabelConfigError(path, f"'{key}' must map integer ids: {e}") from e


def _build(path: Path) -> LabelMap:
    try:
        with open(path) as f:
            cfg = yaml.safe_load(f)
    except OSError as e:
        raise LabelConfigError(path, f"cannot read label config: {e.strerror}") from e
    if not isinstance(cfg, dict):
        raise LabelConfigError(path, "label config is not a yaml mapping")
    missing = [k for k in _REQUIRED_KEYS if k not in cfg]
    if missing:
        raise LabelConfigError(path, f"missing keys: {', '.join(missing)}")

    raw_names = {k: str(v) for k, v in _int_keys(cfg["labels"], "labels", path).items()}
    learning_map = {
        k: int(v) for k, v in _int_keys(cfg["learning_map"], "learning_map", path).items()
    }
    inv = {
        k: int(v) for k, v in _int_keys(cfg["learning_map_inv"], "learning_map_inv", path).items()
    }
    ignore = {
        k: bool(v) for k, v in _int_keys(cfg["learning_ignore"], "learning_ignore", path).items()
    }
    colors = {
        k: tuple(int(c) for c in v)
        for k, v in _int_keys(cfg["color_map"], "color_map", path).items()
    }
    content = {k: float(v) for k, v in _int_keys(cfg.get("content", {}), "content", path).items()}
    split = {str(k): [int(s) for s in v] for k, v in (cfg.get("split") or {}).items()}

    num_classes = len(inv)
    if sorted(inv) != list(range(num_classes)):
        raise LabelConfigError(path, "learning_map_inv keys must be 0..C-1 without gaps")
    bad_targets = sorted({v for v in learning_map.values() if not 0 <= v < num_classes})
    if bad_targets:
        raise LabelConfigError(
            path, f"learning_map targets outside 0..{num_classes - 1}: {bad_targets}"
        )
    undefined = sorted(set(learning_map) - set(raw_names))
    if undefined:
        raise LabelConfigError(path, f"learning_map has raw ids without a name: {undefined}")
    no_color = sorted(set(raw_names) - set(colors))
    if no_color:
        raise LabelConfigError(path, f"raw ids without a color_map entry: {no_color}")

    lut = np.full(max(learning_map) + 1, -1, dtype=np.int64)
    for raw, train in learning_map.items():
        lut[raw] = train
    inverse_lut = np.array([inv[c] for c in range(num_classes)], dtype=np.int64)
    return LabelMap(
        path=path,
        raw_names=raw_names,
        learning_map=learning_map,
        learning_map_inv=inv,
        learning_ignore=ignore,
        color_map_bgr=colors,
        content=content,
        split=split,
        learning_lut=lut,
        inverse_lut=inverse_lut,
    )


@lru_cache(maxsize=8)
def _cached(path: Path) -> LabelMap:
    return _build(path)


def load_label_map(path: str | Path | None = None) -> LabelMap:
    """Load (once per path, cached) the label yaml; default: the SemanticKITTI definition."""
    return _cached(Path(path or DEFAULT_LABEL_CONFIG).resolve())
