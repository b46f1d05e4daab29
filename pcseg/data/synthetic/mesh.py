"""Triangle-mesh accumulation with per-triangle semantics, and the primitive shapes.

A scene is one big triangle soup: vertices (V, 3) float32 and triangles (T, 3) uint32, plus per
triangle a raw SemanticKITTI label, an instance id and a material id (T,) each. The ray caster
returns the index of the triangle it hit, so these per-triangle arrays give each LiDAR point its
label, instance and material with one indexing operation.

Primitives are deliberately coarse (boxes, 8-sided prisms, low-poly ellipsoids): the sensor has
~0.2 degree resolution, so finer meshes cost build time and change nothing visible.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pcseg.data.synthetic.materials import MATERIAL_ID

_BOX_VERTS = np.array(
    [[x, y, z] for z in (0.0, 1.0) for y in (-0.5, 0.5) for x in (-0.5, 0.5)], dtype=np.float64
)
# Outward-facing triangles of the unit box (vertex index = x + 2y + 4z).
_BOX_TRIS = np.array(
    [
        [0, 2, 1],
        [1, 2, 3],  # bottom
        [4, 5, 6],
        [5, 7, 6],  # top
        [0, 1, 4],
        [1, 5, 4],  # -y
        [2, 6, 3],
        [3, 6, 7],  # +y
        [0, 4, 2],
        [2, 4, 6],  # -x
        [1, 3, 5],
        [3, 7, 5],  # +x
    ],
    dtype=np.int64,
)


def _unit_ellipsoid(n_lon: int = 10, n_lat: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Low-poly unit sphere: vertices (V, 3) and triangles (T, 3), poles at +-z."""
    lat = np.linspace(0, np.pi, n_lat + 1)[1:-1]
    lon = np.linspace(0, 2 * np.pi, n_lon, endpoint=False)
    ring = np.stack(
        [
            np.outer(np.sin(lat), np.cos(lon)),
            np.outer(np.sin(lat), np.sin(lon)),
            np.repeat(np.cos(lat)[:, None], n_lon, axis=1),
        ],
        axis=-1,
    ).reshape(-1, 3)
    verts = np.concatenate([[[0, 0, 1]], ring, [[0, 0, -1]]])
    tris = []
    for j in range(n_lon):
        k = (j + 1) % n_lon
        tris.append([0, 1 + j, 1 + k])
        for i in range(n_lat - 2):
            a, b = 1 + i * n_lon + j, 1 + i * n_lon + k
            c, d = a + n_lon, b + n_lon
            tris += [[a, c, b], [b, c, d]]
        last = len(verts) - 1
        base = 1 + (n_lat - 2) * n_lon
        tris.append([base + j, last, base + k])
    return verts, np.array(tris, dtype=np.int64)


_SPHERE_VERTS, _SPHERE_TRIS = _unit_ellipsoid()


def _unit_prism(sides: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Unit-radius prism from z=0 to z=1 with caps: vertices (V, 3), triangles (T, 3)."""
    ang = np.linspace(0, 2 * np.pi, sides, endpoint=False)
    ring = np.stack([np.cos(ang), np.sin(ang)], axis=1)
    verts = np.concatenate(
        [np.c_[ring, np.zeros(sides)], np.c_[ring, np.ones(sides)], [[0, 0, 0], [0, 0, 1]]]
    )
    tris = []
    for j in range(sides):
        k = (j + 1) % sides
        tris += [[j, k, sides + j], [k, sides + k, sides + j]]
        tris += [[2 * sides, k, j], [2 * sides + 1, sides + j, sides + k]]
    return verts, np.array(tris, dtype=np.int64)


_PRISM_VERTS, _PRISM_TRIS = _unit_prism()


def rotation_z(yaw: float) -> np.ndarray:
    """(3, 3) rotation about +z by ``yaw`` radians."""
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


@dataclass
class MeshBuilder:
    """Accumulates triangles with per-triangle label / instance / material.

    Parts are kept in lists and concatenated once in :meth:`build`, so adding a part is O(1).
    """

    verts: list[np.ndarray] = field(default_factory=list)
    tris: list[np.ndarray] = field(default_factory=list)
    labels: list[np.ndarray] = field(default_factory=list)
    instances: list[np.ndarray] = field(default_factory=list)
    materials: list[np.ndarray] = field(default_factory=list)
    _count: int = 0

    def add(
        self, verts: np.ndarray, tris: np.ndarray, label: int, material: str, instance: int = 0
    ) -> None:
        """Add a part: ``verts`` (V, 3) world coordinates, ``tris`` (T, 3) local vertex indices."""
        self.verts.append(np.asarray(verts, dtype=np.float64))
        self.tris.append(np.asarray(tris, dtype=np.int64) + self._count)
        n = len(tris)
        self.labels.append(np.full(n, label, dtype=np.int32))
        self.instances.append(np.full(n, instance, dtype=np.int32))
        self.materials.append(np.full(n, MATERIAL_ID[material], dtype=np.int32))
        self._count += len(verts)

    def add_arrays(
        self,
        verts: np.ndarray,
        tris: np.ndarray,
        labels: np.ndarray,
        materials: np.ndarray,
        instances: np.ndarray | None = None,
    ) -> None:
        """Add many triangles at once with per-triangle arrays (T,) (e.g. the ground raster)."""
        self.verts.append(np.asarray(verts, dtype=np.float64))
        self.tris.append(np.asarray(tris, dtype=np.int64) + self._count)
        self.labels.append(np.asarray(labels, dtype=np.int32))
        self.materials.append(np.asarray(materials, dtype=np.int32))
        inst = np.zeros(len(tris), np.int32) if instances is None else instances
        self.instances.append(np.asarray(inst, dtype=np.int32))
        self._count += len(verts)

    def box(
        self,
        center: tuple[float, float, float],
        size: tuple[float, float, float],
        label: int,
        material: str,
        yaw: float = 0.0,
        instance: int = 0,
    ) -> None:
        """Box of ``size`` (length x, width y, height z) whose BOTTOM centre is ``center``."""
        v = _BOX_VERTS * np.asarray(size) @ rotation_z(yaw).T + np.asarray(center)
        self.add(v, _BOX_TRIS, label, material, instance)

    def cylinder(
        self,
        base: tuple[float, float, float],
        radius: float,
        height: float,
        label: int,
        material: str,
        instance: int = 0,
    ) -> None:
        """Vertical 8-sided prism standing on ``base``."""
        v = _PRISM_VERTS * np.array([radius, radius, height]) + np.asarray(base)
        self.add(v, _PRISM_TRIS, label, material, instance)

    def ellipsoid(
        self,
        center: tuple[float, float, float],
        radii: tuple[float, float, float],
        label: int,
        material: str,
        yaw: float = 0.0,
        instance: int = 0,
    ) -> None:
        """Low-poly ellipsoid around ``center`` with semi-axes ``radii``."""
        v = _SPHERE_VERTS * np.asarray(radii) @ rotation_z(yaw).T + np.asarray(center)
        self.add(v, _SPHERE_TRIS, label, material, instance)

    def build(self) -> Mesh:
        """Concatenate everything into a :class:`Mesh`."""
        if not self.tris:
            empty = np.zeros((0,), np.int32)
            return Mesh(
                np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint32), empty, empty, empty
            )
        return Mesh(
            np.concatenate(self.verts).astype(np.float32),
            np.concatenate(self.tris).astype(np.uint32),
            np.concatenate(self.labels),
            np.concatenate(self.instances),
            np.concatenate(self.materials),
        )


@dataclass(frozen=True)
class Mesh:
    """A finished triangle soup. verts (V, 3) float32; tris (T, 3) uint32; labels, instances,
    materials (T,) int32 (raw SemanticKITTI id, instance id, material id per triangle)."""

    verts: np.ndarray
    tris: np.ndarray
    labels: np.ndarray
    instances: np.ndarray
    materials: np.ndarray

    def __len__(self) -> int:
        return len(self.tris)
