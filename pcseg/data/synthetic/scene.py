"""Procedural street scenes: layout, static mesh, moving agents and the ego path.

:func:`build_scene` turns a layout name and a numpy Generator into a :class:`Scene`:

1. a main street (straight, or with a bend for ``curve``) and crossing streets;
2. a ground raster painted from their cross-sections (road, parking, sidewalk, verges, yards,
   medians, parking lots) on a gently undulating height field (:mod:`.ground`, :mod:`.streets`);
3. lots along every street side: buildings with facades, or open lots (trees, bushes, hedges,
   fences, parking lots, unlabeled clutter); street furniture along the curbs (lamps, signs,
   bins, shelters, trees) and parked vehicles, bicycles and standing people (:mod:`.objects`);
4. agents that move between frames (cars, trucks, buses, other vehicles, pedestrians,
   bicyclists, motorcyclists), labelled with SemanticKITTI's moving-* ids (252-259);
5. the ego path: along the main street's first lane at a constant speed per frame.

Layouts: ``urban`` (dense buildings, parking lanes), ``curve`` (a bend of 35-90 degrees),
``suburban`` (set-back houses, hedges, lawns, many trees) and ``boulevard`` (wide road with a
median, open lots and parking lots). Straight layouts may have a crossing that the ego drives
through, a crossing further away, and T-junctions closing the view at either end.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from pcseg.data.synthetic import objects as obj
from pcseg.data.synthetic.ground import (
    BASE_GRASS,
    BASE_OTHER,
    GRAVEL,
    LOT,
    WASTE,
    YARD_GRASS,
    YARD_PAVED,
    GroundRaster,
    paint_street,
)
from pcseg.data.synthetic.mesh import Mesh, MeshBuilder
from pcseg.data.synthetic.streets import HeightField, Street, centerline

LAYOUTS = ("urban", "curve", "suburban", "boulevard")
SENSOR_HEIGHT = 1.73  # HDL-64E optical centre above the road (m), as on the KITTI car
FRAME_DT = 0.1  # 10 Hz
SCENE_MARGIN = 90.0  # raster extends this far around the ego path (sensor range 80 m)

# raw SemanticKITTI ids: parked / moving
MOVING = {10: 252, 31: 253, 30: 254, 32: 255, 13: 257, 18: 258, 20: 259}


class LayoutError(ValueError):
    """An unknown layout name or impossible scene parameters."""


@dataclass
class Agent:
    """A thing that moves along a street: rebuilt at its pose in every frame.

    s0: arc length at frame 0 (m); d: lateral offset (m); speed: m/s along +s (negative = the
    other way); dims: shape parameters for its builder in :mod:`.objects`.
    """

    kind: str
    label: int
    instance: int
    dims: np.ndarray
    street: int
    s0: float
    d: float
    speed: float
    rider: np.ndarray | None = None


@dataclass
class Scene:
    """A generated scene. ``static``: everything that does not move (Mesh, world frame)."""

    layout: str
    static: Mesh
    streets: list[Street]
    height: HeightField
    raster: GroundRaster
    agents: list[Agent]
    ego_s0: float
    ego_d: float
    ego_step: float  # metres per frame
    mount: tuple[float, float] = (0.0, 0.0)  # sensor pitch, roll on the car (radians)
    wobble_seed: int = 0  # per-frame body pitch / roll (suspension), deterministic per frame
    bounds: tuple[np.ndarray, np.ndarray] = field(repr=False, default=None)  # type: ignore[assignment]

    def ground_z(self, xy: np.ndarray) -> np.ndarray:
        """Ground surface height (N,) under world points (N, 2), curbs included."""
        xy = np.atleast_2d(xy)
        return self.height(xy) + self.raster.offset_at(xy)

    def ego_pose(self, frame: int) -> np.ndarray:
        """(4, 4) world pose of the sensor at ``frame``: x forward, y left, z up, origin at the
        optical centre, tilted with the local road slope."""
        street = self.streets[0]
        s = self.ego_s0 + self.ego_step * frame
        xy, yaw = street.xy_at(s, self.ego_d)
        grad = self.height.gradient(xy[None])[0]
        fwd = np.array([np.cos(yaw), np.sin(yaw), 0.0])
        left = np.array([-np.sin(yaw), np.cos(yaw), 0.0])
        fwd[2] = grad @ fwd[:2]
        left[2] = grad @ left[:2]
        fwd /= np.linalg.norm(fwd)
        up = np.cross(fwd, left)
        up /= np.linalg.norm(up)
        left = np.cross(up, fwd)
        pose = np.eye(4)
        wobble = np.random.default_rng([self.wobble_seed, frame]).normal(0.0, np.radians(0.3), 2)
        pitch, roll = self.mount[0] + wobble[0], self.mount[1] + wobble[1]
        cp, sp, cr, sr = np.cos(pitch), np.sin(pitch), np.cos(roll), np.sin(roll)
        tilt = np.array([[cp, 0, sp], [0, 1, 0], [-sp, 0, cp]]) @ np.array(
            [[1, 0, 0], [0, cr, -sr], [0, sr, cr]]
        )
        pose[:3, :3] = np.stack([fwd, left, up], 1) @ tilt
        pose[:3, 3] = [xy[0], xy[1], self.height(xy[None])[0] + SENSOR_HEIGHT]
        return pose

    def agent_pose(self, agent: Agent, frame: int) -> obj.Pose2 | None:
        """Pose of ``agent`` at ``frame``, or None once it has left its street."""
        street = self.streets[agent.street]
        s = agent.s0 + agent.speed * FRAME_DT * frame
        if not street.s[0] + 5 < s < street.s[-1] - 5:
            return None
        xy, yaw = street.xy_at(s, agent.d)
        if agent.speed < 0:
            yaw = yaw + np.pi
        return obj.Pose2(float(xy[0]), float(xy[1]), float(self.ground_z(xy)[0]), float(yaw))

    def dynamic(self, frame: int) -> Mesh:
        """Mesh of all agents at ``frame`` (world frame)."""
        mb = MeshBuilder()
        for agent in self.agents:
            pose = self.agent_pose(agent, frame)
            if pose is not None:
                distance = agent.s0 + abs(agent.speed) * FRAME_DT * frame
                build_agent(mb, agent, pose, phase=distance / 0.35)
        return mb.build()


def build_agent(mb: MeshBuilder, agent: Agent, pose: obj.Pose2, phase: float = 0.0) -> None:
    """Add ``agent`` at ``pose`` to ``mb`` with its builder from :mod:`.objects`."""
    k = agent.kind
    if k == "person":
        obj.person(mb, pose, agent.dims, agent.label, agent.instance, phase)
    elif k == "bicycle":
        obj.bicycle(mb, pose, agent.rider, agent.label, agent.instance)
    elif k == "motorcycle":
        obj.motorcycle(mb, pose, agent.rider, agent.label, agent.instance)
    else:
        builder: Callable = {
            "car": obj.car,
            "truck": obj.truck,
            "bus": obj.bus,
            "other": obj.other_vehicle,
        }[k]
        builder(mb, pose, agent.dims, agent.label, agent.instance)


_VEHICLE_DIMS = {
    "car": ([3.9, 1.7, 1.4], [4.9, 1.95, 1.65]),
    "truck": ([6.5, 2.3, 2.9], [9.0, 2.55, 3.6]),
    "bus": ([10.5, 2.5, 2.9], [12.5, 2.55, 3.3]),
    "other": ([4.0, 1.9, 2.0], [6.0, 2.3, 2.8]),
}
_LABEL = {"car": 10, "truck": 18, "bus": 13, "other": 20}


def _person_dims(rng: np.random.Generator) -> np.ndarray:
    return np.array([rng.uniform(1.55, 1.95), rng.uniform(0.38, 0.5)])


@dataclass
class _Params:
    """Per-layout parameters drawn once per scene."""

    lanes: int
    lane_w: float
    median: float
    parking: tuple[float, float]
    lawn: tuple[float, float]
    sidewalk: tuple[float, float]
    setback: tuple[float, float]
    yard: tuple
    p_building: float
    height: tuple[float, float]
    tree_spacing: float  # 0 = no street trees
    p_hedge: float
    p_lot: float
    relief: float


def _params(layout: str, rng: np.random.Generator) -> _Params:
    u = rng.uniform
    two = lambda p, w: (w if rng.random() < p else 0.0, w if rng.random() < p else 0.0)  # noqa: E731
    if layout == "urban":
        return _Params(
            1 if rng.random() < 0.7 else 2,
            u(3.3, 3.8),
            0.0,
            two(0.5, u(2.1, 2.5)),
            two(0.4, u(1.2, 2.5)),
            (u(3.5, 6.0), u(3.5, 6.0)),
            (u(0.5, 4.0), u(0.5, 4.0)),
            (YARD_PAVED, YARD_GRASS),
            0.75,
            (7.0, 22.0),
            u(5, 9),
            0.45,
            0.06,
            0.6,
        )
    if layout == "curve":
        return _Params(
            1,
            u(3.4, 3.9),
            0.0,
            two(0.6, u(2.1, 2.5)),
            two(0.5, u(1.5, 2.5)),
            (u(2.5, 4.5), u(2.5, 4.5)),
            (u(1, 5), u(1, 5)),
            (YARD_GRASS, YARD_PAVED),
            0.7,
            (6.0, 18.0),
            u(5, 9),
            0.5,
            0.1,
            0.9,
        )
    if layout == "suburban":
        return _Params(
            1,
            u(3.3, 3.8),
            0.0,
            two(0.5, u(2.0, 2.4)),
            two(0.7, u(1.5, 3.0)),
            (u(2.0, 3.5), u(2.0, 3.5)),
            (u(3, 8), u(3, 8)),
            (YARD_GRASS, YARD_GRASS),
            0.75,
            (5.0, 9.5),
            u(5, 8),
            0.75,
            0.12,
            1.0,
        )
    if layout == "boulevard":
        return _Params(
            2,
            u(3.2, 3.5),
            u(1.5, 3.0),
            two(0.6, u(2.2, 2.5)),
            two(0.5, u(1.5, 3)),
            (u(3.0, 5.0), u(3.0, 5.0)),
            (u(2, 6), u(2, 6)),
            (YARD_GRASS, YARD_PAVED),
            0.6,
            (8.0, 25.0),
            u(6, 10),
            0.45,
            0.25,
            0.8,
        )
    raise LayoutError(f"unknown layout '{layout}'; expected one of {', '.join(LAYOUTS)}")


class _Populator:
    """Places lots, furniture, parked vehicles and agents; keeps the instance counter."""

    def __init__(self, rng: np.random.Generator, scene: Scene, mb: MeshBuilder, prm: _Params):
        self.rng, self.scene, self.mb, self.prm = rng, scene, mb, prm
        self.next_instance = 1
        lo, hi = scene.bounds
        self.lo, self.hi = lo + 2, hi - 2

    def instance(self) -> int:
        self.next_instance += 1
        return self.next_instance - 1

    def pose(self, street: Street, s: float, d: float, yaw_off: float = 0.0) -> obj.Pose2 | None:
        """Ground pose at street coordinates, None outside the raster."""
        xy, yaw = street.xy_at(s, d)
        if np.any(xy < self.lo) or np.any(xy > self.hi):
            return None
        return obj.Pose2(
            float(xy[0]), float(xy[1]), float(self.scene.ground_z(xy)[0]), float(yaw + yaw_off)
        )

    # -- lots -------------------------------------------------------------------------------
    def lots(self, street: Street, side: int, s_from: float, s_to: float) -> None:
        rng, prm = self.rng, self.prm
        sign = 1.0 if side == 0 else -1.0
        yaw_off = 0.0 if side == 0 else np.pi  # building frame: facade along x, body to +y
        front = street.frontage(side)
        sidewalk_out = float(street.edges(side)[4])
        s = s_from
        while s < s_to:
            length = rng.uniform(9, 26)
            mid = s + length / 2
            if street.in_gap(s, 3.0) or street.in_gap(s + length, 3.0):
                s += 4.0
                continue
            s += length
            if rng.random() < prm.p_building:
                setback = rng.uniform(0, 1.5) if rng.random() < 0.7 else rng.uniform(2, 6)
                p = self.pose(street, mid, sign * (front + setback), yaw_off)
                if p is not None:
                    obj.building(
                        self.mb,
                        p,
                        length - rng.uniform(0, 1.5),
                        rng.uniform(9, 18),
                        rng.uniform(*prm.height),
                        rng,
                    )
                self.yard(street, side, s - length, s, sidewalk_out, front + setback)
                depth = front + setback - sidewalk_out
                if depth > 2.5 and rng.random() < 0.4:  # fence between neighbouring yards
                    p = self.pose(street, s - 0.2, sign * (sidewalk_out + depth / 2), np.pi / 2)
                    if p is not None:
                        obj.fence(self.mb, p, depth - 0.5, rng)
                if rng.random() < 0.25:  # gravel drive / courtyard in front of it
                    self.paint_area(
                        street, s - length, s, sign, sidewalk_out, front + setback, GRAVEL
                    )
            else:
                self.open_lot(street, side, s - length, s, front)
            if rng.random() < prm.p_hedge:  # hedge or fence along the sidewalk
                p = self.pose(street, mid, sign * (sidewalk_out + 0.6))
                if p is not None:
                    if rng.random() < 0.65:
                        obj.hedge(self.mb, p, length * rng.uniform(0.5, 0.95), rng)
                    else:
                        obj.fence(self.mb, p, length * rng.uniform(0.5, 0.95), rng)

    def yard(self, street: Street, side: int, s0: float, s1: float, d0: float, d1: float):
        """Front yard between sidewalk (|d| = d0) and facade (|d| = d1): bushes, a car."""
        rng = self.rng
        sign = 1.0 if side == 0 else -1.0
        if d1 - d0 < 2.0:
            return
        for _ in range(rng.poisson((s1 - s0) * (d1 - d0) / 15)):
            p = self.pose(street, rng.uniform(s0, s1), sign * rng.uniform(d0 + 0.8, d1 - 0.8))
            if p is not None:
                if rng.random() < 0.3:
                    obj.tree(self.mb, p, rng, scale=0.8)
                else:
                    obj.bush(self.mb, p, rng)
        if d1 - d0 > 6 and rng.random() < 0.4:  # car in the driveway
            p = self.pose(street, rng.uniform(s0 + 2, s1 - 2), sign * (d0 + 3.2), np.pi / 2)
            if p is not None:
                self.parked(p, "car")

    def open_lot(self, street: Street, side: int, s0: float, s1: float, front: float) -> None:
        """A lot without a building: vegetation, parking lot, other-structure or waste land."""
        rng = self.rng
        sign = 1.0 if side == 0 else -1.0
        r = rng.random()
        depth = rng.uniform(12, 30)
        if r < self.prm.p_lot / (1 - self.prm.p_building + 1e-9):  # parking lot
            self.paint_area(street, s0, s1, sign, front - 1.0, front + depth, LOT)
            for row in range(int(depth // 6)):
                d = front + 2.5 + row * 6.0
                for sc in np.arange(s0 + 1.5, s1 - 1.5, 2.6):
                    if rng.random() < 0.6:
                        p = self.pose(street, sc, sign * d, np.pi / 2 + rng.normal(0, 0.05))
                        if p is not None:
                            self.parked(p, "car" if rng.random() < 0.9 else "other")
        elif r < 0.85:  # green lot: trees and bushes
            n = rng.poisson((s1 - s0) * depth / 25)
            for _ in range(n):
                p = self.pose(street, rng.uniform(s0, s1), sign * rng.uniform(front, front + depth))
                if p is not None:
                    (obj.tree if rng.random() < 0.4 else obj.bush)(self.mb, p, rng)
        elif r < 0.93:  # other-structure (wall / shed / shelter)
            p = self.pose(street, (s0 + s1) / 2, sign * (front + 1.5), 0.0 if side == 0 else np.pi)
            if p is not None:
                obj.shelter(self.mb, p, rng)
        else:  # waste land with unlabeled clutter
            self.paint_area(street, s0, s1, sign, front, front + depth, WASTE)
            for _ in range(rng.integers(1, 4)):
                p = self.pose(street, rng.uniform(s0, s1), sign * rng.uniform(front + 1, front + 8))
                if p is not None:
                    obj.clutter(self.mb, p, rng)

    def paint_area(
        self, street: Street, s0: float, s1: float, sign: float, d0: float, d1: float, kind
    ) -> None:
        raster = self.scene.raster
        s, d, inside = self.cells[id(street)]
        dd = d * sign
        m = inside & (s >= s0) & (s < s1) & (dd >= d0) & (dd < d1)
        raster.paint(m.reshape(raster.ny, raster.nx), kind)

    # -- along the curb ---------------------------------------------------------------------
    def curbside(self, street: Street, side: int, s_from: float, s_to: float) -> None:
        rng, prm = self.rng, self.prm
        sign = 1.0 if side == 0 else -1.0
        e = street.edges(side)
        road, park, lawn, walk = e[1], e[2], e[3], e[4]
        to_road = -np.pi / 2 if side == 0 else np.pi / 2

        def each(spacing: float, fn: Callable[[float], None]) -> None:
            s = s_from + rng.uniform(0, spacing)
            while s < s_to:
                if not street.in_gap(s, 2.0):
                    fn(s)
                s += spacing * rng.uniform(0.7, 1.3)

        def place(d: float, yaw: float = 0.0):
            return lambda s: self.pose(street, s, sign * d, yaw)

        if prm.tree_spacing > 0:
            d_tree = (park + lawn) / 2 if lawn > park + 1.0 else park + rng.uniform(1.0, 1.6)
            each(prm.tree_spacing, lambda s: (p := place(d_tree)(s)) and obj.tree(self.mb, p, rng))
        each(
            rng.uniform(20, 34),
            lambda s: (p := place(park + 0.45, to_road)(s)) and obj.street_lamp(self.mb, p, rng),
        )
        each(
            rng.uniform(25, 50),
            lambda s: (p := place(park + 0.5)(s)) and obj.sign_post(self.mb, p, rng),
        )
        each(
            rng.uniform(12, 30),
            lambda s: (
                (p := place(rng.uniform(lawn + 0.5, walk - 0.4))(s))
                and obj.street_object(self.mb, p, rng)
            ),
        )
        each(
            rng.uniform(60, 120),
            lambda s: (
                (p := place(walk - 1.0, 0.0 if side == 0 else np.pi)(s))
                and obj.shelter(self.mb, p, rng)
            ),
        )
        each(rng.uniform(30, 60), lambda s: self.bike_rack(street, s, sign * (walk - 0.6)))
        each(
            rng.uniform(40, 90),
            lambda s: (
                (p := place(rng.uniform(lawn + 0.5, walk - 0.5), rng.uniform(0, 2 * np.pi))(s))
                and obj.person(
                    self.mb, p, _person_dims(rng), 30, self.instance(), rng.uniform(0, 6)
                )
            ),
        )
        if park - road > 1.5:  # parked vehicles in the parking lane
            s = s_from
            while s < s_to:
                kind = rng.choice(
                    ["car", "truck", "other", "motorcycle"], p=[0.86, 0.04, 0.04, 0.06]
                )
                lo_hi = _VEHICLE_DIMS.get(str(kind), ([2.2], [2.2]))
                length = rng.uniform(lo_hi[0][0], lo_hi[1][0])
                mid = s + length / 2
                s += length + rng.uniform(0.6, 3.0)
                if street.in_gap(mid, 6.0) or rng.random() > 0.45:
                    continue
                flip = 0.0 if (side == 1) ^ (rng.random() < 0.1) else np.pi
                p = self.pose(street, mid, sign * (road + (park - road) / 2), flip)
                if p is not None:
                    self.parked(p, str(kind), length)

    def backdrop(self, street: Street, s_from: float, s_to: float) -> None:
        """Second row behind the frontage: tall trees and buildings that show above and between
        the street's buildings, giving the far returns (30-60 m) real scans have."""
        rng = self.rng
        for side, sign in ((0, 1.0), (1, -1.0)):
            s = s_from
            while s < s_to:
                s += rng.uniform(8, 22)
                d = street.frontage(side) + rng.uniform(18, 45)
                if rng.random() < 0.6:
                    p = self.pose(street, s, sign * d, 0.0 if side == 0 else np.pi)
                    if p is not None:
                        obj.building(
                            self.mb,
                            p,
                            rng.uniform(10, 25),
                            rng.uniform(10, 20),
                            rng.uniform(10, 30),
                            rng,
                        )
                else:
                    for _ in range(rng.integers(1, 4)):
                        p = self.pose(
                            street, s + rng.uniform(-5, 5), sign * (d + rng.uniform(-5, 5))
                        )
                        if p is not None:
                            obj.tree(self.mb, p, rng, scale=rng.uniform(1.0, 1.5))

    def bike_rack(self, street: Street, s: float, d: float) -> None:
        for k in range(int(self.rng.integers(1, 5))):
            p = self.pose(street, s + 0.7 * k, d, np.pi / 2 + self.rng.normal(0, 0.1))
            if p is not None:
                obj.bicycle(self.mb, p, None, 11, self.instance())

    def parked(self, p: obj.Pose2, kind: str, length: float | None = None) -> None:
        rng = self.rng
        if kind == "motorcycle":
            obj.motorcycle(self.mb, p, None, 15, self.instance())
            return
        dims = rng.uniform(*_VEHICLE_DIMS[kind])
        if length is not None:
            dims[0] = length
        build_agent(self.mb, Agent(kind, _LABEL[kind], self.instance(), dims, 0, 0, 0, 0), p)

    # -- moving agents ----------------------------------------------------------------------
    @staticmethod
    def window(street_index: int, travel: float, direction: int, reach: float) -> tuple:
        """Arc-length window (start, end) where movers of ``direction`` start. On crossing
        streets movers start beyond the main street and drive away from it, so nothing ever
        crosses the ego's path."""
        if street_index == 0:
            return (-70.0, travel + 100.0) if direction > 0 else (travel + 100.0, -70.0)
        return (reach, 110.0) if direction > 0 else (-reach, -110.0)

    def traffic(
        self, k: int, street: Street, travel: float, ego_lane: int | None, reach: float
    ) -> None:
        rng = self.rng
        for direction in (1, -1):
            for lane in range(street.lanes):
                d = -direction * (street.median + (lane + 0.5) * street.lane_w)
                speed = rng.uniform(6, 14) * direction  # one speed per lane: no overtaking
                s, end = self.window(k, travel, direction, reach)
                if direction > 0 and lane == ego_lane:  # stay ahead of the ego
                    speed = max(abs(speed), self.scene.ego_step / FRAME_DT + 1)
                    s = rng.uniform(14, 30)
                s += direction * rng.uniform(0, 15)
                while (s - end) * direction < 0:
                    near_ego = k == 0 and -12 < s < 12
                    if rng.random() < 0.45 and not near_ego:
                        kind = rng.choice(
                            ["car", "truck", "bus", "other", "motorcycle"],
                            p=[0.8, 0.06, 0.05, 0.04, 0.05],
                        )
                        self.mover(str(kind), k, s, d, speed)
                    s += direction * rng.uniform(14, 40)
        if k == 0:  # a motorcyclist always comes the other way: rare class, always present
            d = street.median + 0.8 * street.lane_w
            self.mover("motorcycle", k, travel / 2 + rng.uniform(15, 35), d, -rng.uniform(6, 10))

    def mover(self, kind: str, street: int, s: float, d: float, speed: float) -> None:
        rng = self.rng
        if kind == "motorcycle":
            agent = Agent(
                kind, 255, self.instance(), np.zeros(0), street, s, d, speed, _person_dims(rng)
            )
        else:
            agent = Agent(
                kind,
                MOVING[_LABEL[kind]],
                self.instance(),
                rng.uniform(*_VEHICLE_DIMS[kind]),
                street,
                s,
                d,
                speed,
            )
        self.scene.agents.append(agent)

    def vulnerable(
        self, k: int, street: Street, travel: float, ego_lane: int | None, reach: float
    ) -> None:
        """Pedestrians on the sidewalks, bicyclists on the road edge away from the ego."""
        rng = self.rng
        for side, sign in ((0, 1.0), (1, -1.0)):
            e = street.edges(side)
            for _ in range(rng.poisson(3)):
                direction = int(rng.choice([-1, 1]))
                s0, s1 = self.window(k, travel, direction, reach)
                d = sign * rng.uniform(e[3] + 0.4, e[4] - 0.4)
                speed = rng.uniform(0.9, 1.7) * direction
                self.scene.agents.append(
                    Agent(
                        "person",
                        254,
                        self.instance(),
                        _person_dims(rng),
                        k,
                        s0 + (s1 - s0) * rng.random(),
                        d,
                        speed,
                    )
                )
        # bicyclists: oncoming side always; own side only when the ego is not in the outer lane
        sides = [1.0]
        if k > 0 or (ego_lane is not None and ego_lane < street.lanes - 1):
            sides.append(-1.0)
        for sign in sides:
            direction = -1 if sign > 0 else 1
            s0, s1 = self.window(k, travel, direction, reach)
            for _ in range(rng.poisson(1.5)):
                self.scene.agents.append(
                    Agent(
                        "bicycle",
                        253,
                        self.instance(),
                        np.zeros(0),
                        k,
                        s0 + (s1 - s0) * rng.uniform(0, 0.7),
                        sign * (street.half_road - 0.7),
                        rng.uniform(3, 6) * direction,
                        _person_dims(rng),
                    )
                )


def build_scene(rng: np.random.Generator, layout: str, frames: int) -> Scene:
    """Generate a scene for ``frames`` frames of ego motion. Deterministic given ``rng``."""
    if frames < 1:
        raise LayoutError(f"frames must be >= 1, got {frames}")
    prm = _params(layout, rng)
    ego_step = rng.uniform(0.6, 1.3)
    travel = ego_step * (frames - 1)
    bend = None
    angle = 0.0
    if layout == "curve":
        bend = rng.uniform(-5, travel * 0.5 + 5)
        angle = rng.choice([-1, 1]) * rng.uniform(np.radians(35), np.radians(90))
    # T-junctions close the view at one or both ends (buildings 35-65 m away, as in real towns)
    front = travel + 130.0
    back = -130.0
    if layout != "curve" and rng.random() < 0.7:
        front = travel + rng.uniform(35, 65)
    if layout != "curve" and rng.random() < 0.5:
        back = -rng.uniform(35, 65)
    s_main, xy, heading = centerline((0.0, 0.0), 0.0, back, front, bend, rng.uniform(25, 45), angle)
    main = Street(
        s_main,
        xy,
        heading,
        prm.lanes,
        prm.lane_w,
        prm.median,
        prm.parking,
        prm.lawn,
        prm.sidewalk,
        prm.setback,
        green_median=rng.random() < 0.8,
        edge_lines=rng.random() < 0.5,
    )
    streets = [main]
    # crossing streets (perpendicular, on the straight part before a bend); tee: which side of
    # a T-junction's cross street faces away from the main street (-1: none, else 0 or 1)
    crossings: list[tuple[float, int]] = []
    if layout != "curve" and rng.random() < 0.45:  # the ego drives through this one
        crossings.append((rng.uniform(0.3, 0.7) * travel + 8, -1))
    elif layout != "curve" and rng.random() < 0.6:
        crossings.append((rng.choice([-1, 1]) * rng.uniform(30, 45) + travel / 2, -1))
    if front < travel + 100:
        crossings.append((front, 1))
    if back > -100:
        crossings.append((back, 0))
    tees: list[int] = [-1]
    for sc, tee in crossings:
        if bend is not None and sc > bend - 20:
            continue
        if tee < 0 and any(abs(sc - o) < 25 for o, t in crossings if t >= 0):
            continue
        (cx, cy), hy = main.xy_at(sc, 0.0)
        lanes = 1 if rng.random() < 0.7 else 2
        sw = rng.uniform(2.5, 4.5)
        cs, cxy, ch = centerline((cx, cy), hy + np.pi / 2, -130, 130)
        cross = Street(
            cs,
            cxy,
            ch,
            lanes,
            rng.uniform(3.0, 3.4),
            0.0,
            (0.0, 0.0),
            (0.0, 0.0),
            (sw, sw),
            (rng.uniform(0, 2),) * 2,
        )
        half = cross.half_road + sw
        main.gaps.append((sc - half, sc + half))
        cross.gaps.append(
            (
                -max(main.frontage(0), main.frontage(1)) - 1,
                max(main.frontage(0), main.frontage(1)) + 1,
            )
        )
        streets.append(cross)
        tees.append(tee)
    ego_lane = int(rng.integers(prm.lanes))  # on multi-lane roads, any lane of its direction
    ego_d = -(prm.median + (ego_lane + 0.5) * prm.lane_w)
    path, _ = main.xy_at(np.linspace(0, travel, 16), ego_d)
    lo, hi = path.min(0) - SCENE_MARGIN, path.max(0) + SCENE_MARGIN
    height = HeightField.random(rng, prm.relief * 2.0)
    raster = GroundRaster.empty(lo, hi, BASE_GRASS if rng.random() < 0.85 else BASE_OTHER)
    centers = raster.centers()
    mount = tuple(np.clip(rng.normal(0.0, np.radians(1.0), 2), -0.035, 0.035))
    scene = Scene(
        layout,
        Mesh(*(np.zeros(0),) * 5),
        streets,
        height,
        raster,
        [],
        0.0,
        ego_d,
        ego_step,
        mount,
        int(rng.integers(2**31)),
        (lo, hi),
    )
    mb = MeshBuilder()
    pop = _Populator(rng, scene, mb, prm)
    pop.cells = {}
    for st in streets:
        yard = prm.yard if st is main else (YARD_PAVED, YARD_PAVED)
        pop.cells[id(st)] = paint_street(raster, st, yard, centers)
    for k, st in enumerate(streets):
        s_from, s_to = float(st.s[0]) + 2, float(st.s[-1]) - 2
        for side in (0, 1):
            if k == 0:
                pop.lots(st, side, s_from, s_to)
                pop.curbside(st, side, s_from, s_to)
            elif side == tees[k]:  # far side of a T-junction: a continuous frontage
                st.gaps.clear()
                pop.lots(st, side, s_from, s_to)
                pop.curbside(st, side, s_from, s_to)
            else:  # crossing streets: only beyond the main street's frontage
                reach = max(main.frontage(0), main.frontage(1)) + 20
                for a, b in ((s_from, -reach), (reach, s_to)):
                    pop.lots(st, side, a, b)
                    pop.curbside(st, side, a, b)
        reach = max(main.frontage(0), main.frontage(1)) + 3
        pop.traffic(k, st, travel, ego_lane if k == 0 else None, reach)
        pop.vulnerable(k, st, travel, ego_lane if k == 0 else None, reach)
    pop.backdrop(main, float(main.s[0]) + 2, float(main.s[-1]) - 2)
    if main.median > 0 and main.green_median:  # trees and bushes on a planted median
        s = float(main.s[0]) + rng.uniform(2, 10)
        while s < main.s[-1] - 2:
            p = pop.pose(main, s, rng.normal(0, 0.3))
            if p is not None and not main.in_gap(s, 3.0):
                r = rng.random()
                if r < 0.5:
                    obj.tree(mb, p, rng)
                elif r < 0.8:
                    obj.hedge(mb, p, rng.uniform(3, 8), rng)
                else:
                    obj.bush(mb, p, rng)
            s += rng.uniform(7, 14)
    raster.add_to(mb, height)
    scene.static = mb.build()
    return scene
