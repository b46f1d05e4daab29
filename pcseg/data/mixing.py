"""Mixing a simulated and a real scan into one training sample (domain adaptation).

Two published recipes, both on whole labelled clouds in the sensor frame:

- :func:`cosmix` (Saltori et al., "CoSMix: Compositional Semantic Mix for Domain Adaptation in
  3D LiDAR Segmentation", ECCV 2022): paste the points of some classes of one scan into the
  other. Pasting simulated objects (exact labels) into a real scan teaches the classes the
  real pseudo-labels miss, in real surroundings; pasting pseudo-labelled real points into a
  simulated scan shows real geometry beside exact labels. Rarer classes of the source scan are
  picked more often, so thin objects travel.
- :func:`lasermix` (Kong et al., "LaserMix for Semi-Supervised LiDAR Semantic Segmentation",
  CVPR 2023): split the inclination (elevation angle) range into bands and take alternate bands
  from each scan: a LiDAR's beams see the same kind of surface at the same elevation (road low,
  buildings and vegetation high), so the mix stays a plausible scene.

:class:`MixedDataset` draws the training samples of the adaptation stage from a simulated and a
pseudo-labelled real dataset, mixes them, augments each part independently and computes the
network's features after mixing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from pcseg.data.collate import SKIPPED_KEY
from pcseg.data.features import compute_features

__all__ = ["MIX_MODES", "Cloud", "MixedDataset", "cosmix", "inclination", "lasermix"]

MIX_MODES = ("cosmix", "lasermix", "none")


class Cloud(NamedTuple):
    """One labelled cloud: coord (P, 3) float32, remission (P,) float32, label (P,) int64."""

    coord: np.ndarray
    remission: np.ndarray
    label: np.ndarray

    def take(self, mask: np.ndarray) -> Cloud:
        return Cloud(self.coord[mask], self.remission[mask], self.label[mask])

    @staticmethod
    def cat(parts: Sequence[Cloud]) -> Cloud:
        return Cloud(*(np.concatenate(arrays) for arrays in zip(*parts, strict=True)))


def inclination(coord: np.ndarray) -> np.ndarray:
    """(P,) elevation angle (rad) of each point seen from the sensor at the origin."""
    return np.arctan2(coord[:, 2], np.linalg.norm(coord[:, :2], axis=1))


def lasermix(a: Cloud, b: Cloud, bands: int, a_first: bool = True) -> tuple[Cloud, np.ndarray]:
    """Alternate inclination bands of ``a`` and ``b``.

    The joint inclination range of both clouds is cut into ``bands`` equal bands; band k comes
    from ``a`` when k is even (``a_first``; odd otherwise) and from ``b`` else. Returns the mixed
    cloud (``a``'s kept points first, then ``b``'s) and (P_out,) bool, True where a point came
    from ``a``.
    """
    if bands < 1:
        raise ValueError(f"bands must be >= 1, got {bands}")
    ia, ib = inclination(a.coord), inclination(b.coord)
    lo = min(ia.min(initial=np.inf), ib.min(initial=np.inf))
    hi = max(ia.max(initial=-np.inf), ib.max(initial=-np.inf))
    edges = np.linspace(lo, hi, bands + 1)[1:-1]
    parity = 0 if a_first else 1
    keep_a = np.searchsorted(edges, ia, side="right") % 2 == parity
    keep_b = np.searchsorted(edges, ib, side="right") % 2 != parity
    mixed = Cloud.cat([a.take(keep_a), b.take(keep_b)])
    from_a = np.r_[np.ones(int(keep_a.sum()), bool), np.zeros(int(keep_b.sum()), bool)]
    return mixed, from_a


def cosmix(
    dst: Cloud,
    src: Cloud,
    rng: np.random.Generator,
    share: float = 0.5,
    ignore_index: int = 0,
) -> tuple[Cloud, np.ndarray]:
    """Paste every point of some classes of ``src`` into ``dst``.

    Of the classes present in ``src`` (``ignore_index`` excluded), ``ceil(share * n)`` are drawn
    without replacement, with probability proportional to ``1 / sqrt(points of the class)``
    (rare classes travel more often). Returns the mixed cloud (all of ``dst``, then the pasted
    points) and (P_out,) bool, True where a point came from ``src``.
    """
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"share must lie in [0, 1], got {share}")
    classes, counts = np.unique(src.label[src.label != ignore_index], return_counts=True)
    n = int(np.ceil(share * len(classes)))
    if n == 0:
        return dst, np.zeros(dst.label.shape[0], bool)
    weights = 1.0 / np.sqrt(counts)
    chosen = rng.choice(classes, size=n, replace=False, p=weights / weights.sum())
    paste = np.isin(src.label, chosen)
    mixed = Cloud.cat([dst, src.take(paste)])
    from_src = np.r_[np.zeros(dst.label.shape[0], bool), np.ones(int(paste.sum()), bool)]
    return mixed, from_src


def _cloud(item: dict[str, Any], remission_column: int = 3) -> Cloud:
    """A dataset item built with features ``(xyz, remission)`` as a :class:`Cloud`."""
    feat = item["feat"].numpy()
    return Cloud(
        item["coord"].numpy().astype(np.float32),
        feat[:, remission_column].astype(np.float32),
        item["label"].numpy().astype(np.int64),
    )


class MixedDataset(Dataset):
    """Training samples of the adaptation stage: simulated and pseudo-labelled real scans.

    ``sim`` and ``real`` must be datasets whose items carry ``coord`` (V, 3), ``feat`` (V, 4)
    built from the features ``(xyz, remission)`` and ``label`` (V,), without augmentation
    (:class:`~pcseg.data.semantickitti.SemanticKITTIDataset` does this). Sample i:

    1. its base is a real scan with probability ``real_fraction``, else a simulated one;
    2. with probability ``mix_prob`` (and ``mode`` not ``none``) a scan of the other domain is
       drawn and each is augmented on its own (``augment``, the training transform);
       ``cosmix`` pastes classes of the other scan into the base, ``lasermix`` interleaves
       inclination bands (2 to ``max_bands``);
    3. features ``features`` are computed from the mixed cloud.

    Items are those of the dataset (``coord``, ``feat``, ``label``, ``inverse`` = identity, as
    the mixed cloud has no original scan to map back to, ``meta``); a bad base scan passes its
    skip marker through, a bad partner is simply not mixed. ``length``: samples per epoch.
    Labels are read from disk on every access, so refreshed pseudo-label files are seen.
    """

    def __init__(
        self,
        sim: Dataset,
        real: Dataset,
        features: Sequence[str],
        length: int,
        augment: Any = None,
        mode: str = "cosmix",
        mix_prob: float = 0.5,
        real_fraction: float = 0.5,
        cosmix_share: float = 0.5,
        max_bands: int = 6,
        ignore_index: int = 0,
    ) -> None:
        if mode not in MIX_MODES:
            raise ValueError(f"mix mode must be one of {MIX_MODES}, got {mode!r}")
        for name, p in (("mix_prob", mix_prob), ("real_fraction", real_fraction)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {p}")
        if len(sim) == 0 or len(real) == 0:
            raise ValueError(f"need simulated and real scans, got {len(sim)} and {len(real)}")
        if length < 1:
            raise ValueError(f"length must be >= 1, got {length}")
        self.sim, self.real = sim, real
        self.features = tuple(features)
        self.length = int(length)
        self.augment = augment
        self.mode = mode
        self.mix_prob = float(mix_prob)
        self.real_fraction = float(real_fraction)
        self.cosmix_share = float(cosmix_share)
        self.max_bands = max(2, int(max_bands))
        self.ignore_index = ignore_index

    def __len__(self) -> int:
        return self.length

    def _augment(self, cloud: Cloud, rng: np.random.Generator) -> Cloud:
        if self.augment is None:
            return cloud
        if hasattr(self.augment, "scan"):
            coord, remission = self.augment.scan(cloud.coord, cloud.remission, rng)
        else:
            coord, remission = self.augment(cloud.coord, rng), cloud.remission
        return Cloud(np.asarray(coord, np.float32), np.asarray(remission, np.float32), cloud.label)

    def __getitem__(self, i: int) -> dict[str, Any]:
        rng = np.random.default_rng(int(torch.randint(0, 2**62, ()).item()))
        real_base = rng.random() < self.real_fraction
        base_ds, other_ds = (self.real, self.sim) if real_base else (self.sim, self.real)
        base_item = base_ds[int(rng.integers(len(base_ds)))]
        if SKIPPED_KEY in base_item:
            return base_item
        cloud = self._augment(_cloud(base_item), rng)
        meta = dict(base_item["meta"], domain="real" if real_base else "sim", mixed_with=None)
        if self.mode != "none" and rng.random() < self.mix_prob:
            other_item = other_ds[int(rng.integers(len(other_ds)))]
            if SKIPPED_KEY not in other_item:
                other = self._augment(_cloud(other_item), rng)
                if self.mode == "cosmix":
                    cloud, _ = cosmix(cloud, other, rng, self.cosmix_share, self.ignore_index)
                else:
                    bands = int(rng.integers(2, self.max_bands + 1))
                    cloud, _ = lasermix(cloud, other, bands, a_first=bool(rng.random() < 0.5))
                meta["mixed_with"] = other_item["meta"]["scan_path"]
        n = cloud.coord.shape[0]
        meta.update(num_points=n, label_path=None)
        return {
            "coord": torch.from_numpy(np.ascontiguousarray(cloud.coord)),
            "feat": torch.from_numpy(compute_features(cloud.coord, cloud.remission, self.features)),
            "label": torch.from_numpy(cloud.label),
            "inverse": torch.arange(n, dtype=torch.int64),
            "meta": meta,
        }
