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
class Randomization:
    """Domain randomisation: per-sequence draws of the sensor and its calibration, so a model
    does not learn one car's mounting and one laser's gain. ``enabled=False`` draws nothing.

    Defaults come from the spread over the 8 real KITTI scans (scripts/domain_gap.py): mean
    remission per scan 0.248-0.295 (a gain of +-9 %: log-sigma 0.07), ground under the car
    1.73-2.03 m below the sensor (height +-0.1 m), and the HDL-64E's published per-laser
    angle calibration error, kept small so rings never cross.
    """

    enabled: bool = True
    height: float = 0.1  # sensor height offset, uniform +- (m)
    tilt: float = 0.5  # extra pitch and roll of the mount, normal sigma (deg)
    beam_jitter: float = 0.02  # extra per-beam elevation error, normal sigma (deg)
    remission_gain: float = 0.07  # log-normal sigma of a global remission gain
    remission_gamma: tuple[float, float] = (0.9, 1.1)  # remission ** gamma, uniform
    noise_scale: tuple[float, float] = (0.75, 1.5)  # range noise multiplier, uniform
    dropout: tuple[float, float] = (0.0, 0.02)  # extra random ray dropout, uniform


@dataclass(frozen=True)
class SensorDraw:
    """One draw of :class:`Randomization` (identity when randomisation is off)."""

    height: float = 0.0
    pitch: float = 0.0  # radians
    roll: float = 0.0
    elevation: np.ndarray | None = None  # (n_beams,) extra degrees
    gain: float = 1.0
    gamma: float = 1.0
    noise: float = 1.0
    dropout: float = 0.0

    @classmethod
    def sample(cls, rnd: Randomization, n_beams: int, rng: np.random.Generator) -> SensorDraw:
        if not rnd.enabled:
            return cls()
        pitch, roll = np.radians(rng.normal(0.0, rnd.tilt, 2))
        return cls(
            height=float(rng.uniform(-rnd.height, rnd.height)),
            pitch=float(pitch),
            roll=float(roll),
            elevation=rng.normal(0.0, rnd.beam_jitter, n_beams),
            gain=float(rng.lognormal(0.0, rnd.remission_gain)),
            gamma=float(rng.uniform(*rnd.remission_gamma)),
            noise=float(rng.uniform(*rnd.noise_scale)),
            dropout=float(rng.uniform(*rnd.dropout)),
        )

    def apply_to_pose(self, pose: np.ndarray) -> np.ndarray:
        """``pose`` (4, 4) sensor-to-world, raised by ``height`` and tilted by pitch / roll."""
        cp, sp, cr, sr = (
            np.cos(self.pitch),
            np.sin(self.pitch),
            np.cos(self.roll),
            np.sin(self.roll),
        )
        tilt = np.array([[cp, 0, sp], [0, 1, 0], [-sp, 0, cp]]) @ np.array(
            [[1, 0, 0], [0, cr, -sr], [0, sr, cr]]
        )
        out = pose.copy()
        out[:3, :3] = pose[:3, :3] @ tilt
        out[2, 3] += self.height
        return out


@dataclass(frozen=True)
class LidarConfig:
    """Sensor parameters. Defaults follow the KITTI HDL-64E; presets for other sensors and a
    YAML format are in :mod:`.presets` (configs/sensors/*.yaml). ``elevation`` lists the beam
    angles (degrees); when ``n_beams`` differs from its length the pattern is resampled over
    the beam index (fewer beams make small scans for fast tests)."""

    n_beams: int = 64
    n_azimuth: int = 2048
    max_range: float = 80.0
    min_range: float = 2.5
    # white range noise (m). Real HDL-64E rings are smooth to ~1 cm across 16 neighbours
    # (road linearity 0.99); 0.02 gave 0.71 (scripts/domain_gap.py). Most of the error is a
    # fixed per-laser offset (range_bias), which keeps each ring smooth.
    range_noise: float = 0.006
    range_bias: float = 0.015  # per-laser constant range offset, normal sigma (m)
    drop_prob: float = 0.015
    multipath_prob: float = 0.0006
    # echo strength (reflectivity x cos(incidence) / (range / 10 m)^2, 1 within 10 m) below
    # which remission fades in proportion: ground beyond ~25 m (grazing incidence) reads dark,
    # 0 for a third of its points, in real KITTI scans, labelled and unlabelled alike; generator
    # 3 kept those at the near ground's median (0.29 vs 0.14-0.17). 0.006 in generators 4-5; 0.004
    # with generator 6's range fade below, which darkens that ground too (far-ground zeros 42 %
    # at 0.006 vs 30 % in the unlabelled scans; test_far_ground_reads_as_dark_as_in_unlabelled_kitti)
    faint_echo: float = 0.004
    # every echo's remission falls with range beyond range_fade_start, by
    # exp(-(r - start) / length), whatever the surface (generator 6). Measured label-free: points
    # more than ~0.7 m above the road in the five unlabelled KITTI scans read a median
    # remission of 0.34 / 0.30 / 0.21 / 0.13 at 10-20 / 20-30 / 30-40 / 40-60 m (0 for 8 / 10 /
    # 15 / 37 %), i.e. 1 / 0.88 / 0.62 / 0.38 of the near value, which this curve gives at the
    # bins' centres; generator 5 read 0.35 / 0.35 / 0.32 / 0.36. There, far vegetation and
    # facades stayed bright and the only dark things far away were cars, and a model trained
    # on it called 7k far, dark real vegetation points car (33 % of its car predictions).
    range_fade_start: float = 20.0
    range_fade_length: float = 30.0
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
    name: str = "hdl64e"
    mount_height: float = 1.73  # optical centre above the road (m), as on the KITTI car
    elevation: tuple[float, ...] = tuple(float(v) for v in _HDL64_ELEVATION)
    # fixed per-laser angle error (deg); 0.12 let neighbouring rings (0.33 deg apart) nearly
    # coincide and interleave, which real (calibrated) KITTI scans never show
    elevation_jitter: float = 0.03
    beam_gain: float = 0.08  # fixed per-laser remission gain, log-normal sigma
    randomize: Randomization = Randomization()

    def __post_init__(self) -> None:
        if self.n_beams < 1 or self.n_azimuth < 1:
            raise SensorConfigError(
                f"n_beams and n_azimuth must be >= 1, got {self.n_beams} and {self.n_azimuth}"
            )
        if not 0 < self.min_range < self.max_range:
            raise SensorConfigError(
                f"need 0 < min_range < max_range, got {self.min_range} and {self.max_range}"
            )
        if not self.range_fade_length > 0:
            raise SensorConfigError(
                f"{self.name}: range_fade_length must be > 0 m, got {self.range_fade_length}"
            )
        if len(self.elevation) < 1 or not all(-90 < e < 90 for e in self.elevation):
            raise SensorConfigError(f"{self.name}: elevation angles must lie in (-90, 90) deg")

    def range_fade(self, r: np.ndarray) -> np.ndarray:
        """Remission factor (R,) of every surface at true range r (R,) m: 1 up to
        ``range_fade_start``, then exp(-(r - start) / ``range_fade_length``)."""
        return np.exp(
            -np.maximum(np.asarray(r) - self.range_fade_start, 0.0) / self.range_fade_length
        )

    def base_elevations(self) -> np.ndarray:
        """The nominal beam elevations (n_beams,) in degrees, top beam first."""
        base = np.sort(np.asarray(self.elevation, np.float64))[::-1]
        if self.n_beams == len(base):
            return base
        return np.interp(np.linspace(0, len(base) - 1, self.n_beams), np.arange(len(base)), base)

    def elevations(self) -> np.ndarray:
        """Beam elevations (n_beams,) in degrees, top beam first, with the fixed per-laser
        calibration error (identical for every scan)."""
        jitter = np.random.default_rng(64).normal(0.0, self.elevation_jitter, self.n_beams)
        return self.base_elevations() + jitter

    def beam_calibration(self) -> tuple[np.ndarray, np.ndarray]:
        """Fixed per-laser range offsets (n_beams,) m and remission gains (n_beams,)."""
        rng = np.random.default_rng(66)
        return rng.normal(0.0, self.range_bias, self.n_beams), rng.lognormal(
            0.0, self.beam_gain, self.n_beams
        )

    def origins(self) -> np.ndarray:
        """Per-ray laser origin offsets (n_beams * n_azimuth, 3) in the sensor frame: each
        laser of the HDL-64E sits at its own height, which smears the apparent elevation of
        near points as in real scans."""
        # rising smoothly from the top laser to the bottom one: random heights per laser made
        # neighbouring rings cross on the road (road planarity 0.2-0.5 vs real 0.005)
        dz = np.linspace(*self.beam_offset, self.n_beams)
        out = np.zeros((self.n_beams, self.n_azimuth, 3))
        out[:, :, 2] = dz[:, None]
        return out.reshape(-1, 3)

    def directions(self, extra: np.ndarray | None = None) -> np.ndarray:
        """Unit ray directions (n_beams * n_azimuth, 3) float64 in the sensor frame;
        ``extra`` (n_beams,) degrees are added to the elevations (randomisation)."""
        el = self.elevations() if extra is None else self.elevations() + extra
        el = np.radians(el)[:, None]
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


@dataclass
class _Rays:
    """Working state of one scan's rays (R = n_beams * n_azimuth), filled step by step."""

    local: np.ndarray  # (R, 3) sensor-frame directions
    dirs: np.ndarray  # (R, 3) world directions
    origins: np.ndarray  # (R, 3) world laser origins
    offsets: np.ndarray  # (R, 3) sensor-frame laser origins
    beam: np.ndarray  # (R,) beam index
    total: np.ndarray  # (R,) float64 hit distance, inf = none
    which: np.ndarray  # (R,) scene index of the hit
    prim: np.ndarray  # (R,) triangle index
    normal: np.ndarray  # (R, 3)

    @property
    def hit(self) -> np.ndarray:
        return np.isfinite(self.total)


def _attr(rays: _Rays, scenes, name: str) -> np.ndarray:
    """Per-ray triangle attribute ``name`` (materials, labels, instances) of the hit, (R,)."""
    out = np.zeros(len(rays.total), np.int64)
    hit = rays.hit
    for k, (_, mesh) in enumerate(scenes):
        m = hit & (rays.which == k)
        out[m] = getattr(mesh, name)[rays.prim[m]]
    return out


def _cast_porous(
    rays: _Rays, scenes, poro_t: np.ndarray, max_range: float, rng: np.random.Generator
) -> np.ndarray:
    """Continue rays through porous surfaces (up to twice); returns the hit material (R,)."""
    n = len(rays.total)
    material = _attr(rays, scenes, "materials")
    for _ in range(2):
        hit = rays.hit
        through = hit & (rng.random(n) < poro_t[material]) & (rays.total < max_range)
        if not through.any():
            break
        idx = np.flatnonzero(through)
        o2 = rays.origins[idx] + rays.dirs[idx] * (rays.total[idx, None] + 0.05)
        t2, w2, p2, n2 = _cast(scenes, o2, rays.dirs[idx])
        rays.total[idx] = rays.total[idx] + 0.05 + t2
        rays.which[idx], rays.prim[idx], rays.normal[idx] = w2, p2, n2
        material = _attr(rays, scenes, "materials")
    return material


def _returns(
    rays: _Rays,
    refl: np.ndarray,
    cos_inc: np.ndarray,
    cfg: LidarConfig,
    draw: SensorDraw,
    rng: np.random.Generator,
) -> np.ndarray:
    """Mask (R,) of rays that return an echo: a hit within range, strong enough (reflectivity,
    incidence, range), not dropped at random, not on the ego car."""
    n = len(rays.total)
    r = np.where(rays.hit, rays.total, np.inf)
    signal = refl * np.maximum(cos_inc, 0.3) / np.maximum(r / 20.0, 1.0) ** 2
    weak = rng.random(n) < np.exp(-signal / 0.012)
    keep = rays.hit & (r <= cfg.max_range) & (r >= cfg.min_range) & ~weak
    keep &= rng.random(n) >= cfg.drop_prob + draw.dropout
    for box in cfg.ego_boxes:
        keep &= ~_ego_hit(rays.local, box)
    return keep


def _remission(
    refl: np.ndarray,
    cos_inc: np.ndarray,
    r: np.ndarray,
    gain: np.ndarray,
    multipath: np.ndarray,
    draw: SensorDraw,
    rng: np.random.Generator,
    faint_echo: float,
    range_fade: np.ndarray | float = 1.0,
) -> np.ndarray:
    """Remission (R,) in [0, 1]: reflectivity x incidence x per-laser gain x noise x the range
    fade (R,) of every surface (``LidarConfig.range_fade_start``), faded further for faint
    echoes (``faint_echo``: far, grazing hits), then the randomised global gain and gamma; dark
    echoes and 5 % at random read 0, as in KITTI. r (R,): true range (m)."""
    n = len(refl)
    rem = refl * (0.75 + 0.25 * cos_inc) * gain * rng.lognormal(0.0, 0.22, n) * range_fade
    strength = refl * cos_inc / np.maximum(r / 10.0, 1.0) ** 2
    rem *= np.clip(strength / faint_echo, 0.0, 1.0)
    rem += rng.normal(0.0, 0.02, n)
    rem[multipath] *= 0.3
    rem = draw.gain * np.maximum(rem, 0.0) ** draw.gamma
    rem[(rem < 0.07) | (rng.random(n) < 0.05)] = 0.0
    return np.clip(rem, 0.0, 1.0)


def simulate_scan(
    static: tuple[o3d.t.geometry.RaycastingScene | None, Mesh],
    dynamic: Mesh,
    pose: np.ndarray,
    rng: np.random.Generator,
    config: LidarConfig | None = None,
    marking: Callable[[np.ndarray], np.ndarray] | None = None,
    draw: SensorDraw | None = None,
) -> Scan:
    """Simulate one scan.

    static: (ray-casting scene, mesh) of everything that does not move (world frame);
    dynamic: mesh of the agents at this frame (world frame); pose: (4, 4) sensor-to-world;
    rng: noise source (seed it per frame for order-independent determinism);
    marking: maps world xy (N, 2) of road hits to a lane-marking mask (N,);
    draw: this sequence's domain-randomisation draw (None: none; the pose is already moved).
    """
    cfg = config or LidarConfig()
    draw = draw or SensorDraw()
    refl_t, poro_t, rough_t, depth_t = material_table()
    local = cfg.directions(draw.elevation)
    rot, origin = pose[:3, :3], pose[:3, 3]
    scenes = [static, (raycasting_scene(dynamic), dynamic)]
    offsets = cfg.origins()
    dirs = local @ rot.T
    origins = origin + offsets @ rot.T
    t, which, prim, normal = _cast(scenes, origins, dirs)
    beam = np.arange(len(local)) // cfg.n_azimuth
    rays = _Rays(local, dirs, origins, offsets, beam, t.astype(np.float64), which, prim, normal)
    material = _cast_porous(rays, scenes, poro_t, cfg.max_range, rng)
    label = _attr(rays, scenes, "labels")
    instance = _attr(rays, scenes, "instances")
    cos_inc = np.abs((rays.normal * dirs).sum(1))
    refl = refl_t[material].astype(np.float64)
    if marking is not None:
        _paint_markings(rays, label, refl, marking, refl_t[MATERIAL_ID["paint"]])
    keep = _returns(rays, refl, cos_inc, cfg, draw, rng)
    n = len(local)
    r = np.where(rays.hit, rays.total, np.inf)

    # --- range noise (white + fixed per laser) and multipath -------------------------------
    bias, gain = cfg.beam_calibration()
    noise = rng.normal(0.0, 1.0, n) * (cfg.range_noise * draw.noise + rough_t[material])
    noise += rng.exponential(1.0, n) * depth_t[material]  # echoes from inside foliage
    r_noisy = r + noise + bias[beam]
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
    fade = cfg.range_fade(r)
    rem = _remission(refl, cos_inc, r, gain[beam], multipath, draw, rng, cfg.faint_echo, fade)

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


def _paint_markings(rays: _Rays, label, refl, marking, paint_refl: float) -> None:
    """Road hits (label 40) on painted markings become lane-marking (60) with paint's
    reflectivity; ``label`` and ``refl`` (R,) are changed in place."""
    road = rays.hit & (label == 40)
    if road.any():
        xy = rays.origins[road, :2] + rays.dirs[road, :2] * rays.total[road, None]
        ridx = np.flatnonzero(road)[marking(xy)]
        label[ridx] = 60
        refl[ridx] = paint_refl
