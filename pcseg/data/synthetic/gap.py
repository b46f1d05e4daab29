"""The domain gap between simulated and real scans, measured class by class.

Per point of a scan (:func:`point_features`): range, height above the local ground, remission,
elevation, the remission texture (standard deviation of remission over its K nearest
neighbours: speckle on a sidewalk, grass against soil on a lawn) and the local shape of those
neighbours (verticality of the normal; linearity, planarity and scattering of the covariance
eigenvalues). Per object: the number of points of each instance (ids from the label's high 16
bits). Per class: its share of the labelled points. :func:`compare` turns two sets of scans
into one row per (class, statistic): both medians and the Wasserstein-1 distance normalised by
the real distribution's spread, so statistics in metres, in [0, 1] and in points rank on one
scale (:func:`rank`).

Why these statistics: a segmentation network trained on simulated scans learns exactly these
cues (how high above the ground a class sits, how far, how bright, how flat or scattered its
neighbourhood is, how many points an object has); where they differ, it fails on real scans.

Everything is subsampled (``max_points`` per scan) so a scan takes well under a second.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

from pcseg.data.io import read_labels, read_scan
from pcseg.data.labels import LabelMap

#: per-point statistics (name -> unit, floor of the normalising spread)
POINT_STATS: dict[str, tuple[str, float]] = {
    "height": ("m", 0.1),
    "range": ("m", 1.0),
    "remission": ("", 0.02),
    "elevation": ("deg", 0.5),
    "texture": ("", 0.01),
    "verticality": ("", 0.05),
    "linearity": ("", 0.05),
    "planarity": ("", 0.05),
    "scattering": ("", 0.02),
}
#: per-object statistic: points per instance (log10, so a factor of 10 is one unit)
OBJECT_STAT = "log10_points_per_object"
#: classes with instances in SemanticKITTI (training names)
THING_CLASSES = (
    "car",
    "bicycle",
    "motorcycle",
    "truck",
    "other-vehicle",
    "person",
    "bicyclist",
    "motorcyclist",
)
QUANTILES = np.linspace(0.005, 0.995, 100)


class GapInputError(ValueError):
    """Bad input to the gap statistics (no scans, mismatched array lengths)."""


def local_ground(xyz: np.ndarray, cell: float = 2.0, coarse: float = 10.0) -> np.ndarray:
    """Height of the local ground (N,) under each point of ``xyz`` (N, 3).

    The ground of a ``cell`` m xy square is the z of its third-lowest point (robust to the
    rare multipath returns far below the road); a square seen only on a wall or a crown (no
    ground visible) gets at most the ``coarse`` square's ground + 1 m.
    """
    if len(xyz) == 0:
        return np.zeros(0)

    def per_cell(size: float) -> np.ndarray:
        key = np.floor(xyz[:, :2] / size).astype(np.int64)
        _, inv = np.unique(key, axis=0, return_inverse=True)
        inv = inv.ravel()
        order = np.lexsort((xyz[:, 2], inv))
        starts = np.flatnonzero(np.r_[True, np.diff(inv[order]) != 0])
        counts = np.diff(np.r_[starts, len(order)])
        pick = starts + np.minimum(counts - 1, 2)
        return xyz[order[pick], 2][inv]

    return np.minimum(per_cell(cell), per_cell(coarse) + 1.0)


def shape_features(xyz: np.ndarray, query: np.ndarray, k: int = 16) -> dict[str, np.ndarray]:
    """Local shape of the ``k`` nearest neighbours in ``xyz`` (N, 3) of each ``query`` (M, 3).

    Eigenvalues l1 >= l2 >= l3 of the neighbourhood covariance give linearity (l1-l2)/l1,
    planarity (l2-l3)/l1 and scattering l3/l1 (they sum to 1); verticality is 1 - |n_z| of the
    normal (the smallest eigenvector): 0 on the road, 1 on a wall. Each (M,) float64.
    """
    return _shape_of(xyz, _neighbours(xyz, query, k))


def _neighbours(xyz: np.ndarray, query: np.ndarray, k: int) -> np.ndarray:
    """Indices (M, k') into ``xyz`` (N, 3) of the k' = min(k, N) nearest points of each query."""
    k = min(k, len(xyz))
    _, idx = cKDTree(xyz).query(query, k=k)
    return idx.reshape(len(query), k)


def _shape_of(xyz: np.ndarray, idx: np.ndarray) -> dict[str, np.ndarray]:
    """:func:`shape_features` of the neighbourhoods ``idx`` (M, k) into ``xyz`` (N, 3)."""
    k = idx.shape[1]
    nb = xyz[idx]
    nb = nb - nb.mean(1, keepdims=True)
    cov = np.einsum("mki,mkj->mij", nb, nb) / k
    w, v = np.linalg.eigh(cov)  # ascending
    w = np.maximum(w, 0.0)
    l1 = np.maximum(w[:, 2], 1e-12)
    return {
        "linearity": (w[:, 2] - w[:, 1]) / l1,
        "planarity": (w[:, 1] - w[:, 0]) / l1,
        "scattering": w[:, 0] / l1,
        "verticality": 1.0 - np.abs(v[:, 2, 0]),
    }


def point_features(
    xyz: np.ndarray,
    remission: np.ndarray,
    rng: np.random.Generator,
    max_points: int = 20000,
    k: int = 16,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Per-point statistics of a subsample of a scan.

    xyz: (N, 3) sensor frame; remission: (N,). Returns the indices (S,) of the subsampled
    points (S = min(N, max_points)) and a dict of :data:`POINT_STATS` arrays (S,) each. The
    ground and the neighbourhoods use every point; only the queries are subsampled.
    """
    xyz = np.asarray(xyz, np.float64)
    if len(xyz) != len(remission):
        raise GapInputError(f"{len(xyz)} points but {len(remission)} remissions")
    sel = np.arange(len(xyz))
    if len(xyz) > max_points:
        sel = np.sort(rng.choice(len(xyz), max_points, replace=False))
    r = np.linalg.norm(xyz, axis=1)
    ground = local_ground(xyz)
    remission = np.asarray(remission, np.float64)
    idx = _neighbours(xyz, xyz[sel], k)
    out = {
        "height": (xyz[:, 2] - ground)[sel],
        "range": r[sel],
        "remission": remission[sel],
        "elevation": np.degrees(np.arcsin(np.clip(xyz[sel, 2] / np.maximum(r[sel], 1e-6), -1, 1))),
    }
    out["texture"] = remission[idx].std(1)
    out.update(_shape_of(xyz, idx))
    return sel, out


@dataclass
class ScanSet:
    """Statistics pooled over several scans, per class (training ids; -1 = every point).

    ``values[(cls, stat)]``: 1-D arrays; ``objects[cls]``: points per instance;
    ``counts[cls]``: labelled points (all points, before subsampling).
    """

    name: str
    values: dict[tuple[int, str], list[np.ndarray]] = field(default_factory=dict)
    objects: dict[int, list[int]] = field(default_factory=dict)
    counts: dict[int, int] = field(default_factory=dict)
    scans: int = 0
    points: int = 0

    def add(self, cls: int, stat: str, v: np.ndarray) -> None:
        if len(v):
            self.values.setdefault((cls, stat), []).append(np.asarray(v, np.float64))

    def get(self, cls: int, stat: str) -> np.ndarray:
        return np.concatenate(self.values.get((cls, stat), [np.zeros(0)]))

    def share(self, cls: int) -> float:
        """Fraction of the labelled (non-ignored) points that belong to ``cls``."""
        total = sum(v for c, v in self.counts.items() if c > 0)
        return self.counts.get(cls, 0) / total if total else 0.0


def add_scan(
    out: ScanSet,
    xyz: np.ndarray,
    remission: np.ndarray,
    train: np.ndarray | None,
    instance: np.ndarray | None,
    rng: np.random.Generator,
    max_points: int = 20000,
) -> None:
    """Add one scan to ``out``: xyz (N, 3), remission (N,), training labels (N,) or None,
    instance ids (N,) or None."""
    sel, feats = point_features(xyz, remission, rng, max_points)
    out.scans += 1
    out.points += len(xyz)
    for stat, v in feats.items():
        out.add(-1, stat, v)
    if train is None:
        return
    if len(train) != len(xyz):
        raise GapInputError(f"{len(xyz)} points but {len(train)} labels")
    for cls, n in zip(*np.unique(train, return_counts=True), strict=True):
        out.counts[int(cls)] = out.counts.get(int(cls), 0) + int(n)
    sub = train[sel]
    for cls in np.unique(sub):
        if cls <= 0:
            continue
        m = sub == cls
        for stat, v in feats.items():
            out.add(int(cls), stat, v[m])
    if instance is not None:
        keep = (instance > 0) & (train > 0)
        pairs, n = np.unique(np.stack([train[keep], instance[keep]], 1), axis=0, return_counts=True)
        for (cls, _), cnt in zip(pairs, n, strict=True):
            out.objects.setdefault(int(cls), []).append(int(cnt))


def load_scan_set(
    name: str,
    scans: Sequence[Path],
    label_map: LabelMap | None,
    seed: int = 0,
    max_points: int = 20000,
) -> ScanSet:
    """Read ``.bin`` scans (labels beside them in ``../labels/X.label`` when ``label_map`` is
    given and the file exists) into a :class:`ScanSet`."""
    if not scans:
        raise GapInputError(f"{name}: no scans given")
    rng = np.random.default_rng(seed)
    out = ScanSet(name)
    for path in scans:
        xyz, rem = read_scan(path)
        train = instance = None
        lab = Path(path).parent.parent / "labels" / (Path(path).stem + ".label")
        if label_map is not None and lab.is_file():
            sem, instance = read_labels(lab, num_points=len(xyz))
            train = label_map.to_train(sem, lab)
        add_scan(out, xyz, rem, train, instance, rng, max_points)
    return out


def content_shares(label_map: LabelMap) -> dict[int, float]:
    """Training id -> share of the labelled points over the whole of SemanticKITTI, from the
    label yaml's ``content`` (raw-id frequencies; :meth:`LabelMap.class_shares`): the class
    proportions a simulator should approach. Three frames of one street cannot say that (half
    the classes are absent)."""
    shares = label_map.class_shares()
    return {c: float(v) for c, v in enumerate(shares) if c > 0 and v > 0}


def wasserstein1(a: np.ndarray, b: np.ndarray) -> float:
    """Wasserstein-1 distance between two 1-D samples, from 100 quantiles (fast, and within a
    percent of the exact value for samples of thousands)."""
    if len(a) == 0 or len(b) == 0:
        return float("nan")
    return float(np.mean(np.abs(np.quantile(a, QUANTILES) - np.quantile(b, QUANTILES))))


def spread(v: np.ndarray, floor: float) -> float:
    """Normalising scale of a sample: its interquartile range, at least ``floor``."""
    if len(v) == 0:
        return floor
    q25, q75 = np.percentile(v, [25, 75])
    return float(max(q75 - q25, floor))


@dataclass(frozen=True)
class Gap:
    """One (class, statistic) comparison. ``distance``: W1 / real IQR (share: |log2 ratio|)."""

    cls: str
    stat: str
    sim: float  # median (share: fraction)
    real: float
    distance: float
    n_sim: int
    n_real: int


def compare(
    sim: ScanSet,
    real: ScanSet,
    class_names: Sequence[str],
    min_points: int = 30,
    reference_shares: dict[int, float] | None = None,
) -> list[Gap]:
    """All (class, statistic) gaps between ``sim`` and ``real``.

    Classes are training ids 1..C-1 (``class_names[c]``) plus -1 ("all points"); a pair is
    compared only when both sides have ``min_points`` samples (objects: 3 instances). The
    share gap is |log2(sim share / real share)| (shares floored at 1e-4), so a class with half
    or twice the real share scores 1; ``reference_shares`` (e.g. :func:`content_shares`)
    replaces the real scans' own shares.
    """
    gaps: list[Gap] = []
    classes = [-1, *range(1, len(class_names))]
    for c in classes:
        name = "all points" if c < 0 else class_names[c]
        if c > 0 and (real.counts or sim.counts or reference_shares):
            s = sim.share(c)
            r = reference_shares.get(c, 0.0) if reference_shares is not None else real.share(c)
            if r > 0 or s > 0:
                d = abs(np.log2(max(s, 1e-4) / max(r, 1e-4)))
                gaps.append(
                    Gap(name, "share", s, r, float(d), sim.counts.get(c, 0), real.counts.get(c, 0))
                )
        for stat, (_, floor) in POINT_STATS.items():
            a, b = sim.get(c, stat), real.get(c, stat)
            if len(a) < min_points or len(b) < min_points:
                continue
            d = wasserstein1(a, b) / spread(b, floor)
            gaps.append(
                Gap(name, stat, float(np.median(a)), float(np.median(b)), d, len(a), len(b))
            )
        if c > 0:
            a = np.log10(np.asarray(sim.objects.get(c, []), np.float64))
            b = np.log10(np.asarray(real.objects.get(c, []), np.float64))
            if len(a) >= 3 and len(b) >= 3:
                d = wasserstein1(a, b) / spread(b, 0.3)
                gaps.append(
                    Gap(
                        name,
                        OBJECT_STAT,
                        float(10 ** np.median(a)),
                        float(10 ** np.median(b)),
                        d,
                        len(a),
                        len(b),
                    )
                )
    return gaps


def rank(gaps: Iterable[Gap]) -> list[Gap]:
    """Gaps sorted largest first."""
    return sorted(gaps, key=lambda g: -g.distance if np.isfinite(g.distance) else 0.0)


def lookup(gaps: Iterable[Gap], cls: str, stat: str) -> Gap | None:
    """The gap of (``cls``, ``stat``), or None if it was not measured."""
    for g in gaps:
        if g.cls == cls and g.stat == stat:
            return g
    return None
