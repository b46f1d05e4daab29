"""Velodyne HDL-64E model: ray pattern, ray casting, noise, dropout, remission, labels.

The sensor casts ``n_beams x n_azimuth`` rays from its optical centre into an Open3D
:class:`open3d.t.geometry.RaycastingScene` (the static scene, built once per sequence) and a
second one holding the agents of the current frame; the nearer hit wins. Then, per ray:

- porous materials (foliage, fences, glass) let the pulse through with their ``porosity``: the
  ray is continued behind the hit, so trees show points inside and behind their crowns;
- no return beyond ``max_range``, from the sky, from the ego car's own body (the lowest beams
  behind the car hit the roof and trunk lid), closer than ``min_range``, at random
  (``drop_prob``) or when the echo is too weak: a smooth function of reflectivity, incidence and
  range, so dark cars fade out at long range as on the real sensor;
- range noise (``range_noise`` plus the material's roughness; echoes penetrate foliage by an
  exponential depth), remission from reflectivity,
  incidence and noise (clipped to [0, 1], dark echoes quantised to 0 as in KITTI);
- labels from the hit triangle; road hits on painted markings become lane-marking (60); a few
  ground echoes become multipath outliers (label 1) far below the ground, as in real scans;
  far points are sometimes left unlabeled (0) as annotators do.

Points are returned in the sensor frame (x forward, y left, z up), ordered by beam then azimuth.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import open3d as o3d

from pcseg.data.synthetic.materials import MATERIAL_ID, material_table
from pcseg.data.synthetic.mesh import Mesh


class SensorConfigError(ValueError):
    """Invalid LiDAR configuration (e.g. zero beams or a negative range)."""


# HDL-64E: upper block of 32 lasers ~1/3 degree apart, lower block of 32 ~1/2 degree apart.
_HDL64_ELEVATION = np.concatenate([np.linspace(2.0, -8.33, 32), np.linspace(-8.87, -24.9, 32)])


@dataclass(frozen=True)
class LidarConfig:
    """Sensor parameters. Defaults follow the KITTI HDL-64E; fewer beams / azimuth steps give
    small scans for fast tests (the elevation pattern is resampled, not cut)."""

    n_beams: int = 64
    n_azimuth: int = 2048
    max_range: float = 80.0
    min_range: float = 2.5
    range_noise: float = 0.02
    drop_prob: float = 0.015
    multipath_prob: float = 0.0006
    # ego body in the sensor frame, boxes of (min xyz, max xyz): roof and boot behind the
    # sensor, bonnet in front; they hide the lowest beams fore and aft as on the KITTI car
    ego_boxes: tuple[tuple[tuple[float, float, float], tuple[float, float, float]], ...] = (
        ((-2.9, -0.95, -1.5), (-0.4, 0.95, -0.85)),
        ((0.4, -0.9, -1.5), (2.4, 0.9, -1.0)),
    )
    # per-laser origin heights above the sensor origin (m), drawn once from this range: the
    # HDL-64E's lasers sit 0.1-0.3 m above its reported origin, which lifts the apparent
    # elevation of near returns (real scans: elevation 1 % = -23.5 deg, range 1 % = 4.3 m,
    # although the lowest laser points at -24.9 deg)
    beam_offset: tuple[float, float] = (0.04, 0.24)

    def __post_init__(self) -> None:
        if self.n_beams < 1 or self.n_azimuth < 1:
            raise SensorConfigError(
                f"n_beams and n_azimuth must be >= 1, got {self.n_beams} and {self.n_azimuth}"
            )
        if not 0 < self.min_range < self.max_range:
            raise SensorConfigError(
                f"need 0 < min_range < max_range, got {self.min_range} and {self.max_range}"
            )

    def elevations(self) -> np.ndarray:
        """Beam elevations (n_beams,) in degrees, top beam first."""
        if self.n_beams == 64:
            base = _HDL64_ELEVATION
        else:
            base = np.interp(np.linspace(0, 63, self.n_beams), np.arange(64), _HDL64_ELEVATION)
        # fixed per-laser calibration error, identical for every scan
        jitter = np.random.default_rng(64).normal(0.0, 0.12, self.n_beams)
        return base + jitter

    def origins(self) -> np.ndarray:
        """Per-ray laser origin offsets (n_beams * n_azimuth, 3) in the sensor frame: each
        laser of the HDL-64E sits at its own height, which smears the apparent elevation of
        near points as in real scans."""
        dz = np.random.default_rng(65).uniform(*self.beam_offset, self.n_beams)
        out = np.zeros((self.n_beams, self.n_azimuth, 3))
        out[:, :, 2] = dz[:, None]
        return out.reshape(-1, 3)

    def directions(self) -> np.ndarray:
        """Unit ray directions (n_beams * n_azimuth, 3) float64 in the sensor frame."""
        el = np.radians(self.elevations())[:, None]
        az = np.linspace(np.pi, -np.pi, self.n_azimuth, endpoint=False)[None, :]
        d = np.stack(
            [np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el) * np.ones_like(az)], -1
        )
        return d.reshape(-1, 3)


@dataclass(frozen=True)
class Scan:
    """One simulated scan. xyz (N, 3) float32 sensor frame; remission (N,) float32 in [0, 1];
    semantic (N,) uint32 raw SemanticKITTI ids; instance (N,) uint32."""

    xyz: np.ndarray
    remission: np.ndarray
    semantic: np.ndarray
    instance: np.ndarray

    def __len__(self) -> int:
        return len(self.xyz)


def raycasting_scene(mesh: Mesh) -> o3d.t.geometry.RaycastingScene | None:
    """Open3D ray-casting scene holding ``mesh`` as one geometry (None for an empty mesh)."""
    if len(mesh) == 0:
        return None
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor(mesh.verts), o3d.core.Tensor(mesh.tris))
    return scene


def _cast(
    scenes: list[tuple[o3d.t.geometry.RaycastingScene | None, Mesh]],
    origins: np.ndarray,
    dirs: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Nearest hit over several scenes. Returns t (R,) (inf = no hit), scene index (R,),
    triangle index (R,) and normal (R, 3)."""
    rays = o3d.core.Tensor(np.concatenate([origins, dirs], 1).astype(np.float32))
    t = np.full(len(dirs), np.inf, np.float32)
    which = np.full(len(dirs), -1, np.int64)
    prim = np.zeros(len(dirs), np.int64)
    normal = np.zeros((len(dirs), 3), np.float32)
    for k, (rc, _) in enumerate(scenes):
        if rc is None:
            continue
        ans = rc.cast_rays(rays, nthreads=1)
        tk = ans["t_hit"].numpy()
        better = tk < t
        t[better] = tk[better]
        which[better] = k
        prim[better] = ans["primitive_ids"].numpy()[better].astype(np.int64)
        normal[better] = ans["primitive_normals"].numpy()[better]
    return t, which, prim, normal


def _ego_hit(dirs: np.ndarray, box: tuple) -> np.ndarray:
    """Mask (R,) of sensor-frame rays from the origin that pass through the ego body box."""
    lo, hi = np.asarray(box[0]), np.asarray(box[1])
    with np.errstate(divide="ignore", invalid="ignore"):
        t1 = lo / dirs
        t2 = hi / dirs
    tmin = np.nanmax(np.minimum(t1, t2), axis=1)
    tmax = np.nanmin(np.maximum(t1, t2), axis=1)
    return (tmax >= np.maximum(tmin, 0)) & np.isfinite(tmin)


def simulate_scan(
    static: tuple[o3d.t.geometry.RaycastingScene | None, Mesh],
    dynamic: Mesh,
    pose: np.ndarray,
    rng: np.random.Generator,
    config: LidarConfig | None = None,
    marking: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Scan:
    """Simulate one scan.

    static: (ray-casting scene, mesh) of everything that does not move (world frame);
    dynamic: mesh of the agents at this frame (world frame); pose: (4, 4) sensor-to-world;
    rng: noise source (seed it per frame for order-independent determinism);
    marking: maps world xy (N, 2) of road hits to a lane-marking mask (N,).
    """
    cfg = config or LidarConfig()
    refl_t, poro_t, rough_t, depth_t = material_table()
    local = cfg.directions()
    rot, origin = pose[:3, :3], pose[:3, 3]
    dirs = local @ rot.T
    n = len(dirs)
    scenes = [static, (raycasting_scene(dynamic), dynamic)]
    offsets = cfg.origins()
    origins = origin + offsets @ rot.T
    t, which, prim, normal = _cast(scenes, origins, dirs)
    total = t.astype(np.float64)
    hit = np.isfinite(total)

    def tri_attr(name: str) -> np.ndarray:
        out = np.zeros(n, np.int64)
        for k, (_, mesh) in enumerate(scenes):
            m = hit & (which == k)
            out[m] = getattr(mesh, name)[prim[m]]
        return out

    material = tri_attr("materials")
    for _ in range(2):  # porous surfaces: continue some rays behind the first hit
        through = hit & (rng.random(n) < poro_t[material]) & (total < cfg.max_range)
        if not through.any():
            break
        idx = np.flatnonzero(through)
        o2 = origins[idx] + dirs[idx] * (total[idx, None] + 0.05)
        t2, w2, p2, n2 = _cast(scenes, o2, dirs[idx])
        total[idx] = total[idx] + 0.05 + t2
        which[idx], prim[idx], normal[idx] = w2, p2, n2
        hit = np.isfinite(total)
        material = tri_attr("materials")
    label = tri_attr("labels")
    instance = tri_attr("instances")

    rng_total = total.copy()
    cos_inc = np.abs((normal * dirs).sum(1))
    refl = refl_t[material].astype(np.float64)
    if marking is not None:
        road = hit & (label == 40)
        if road.any():
            xy = origins[road, :2] + dirs[road, :2] * total[road, None]
            on = marking(xy)
            ridx = np.flatnonzero(road)[on]
            label[ridx] = 60
            refl[ridx] = refl_t[MATERIAL_ID["paint"]]

    # --- returns and dropout -----------------------------------------------------------------
    r = np.where(hit, rng_total, np.inf)
    signal = refl * np.maximum(cos_inc, 0.3) / np.maximum(r / 20.0, 1.0) ** 2
    weak = rng.random(n) < np.exp(-signal / 0.012)
    keep = hit & (r <= cfg.max_range) & (r >= cfg.min_range) & ~weak
    keep &= rng.random(n) >= cfg.drop_prob
    for box in cfg.ego_boxes:
        keep &= ~_ego_hit(local, box)

    # --- range noise and multipath ----------------------------------------------------------
    noise = rng.normal(0.0, 1.0, n) * (cfg.range_noise + rough_t[material])
    noise += rng.exponential(1.0, n) * depth_t[material]  # echoes from inside foliage
    r_noisy = r + noise
    ground = np.isin(label, (40, 44, 48, 49, 72, 60))
    multipath = keep & ground & (rng.random(n) < cfg.multipath_prob)
    r_noisy[multipath] *= rng.uniform(1.3, 4.0, int(multipath.sum()))
    label[multipath] = 1
    instance[multipath] = 0
    keep &= r_noisy <= cfg.max_range
    # far points are sometimes left unlabeled by annotators
    far = rng.random(n) < np.clip((r - 45.0) / 70.0, 0.0, 0.45)
    label[far & ~multipath] = 0
    instance[far] = 0

    # --- remission ------------------------------------------------------------------------
    rem = refl * (0.75 + 0.25 * cos_inc) * rng.lognormal(0.0, 0.22, n)
    rem += rng.normal(0.0, 0.02, n)
    rem[multipath] *= 0.3
    rem[(rem < 0.07) | (rng.random(n) < 0.05)] = 0.0
    rem = np.clip(rem, 0.0, 1.0)

    idx = np.flatnonzero(keep)
    xyz = offsets[idx] + local[idx] * r_noisy[idx, None]
    dist = np.linalg.norm(xyz, axis=1)  # what a user measures: from the sensor origin
    inside = (dist >= cfg.min_range) & (dist <= cfg.max_range)
    idx, xyz = idx[inside], xyz[inside]
    return Scan(
        xyz.astype(np.float32),
        np.round(rem[idx], 2).astype(np.float32),
        label[idx].astype(np.uint32),
        instance[idx].astype(np.uint32),
    )
