"""Populating a scene: lots along the streets, street furniture, parked and moving things.

:class:`Populator` walks each street side in arc length and places buildings or open lots
(vegetation, parking lots, other-structures, waste land with unlabeled clutter), front yards,
hedges and fences, curbside trees, lamps, signs, bins, shelters, bicycle racks, standing people
and parked vehicles; then traffic and pedestrians as :class:`~.agents.Agent` records. Nothing
that moves ever crosses the ego's lane.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from pcseg.data.synthetic import objects as obj
from pcseg.data.synthetic.agents import (
    FRAME_DT,
    MOVING,
    VEHICLE_DIMS,
    VEHICLE_LABEL,
    Agent,
    build_agent,
    person_dims,
    vehicle_dims,
)
from pcseg.data.synthetic.ground import GRAVEL, LOT, WASTE, GroundKind
from pcseg.data.synthetic.layout import LayoutParams
from pcseg.data.synthetic.mesh import MeshBuilder
from pcseg.data.synthetic.streets import Street

if TYPE_CHECKING:
    from pcseg.data.synthetic.scene import Scene


class Populator:
    """Places lots, furniture, parked vehicles and agents; keeps the instance counter."""

    def __init__(self, rng: np.random.Generator, scene: Scene, mb: MeshBuilder, prm: LayoutParams):
        self.rng, self.scene, self.mb, self.prm = rng, scene, mb, prm
        self.next_instance = 1
        #: street id -> (s, d, inside) of every raster cell, filled by the caller
        self.cells: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        if scene.bounds is None:
            raise ValueError("the scene needs its raster bounds before it can be populated")
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
                if depth > 2.5 and rng.random() < 0.6:  # fence between neighbouring yards
                    p = self.pose(street, s - 0.2, sign * (sidewalk_out + depth / 2), np.pi / 2)
                    if p is not None:
                        obj.fence(self.mb, p, depth - 0.5, rng)
                if rng.random() < 0.25:  # gravel drive / courtyard in front of it
                    self.paint_area(
                        street, s - length, s, sign, sidewalk_out, front + setback, GRAVEL
                    )
            else:
                self.open_lot(street, side, s - length, s, front)
            if rng.random() < prm.p_shrubs:  # a bed of low shrubs along the sidewalk
                p = self.pose(street, mid, sign * (sidewalk_out + rng.uniform(0.3, 0.7)))
                if p is not None:
                    obj.shrub_bed(self.mb, p, length * rng.uniform(0.3, 0.9), rng)
            if rng.random() < prm.p_hedge:  # hedge or fence along the sidewalk
                p = self.pose(street, mid, sign * (sidewalk_out + 0.6))
                if p is not None:
                    if rng.random() < 0.45:
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
                r = rng.random()
                if r < 0.3:
                    obj.tree(self.mb, p, rng, scale=0.8)
                elif r < 0.65:
                    obj.bush(self.mb, p, rng)
                else:  # generator 5: low shrubs as often as bushes
                    obj.shrub_bed(self.mb, p, rng.uniform(1.0, 4.0), rng)
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
        elif r < 0.85:  # green lot: trees and bushes, often fenced off from the sidewalk
            if rng.random() < 0.5:
                p = self.pose(street, (s0 + s1) / 2, sign * (front + 0.3))
                if p is not None:
                    obj.fence(self.mb, p, (s1 - s0) * rng.uniform(0.7, 0.98), rng)
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
        self,
        street: Street,
        s0: float,
        s1: float,
        sign: float,
        d0: float,
        d1: float,
        kind: GroundKind,
    ) -> None:
        """Paint ``kind`` over street coordinates s0..s1, |d| in d0..d1 on the ``sign`` side."""
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
        if lawn > park + 1.0:  # generator 5: shrubs on the planted strip between trees
            each(
                rng.uniform(10, 25),
                lambda s: (
                    (p := place((park + lawn) / 2)(s))
                    and obj.shrub_bed(self.mb, p, rng.uniform(1.5, 5.0), rng)
                ),
            )
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
                and obj.person(self.mb, p, person_dims(rng), 30, self.instance(), rng.uniform(0, 6))
            ),
        )
        if park - road > 1.5:  # parked vehicles in the parking lane
            s = s_from
            while s < s_to:
                kind = rng.choice(
                    ["car", "truck", "other", "motorcycle"], p=[0.86, 0.04, 0.04, 0.06]
                )
                lo_hi = VEHICLE_DIMS.get(str(kind), ([2.2], [2.2]))
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
                if rng.random() < 0.75:
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
        dims = vehicle_dims(kind, rng)
        if length is not None:
            dims[0] = length
        build_agent(self.mb, Agent(kind, VEHICLE_LABEL[kind], self.instance(), dims, 0, 0, 0, 0), p)

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
                # rare class, always present: the first oncoming mover in view is a truck
                want_truck = k == 0 and direction < 0 and lane == 0
                while (s - end) * direction < 0:
                    near_ego = k == 0 and -12 < s < 12
                    if want_truck and s < travel + 30:  # in view (behind the ego if near it)
                        self.mover("truck", k, -14.0 if near_ego else s, d, speed)
                        want_truck = False
                    elif rng.random() < 0.45 and not near_ego:
                        kind = rng.choice(
                            ["car", "truck", "bus", "other", "motorcycle"],
                            p=[0.8, 0.06, 0.05, 0.04, 0.05],
                        )
                        self.mover(str(kind), k, s, d, speed)
                    s += direction * rng.uniform(14, 40)
        if k == 0:  # a motorcyclist always comes the other way: rare class, always present
            d = street.median + 0.8 * street.lane_w
            self.mover("motorcycle", k, travel / 2 + rng.uniform(15, 35), d, -rng.uniform(6, 10))
            self.parked_motorcycle(street, travel)

    def parked_motorcycle(self, street: Street, travel: float) -> None:
        """A motorcycle parked on the sidewalk beside the curb within 25 m of the ego's path:
        like the truck and the motorcyclist, a rare class that every scene (so every validation
        scene) shows."""
        rng = self.rng
        side = int(rng.integers(2))
        sign = 1.0 if side == 0 else -1.0
        e = street.edges(side)
        for _ in range(10):  # find a spot away from crossings
            s = travel / 2 + rng.uniform(-25, 25)
            if not street.in_gap(s, 3.0):
                break
        else:
            return
        yaw = np.pi / 2 + rng.normal(0, 0.3)
        p = self.pose(street, s, sign * (e[3] + 0.9), yaw)
        if p is not None:
            self.parked(p, "motorcycle")

    def mover(self, kind: str, street: int, s: float, d: float, speed: float) -> None:
        rng = self.rng
        if kind == "motorcycle":
            agent = Agent(
                kind, 255, self.instance(), np.zeros(0), street, s, d, speed, person_dims(rng)
            )
        else:
            agent = Agent(
                kind,
                MOVING[VEHICLE_LABEL[kind]],
                self.instance(),
                vehicle_dims(kind, rng),
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
                        person_dims(rng),
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
                        person_dims(rng),
                    )
                )
