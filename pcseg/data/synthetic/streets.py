"""Street geometry: centrelines with cross-sections, and the ground height field.

A :class:`Street` is a centreline densely sampled every :data:`STEP` metres (straight, or with a
circular bend) plus a cross-section: optional median, driving lanes, parking lanes, a grass
verge ("lawn"), the sidewalk and a front yard up to the building line, each per side. Objects are
placed in street coordinates ``(s, d)`` (arc length along the centreline, signed lateral offset,
positive to the left of the driving direction) and converted to the world with :meth:`Street.xy`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.spatial import cKDTree

STEP = 0.5  # centreline sampling (m)


def centerline(
    origin: tuple[float, float],
    yaw: float,
    s_min: float,
    s_max: float,
    bend_at: float | None = None,
    radius: float = 30.0,
    angle: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sample a centreline: straight, or straight-arc-straight with a bend starting at
    ``bend_at`` (arc length) of ``radius`` turning by ``angle`` radians (positive = left).

    Returns s (P,), xy (P, 2) and heading (P,), with s=0 at ``origin``.
    """
    s = np.arange(s_min, s_max + STEP / 2, STEP)
    curvature = np.zeros_like(s)
    if bend_at is not None and angle != 0.0:
        arc_len = abs(angle) * radius
        curvature[(s >= bend_at) & (s < bend_at + arc_len)] = np.sign(angle) / radius
    heading = np.empty_like(s)
    i0 = int(np.argmin(np.abs(s)))
    heading[i0] = yaw
    # integrate heading forwards and backwards from s=0
    heading[i0 + 1 :] = yaw + np.cumsum(curvature[i0:-1] * STEP)
    heading[:i0] = yaw - np.cumsum((curvature[:i0] * STEP)[::-1])[::-1]
    xy = np.zeros((len(s), 2))
    xy[i0] = origin
    steps = np.stack([np.cos(heading), np.sin(heading)], 1) * STEP
    xy[i0 + 1 :] = origin + np.cumsum((steps[i0:-1] + steps[i0 + 1 :]) / 2, axis=0)
    back = np.cumsum(((steps[:i0] + steps[1 : i0 + 1]) / 2)[::-1], axis=0)[::-1]
    xy[:i0] = origin - back
    return s, xy, heading


@dataclass
class Street:
    """A street: centreline samples and a per-side cross-section (index 0 = left, 1 = right).

    s (P,), xy (P, 2), heading (P,) from :func:`centerline`. Widths in metres.
    """

    s: np.ndarray
    xy: np.ndarray
    heading: np.ndarray
    lanes: int
    lane_w: float
    median: float = 0.0  # half width of a raised median (0 = none, painted centre line)
    parking: tuple[float, float] = (0.0, 0.0)
    lawn: tuple[float, float] = (0.0, 0.0)
    sidewalk: tuple[float, float] = (3.0, 3.0)
    setback: tuple[float, float] = (0.0, 0.0)
    gaps: list[tuple[float, float]] = field(default_factory=list)  # s-ranges of crossings
    green_median: bool = False  # planted (terrain) instead of paved (other-ground) median
    edge_lines: bool = True  # painted road edge lines where there is no parking lane
    _tree: cKDTree | None = field(default=None, repr=False)

    @property
    def half_road(self) -> float:
        """Distance from the centreline to the road edge (median + lanes)."""
        return self.median + self.lanes * self.lane_w

    def edges(self, side: int) -> np.ndarray:
        """Outer edges (|d|) of median, road, parking, lawn, sidewalk, yard on ``side``."""
        widths = [
            self.median,
            self.lanes * self.lane_w,
            self.parking[side],
            self.lawn[side],
            self.sidewalk[side],
            self.setback[side],
        ]
        return np.cumsum(widths)

    def frontage(self, side: int) -> float:
        """|d| of the building line on ``side``."""
        return float(self.edges(side)[-1])

    def in_gap(self, s: float, margin: float = 0.0) -> bool:
        """True if arc length ``s`` lies within a crossing street (plus ``margin``)."""
        return any(a - margin <= s <= b + margin for a, b in self.gaps)

    def xy_at(self, s: np.ndarray | float, d: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        """World (x, y) and heading at street coordinates (s, d); arrays broadcast."""
        s = np.asarray(s, dtype=np.float64)
        d = np.asarray(d, dtype=np.float64)
        x = np.interp(s, self.s, self.xy[:, 0])
        y = np.interp(s, self.s, self.xy[:, 1])
        h = np.interp(s, self.s, np.unwrap(self.heading))
        return np.stack([x - np.sin(h) * d, y + np.cos(h) * d], -1), h

    def local(self, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Street coordinates of world points (N, 2): s (N,), d (N,) and an ``inside`` mask
        (False where the point projects beyond either end of the centreline)."""
        if self._tree is None:
            self._tree = cKDTree(self.xy)
        _, idx = self._tree.query(pts, workers=1)
        rel = pts - self.xy[idx]
        t = np.stack([np.cos(self.heading[idx]), np.sin(self.heading[idx])], 1)
        along = (rel * t).sum(1)
        d = rel[:, 0] * -t[:, 1] + rel[:, 1] * t[:, 0]
        inside = ((idx > 0) | (along >= 0)) & ((idx < len(self.s) - 1) | (along <= 0))
        return self.s[idx] + along, d, inside


@dataclass(frozen=True)
class HeightField:
    """Smooth ground height h(x, y) = sum of a few long plane waves (m).

    Real streets are not flat: gentle slopes and crowns spread the z of ground points (real
    z 1 % = -2.4 m with the road 1.73 m below the sensor). k (W, 2) wave vectors, amp (W,),
    phase (W,).
    """

    k: np.ndarray
    amp: np.ndarray
    phase: np.ndarray

    @classmethod
    def random(cls, rng: np.random.Generator, relief: float) -> HeightField:
        """Three waves with wavelengths 80-300 m; ``relief`` scales the amplitudes (m)."""
        n = 3
        wavelength = rng.uniform(80, 300, n)
        ang = rng.uniform(0, 2 * np.pi, n)
        k = np.stack([np.cos(ang), np.sin(ang)], 1) * (2 * np.pi / wavelength)[:, None]
        return cls(k, rng.uniform(0.3, 1.0, n) * relief, rng.uniform(0, 2 * np.pi, n))

    def __call__(self, xy: np.ndarray) -> np.ndarray:
        """Heights (N,) at points (N, 2)."""
        return (np.sin(np.asarray(xy) @ self.k.T + self.phase) * self.amp).sum(-1)

    def gradient(self, xy: np.ndarray) -> np.ndarray:
        """Gradient (N, 2) at points (N, 2)."""
        c = np.cos(np.asarray(xy) @ self.k.T + self.phase) * self.amp
        return c @ self.k
