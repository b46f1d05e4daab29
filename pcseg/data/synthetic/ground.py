"""The ground: a label raster painted from the streets, turned into a stepped height-field mesh.

Each raster cell (``CELL`` m square) holds a raw label (road 40, parking 44, sidewalk 48,
other-ground 49, terrain 72, ...), a material and a raised offset above the smooth height field
(sidewalks and medians sit on a curb, 0.12-0.15 m). Cells become two triangles each and every
step between neighbouring cells becomes a vertical face: the curbs, labelled like the higher side.
Painting uses priorities so that at a crossing the road of one street wins over the sidewalk of
the other. Lane markings are too thin for the raster; :func:`lane_marking` classifies road hits
analytically in street coordinates instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pcseg.data.synthetic.materials import MATERIAL_ID
from pcseg.data.synthetic.mesh import MeshBuilder
from pcseg.data.synthetic.streets import HeightField, Street

CELL = 0.5  # raster resolution (m)
CURB = 0.14  # sidewalk height above the road (m)
SMOOTH = 0.03  # neighbouring cells closer in offset than this join smoothly, without a step


@dataclass(frozen=True)
class GroundKind:
    """How one ground class is painted: raw id, offset above the height field, material, rank."""

    label: int
    offset: float
    material: str
    priority: int


ROAD = GroundKind(40, 0.0, "asphalt", 7)
MEDIAN = GroundKind(49, CURB, "concrete", 6)
GREEN_MEDIAN = GroundKind(72, CURB, "grass", 6)
PARKING = GroundKind(44, 0.0, "paving", 5)
SIDEWALK = GroundKind(48, CURB, "paving", 4)
LAWN = GroundKind(72, CURB - 0.04, "grass", 3)
YARD_GRASS = GroundKind(72, CURB + 0.02, "grass", 2)
YARD_PAVED = GroundKind(48, CURB, "paving", 2)
LOT = GroundKind(44, CURB, "paving", 2)  # parking lots in yards (painted after the streets)
BASE_GRASS = GroundKind(72, 0.2, "grass", 1)
BASE_OTHER = GroundKind(49, 0.18, "soil", 1)
WASTE = GroundKind(0, 0.15, "soil", 1)  # unlabeled ground (construction site, rubble)
GRAVEL = GroundKind(49, CURB, "soil", 3)  # other-ground: gravel drives, courtyards


@dataclass
class GroundRaster:
    """Label raster over [x0, x0 + nx*CELL) x [y0, y0 + ny*CELL). Arrays are (ny, nx)."""

    x0: float
    y0: float
    nx: int
    ny: int
    label: np.ndarray
    offset: np.ndarray
    material: np.ndarray
    priority: np.ndarray

    @classmethod
    def empty(cls, lo: np.ndarray, hi: np.ndarray, base: GroundKind) -> GroundRaster:
        """A raster covering the box lo..hi (2,), filled with ``base``."""
        nx = int(np.ceil((hi[0] - lo[0]) / CELL))
        ny = int(np.ceil((hi[1] - lo[1]) / CELL))
        shape = (ny, nx)
        return cls(
            float(lo[0]),
            float(lo[1]),
            nx,
            ny,
            np.full(shape, base.label, np.int32),
            np.full(shape, base.offset, np.float32),
            np.full(shape, MATERIAL_ID[base.material], np.int32),
            np.full(shape, base.priority, np.int8),
        )

    def centers(self) -> np.ndarray:
        """Cell centres (ny*nx, 2), row-major like the arrays."""
        xs = self.x0 + (np.arange(self.nx) + 0.5) * CELL
        ys = self.y0 + (np.arange(self.ny) + 0.5) * CELL
        gx, gy = np.meshgrid(xs, ys)
        return np.stack([gx.ravel(), gy.ravel()], 1)

    def paint(self, mask: np.ndarray, kind: GroundKind, force: bool = False) -> None:
        """Paint ``kind`` where ``mask`` (ny, nx) holds and the current priority is lower
        (or everywhere in the mask with ``force``)."""
        m = mask if force else mask & (self.priority < kind.priority)
        self.label[m] = kind.label
        self.offset[m] = kind.offset
        self.material[m] = MATERIAL_ID[kind.material]
        self.priority[m] = kind.priority

    def cell_index(self, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Row and column (N,) of points (N, 2), clipped to the raster."""
        j = np.clip(((xy[:, 0] - self.x0) / CELL).astype(np.int64), 0, self.nx - 1)
        i = np.clip(((xy[:, 1] - self.y0) / CELL).astype(np.int64), 0, self.ny - 1)
        return i, j

    def offset_at(self, xy: np.ndarray) -> np.ndarray:
        """Raised offset (N,) of the cells under points (N, 2)."""
        i, j = self.cell_index(np.atleast_2d(xy))
        return self.offset[i, j]

    def add_to(self, mb: MeshBuilder, height: HeightField) -> None:
        """Add the cell tops and the curb faces between cells to ``mb``."""
        xs = self.x0 + np.arange(self.nx + 1) * CELL
        ys = self.y0 + np.arange(self.ny + 1) * CELL
        gx, gy = np.meshgrid(xs, ys)
        hz = height(np.stack([gx.ravel(), gy.ravel()], 1)).reshape(gx.shape)
        corners = [(0, 0), (0, 1), (1, 0), (1, 1)]  # (di, dj)
        v = np.stack(
            [
                np.stack(
                    [
                        gx[di : di + self.ny, dj : dj + self.nx],
                        gy[di : di + self.ny, dj : dj + self.nx],
                        hz[di : di + self.ny, dj : dj + self.nx] + self.corner_offset(di, dj),
                    ],
                    -1,
                )
                for di, dj in corners
            ],
            2,
        ).reshape(-1, 3)
        base = np.arange(self.ny * self.nx)[:, None] * 4
        tris = np.concatenate([base + np.array([0, 1, 2]), base + np.array([1, 3, 2])])
        lab = np.tile(self.label.ravel(), 2)
        mat = np.tile(self.material.ravel(), 2)
        mb.add_arrays(v, tris, lab, mat)
        self._add_steps(mb, gx, gy, hz)

    def corner_offset(self, di: int, dj: int) -> np.ndarray:
        """Offset (ny, nx) of each cell's corner (di, dj) in {0, 1}^2: the mean offset of the
        cells around that grid node within :data:`SMOOTH` of the cell's own. Gentle changes
        (the road's crown, a lawn meeting a sidewalk) become a continuous surface; curbs stay
        steps. Per-cell tops made every 1 cm change a staircase whose risers, hit at grazing
        incidence, scattered the road's scan rings (road planarity 0.18 vs real 0.01)."""
        off = self.offset.astype(np.float64)
        pad = np.pad(off, 1, constant_values=np.nan)
        total = np.zeros_like(off)
        count = np.zeros_like(off)
        for a in (0, 1):
            for b in (0, 1):
                # cell sharing node (i + di, j + dj): (i + di - 1 + a, j + dj - 1 + b)
                nb = pad[di + a : di + a + self.ny, dj + b : dj + b + self.nx]
                ok = np.abs(nb - off) < SMOOTH  # NaN (outside) compares False
                total += np.where(ok, nb, 0.0)
                count += ok
        return total / count

    def _add_steps(self, mb: MeshBuilder, gx: np.ndarray, gy: np.ndarray, hz: np.ndarray) -> None:
        off = self.offset
        for axis in (1, 0):  # steps between x-neighbours, then y-neighbours
            a = off[:, :-1] if axis == 1 else off[:-1, :]
            b = off[:, 1:] if axis == 1 else off[1:, :]
            i, j = np.nonzero(np.abs(a - b) >= SMOOTH)
            if len(i) == 0:
                continue
            hi_first = a[i, j] > b[i, j]
            hi_i = np.where(hi_first, i, i + (axis == 0))
            hi_j = np.where(hi_first, j, j + (axis == 1))
            if axis == 1:  # shared edge x = xs[j+1], from ys[i] to ys[i+1]
                p0 = (i, j + 1)
                p1 = (i + 1, j + 1)
            else:  # shared edge y = ys[i+1], from xs[j] to xs[j+1]
                p0 = (i + 1, j)
                p1 = (i + 1, j + 1)
            lo = np.minimum(a[i, j], b[i, j])
            hi = np.maximum(a[i, j], b[i, j])
            pts = []
            for (pi, pj), z in ((p0, lo), (p1, lo), (p0, hi), (p1, hi)):
                pts.append(np.stack([gx[pi, pj], gy[pi, pj], hz[pi, pj] + z], -1))
            v = np.stack(pts, 1).reshape(-1, 3)
            base = np.arange(len(i))[:, None] * 4
            tris = np.concatenate([base + np.array([0, 1, 2]), base + np.array([1, 3, 2])])
            lab = np.tile(self.label[hi_i, hi_j], 2)
            mat = np.tile(self.material[hi_i, hi_j], 2)
            mb.add_arrays(v, tris, lab, mat)


def paint_street(
    raster: GroundRaster, street: Street, yard: tuple[GroundKind, GroundKind], centers: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Paint a street's bands into ``raster``. ``yard`` = ground kind of the left/right front
    yards. Returns the cells' street coordinates s, d and the inside mask (ny*nx,) each."""
    s, d, inside = street.local(centers)
    shape = (raster.ny, raster.nx)
    for side, sign in ((0, 1.0), (1, -1.0)):
        e = street.edges(side)
        dd = d * sign
        mine = inside & (dd >= 0)
        median = GREEN_MEDIAN if street.green_median else MEDIAN
        bands = [median if street.median > 0 else ROAD, ROAD, PARKING, LAWN, SIDEWALK, yard[side]]
        for k, kind in enumerate(bands):
            lo = e[k - 1] if k else 0.0
            if e[k] - lo <= 1e-6:
                continue
            m = mine & (dd >= lo) & (dd < e[k])
            if kind is PARKING:  # parking lanes stop short of crossings
                m &= ~gap_mask(street, s, 6.0)
            raster.paint(m.reshape(shape), kind)
    # crowned road: 2 % cross-fall from the centre to the gutters
    road = (inside & (np.abs(d) < street.half_road)).reshape(shape) & (raster.label == ROAD.label)
    raster.offset[road] = -0.02 * np.maximum(np.abs(d.reshape(shape)[road]) - street.median, 0)
    return s, d, inside


def gap_mask(street: Street, s: np.ndarray, margin: float) -> np.ndarray:
    """Mask (N,) of arc lengths ``s`` within ``margin`` of a crossing street."""
    m = np.zeros(len(s), bool)
    for a, b in street.gaps:
        m |= (s >= a - margin) & (s <= b + margin)
    return m


def lane_marking(street: Street, s: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Mask (N,) of road points (street coordinates s, d) that lie on painted markings:
    dashed centre line (no median), dashed lane dividers, solid edge lines and zebra crossings
    before each crossing street. Lines are 0.12 m wide, dashes 3 m every 12 m."""
    half = 0.06
    dash = np.mod(s, 12.0) < 3.0
    mark = np.zeros(len(s), bool)
    ad = np.abs(d)
    if street.median <= 0:
        mark |= (ad < half) & dash
    for k in range(1, street.lanes):
        mark |= (np.abs(ad - street.median - k * street.lane_w) < half) & dash
    if street.edge_lines:  # only along sides without a parking lane
        edge = street.half_road - 0.3
        no_parking = np.where(d > 0, street.parking[0] == 0, street.parking[1] == 0)
        mark |= (np.abs(ad - edge) < half) & no_parking
    for a, _ in street.gaps:  # zebra crossing 1.5-4.5 m before each crossing
        near = (s > a - 4.5) & (s < a - 1.5)
        mark |= near & (ad < street.half_road - 0.5) & (np.mod(d, 1.0) < 0.5)
    return mark
