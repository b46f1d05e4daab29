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
5. the ego path: along one lane of the main street at a constant 0.6-1.3 m per frame.

Layouts: ``urban`` (dense buildings, parking lanes), ``curve`` (a bend of 35-90 degrees),
``suburban`` (set-back houses, hedges, lawns, many trees) and ``boulevard`` (wide road with a
median, open lots and parking lots). Straight layouts may have a crossing that the ego drives
through, a crossing further away, and T-junctions closing the view at either end.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pcseg.data.synthetic import objects as obj
from pcseg.data.synthetic.agents import FRAME_DT, Agent, build_agent
from pcseg.data.synthetic.ground import (
    BASE_GRASS,
    BASE_OTHER,
    YARD_PAVED,
    GroundRaster,
    paint_street,
)
from pcseg.data.synthetic.layout import LAYOUTS, LayoutError, LayoutParams, layout_params
from pcseg.data.synthetic.mesh import Mesh, MeshBuilder
from pcseg.data.synthetic.populate import Populator
from pcseg.data.synthetic.streets import HeightField, Street, centerline

__all__ = ["FRAME_DT", "LAYOUTS", "SENSOR_HEIGHT", "Agent", "LayoutError", "Scene", "build_scene"]

SENSOR_HEIGHT = 1.73  # HDL-64E optical centre above the road (m), as on the KITTI car
SCENE_MARGIN = 90.0  # raster extends this far around the ego path (sensor range 80 m)


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
    bounds: tuple[np.ndarray, np.ndarray] | None = field(repr=False, default=None)  # xy lo, hi

    def ground_z(self, xy: np.ndarray) -> np.ndarray:
        """Ground surface height (N,) under world points (N, 2), curbs included."""
        xy = np.atleast_2d(xy)
        return self.height(xy) + self.raster.offset_at(xy)

    def ego_pose(self, frame: int, mount_height: float = SENSOR_HEIGHT) -> np.ndarray:
        """(4, 4) world pose of the sensor at ``frame``: x forward, y left, z up, origin at the
        optical centre ``mount_height`` m above the road, tilted with the local road slope."""
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
        pose[:3, 3] = [xy[0], xy[1], self.height(xy[None])[0] + mount_height]
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


def build_scene(rng: np.random.Generator, layout: str, frames: int) -> Scene:
    """Generate a scene for ``frames`` frames of ego motion. Deterministic given ``rng``.

    Steps (in this order, which fixes how ``rng`` is consumed): :func:`_main_street`,
    :func:`_cross_streets`, :func:`_empty_scene` (ego lane, ground raster, relief, mount),
    :func:`_populate` (ground bands, lots, furniture, traffic), :func:`_plant_median`, then the
    ground raster becomes the last part of the static mesh.
    """
    if frames < 1:
        raise LayoutError(f"frames must be >= 1, got {frames}")
    prm = layout_params(layout, rng)
    ego_step = rng.uniform(0.6, 1.3)
    travel = ego_step * (frames - 1)
    main, bend, front, back = _main_street(rng, layout, prm, travel)
    streets, tees = _cross_streets(rng, layout, main, travel, bend, front, back)
    scene, ego_lane = _empty_scene(rng, layout, prm, streets, travel, ego_step)
    mb = MeshBuilder()
    pop = Populator(rng, scene, mb, prm)
    _populate(pop, scene, prm, tees, travel, ego_lane)
    _plant_median(pop, main)
    scene.raster.add_to(mb, scene.height)
    scene.static = mb.build()
    return scene


def _main_street(
    rng: np.random.Generator, layout: str, prm: LayoutParams, travel: float
) -> tuple[Street, float | None, float, float]:
    """The main street along the ego path: straight, or bent for ``curve``; T-junctions close
    the view at one or both ends (buildings 35-65 m away, as in real towns). Returns the street,
    the bend's arc length (None), and the arc lengths of its front and back ends."""
    bend = None
    angle = 0.0
    if layout == "curve":
        bend = rng.uniform(-5, travel * 0.5 + 5)
        angle = rng.choice([-1, 1]) * rng.uniform(np.radians(35), np.radians(90))
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
    return main, bend, front, back


def _cross_streets(
    rng: np.random.Generator,
    layout: str,
    main: Street,
    travel: float,
    bend: float | None,
    front: float,
    back: float,
) -> tuple[list[Street], list[int]]:
    """Crossing streets (perpendicular, on the straight part before a bend): one the ego
    drives through or one further away, and the T-junctions at the ends. Returns all streets
    (main first) and, per street, which side of a T-junction's cross street faces away from
    the main street (-1: none, else 0 or 1)."""
    crossings: list[tuple[float, int]] = []
    if layout != "curve" and rng.random() < 0.45:  # the ego drives through this one
        crossings.append((rng.uniform(0.3, 0.7) * travel + 8, -1))
    elif layout != "curve" and rng.random() < 0.6:
        crossings.append((rng.choice([-1, 1]) * rng.uniform(30, 45) + travel / 2, -1))
    if front < travel + 100:
        crossings.append((front, 1))
    if back > -100:
        crossings.append((back, 0))
    streets, tees = [main], [-1]
    for sc, tee in crossings:
        if bend is not None and sc > bend - 20:
            continue
        if tee < 0 and any(abs(sc - o) < 25 for o, t in crossings if t >= 0):
            continue
        streets.append(_cross_street(rng, main, sc))
        tees.append(tee)
    return streets, tees


def _cross_street(rng: np.random.Generator, main: Street, sc: float) -> Street:
    """A street crossing ``main`` at arc length ``sc``; both get the gap of the crossing."""
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
    reach = max(main.frontage(0), main.frontage(1)) + 1
    cross.gaps.append((-reach, reach))
    return cross


def _empty_scene(
    rng: np.random.Generator,
    layout: str,
    prm: LayoutParams,
    streets: list[Street],
    travel: float,
    ego_step: float,
) -> tuple[Scene, int]:
    """The scene before anything is placed: ego lane (any lane of its direction on
    multi-lane roads), the ground raster around the ego path, relief and sensor mount.
    Returns the scene and the ego's lane index."""
    main = streets[0]
    ego_lane = int(rng.integers(prm.lanes))
    ego_d = -(prm.median + (ego_lane + 0.5) * prm.lane_w)
    path, _ = main.xy_at(np.linspace(0, travel, 16), ego_d)
    lo, hi = path.min(0) - SCENE_MARGIN, path.max(0) + SCENE_MARGIN
    height = HeightField.random(rng, prm.relief * 2.0)
    raster = GroundRaster.empty(lo, hi, BASE_GRASS if rng.random() < 0.85 else BASE_OTHER)
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
    return scene, ego_lane


def _populate(
    pop: Populator, scene: Scene, prm: LayoutParams, tees: list[int], travel: float, ego_lane: int
) -> None:
    """Paint every street's ground bands, then along each street side the lots and curbside
    furniture (on crossing streets only beyond the main street's frontage, except on the far
    side of a T-junction), the traffic and the pedestrians; last the backdrop behind the main
    street's frontage."""
    streets = scene.streets
    main = streets[0]
    centers = scene.raster.centers()
    for st in streets:
        yard = prm.yard if st is main else (YARD_PAVED, YARD_PAVED)
        pop.cells[id(st)] = paint_street(scene.raster, st, yard, centers)
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


def _plant_median(pop: Populator, main: Street) -> None:
    """Trees, hedges and bushes every 7-14 m on a planted median."""
    if not (main.median > 0 and main.green_median):
        return
    rng, mb = pop.rng, pop.mb
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
