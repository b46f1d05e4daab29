"""Procedural objects: vehicles, people, vegetation, street furniture, buildings.

Every function adds one object to a :class:`~pcseg.data.synthetic.mesh.MeshBuilder` at a pose
``(x, y, z, yaw)`` (z = ground height under the object, yaw = heading in radians) with a raw
SemanticKITTI ``label`` and an ``instance`` id. Shape parameters come from an explicit ``dims``
or a numpy Generator, so a moving object is rebuilt identically at every frame from its stored
``dims`` and only its pose changes.

Raw ids (configs/labels/semantic-kitti.yaml): 10 car, 11 bicycle, 13 bus, 15 motorcycle,
18 truck, 20 other-vehicle, 30 person, 31 bicyclist, 32 motorcyclist, 50 building, 51 fence,
52 other-structure, 70 vegetation, 71 trunk, 80 pole, 81 traffic-sign, 99 other-object.
Moving variants (252-259) are chosen by the caller.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pcseg.data.synthetic.mesh import MeshBuilder


@dataclass(frozen=True)
class Pose2:
    """Ground pose of an object: position (x, y), ground height z and heading yaw (radians)."""

    x: float
    y: float
    z: float
    yaw: float

    def at(self, dx: float, dy: float, dz: float) -> tuple[float, float, float]:
        """World point of the object-frame offset (dx forward, dy left, dz up)."""
        c, s = np.cos(self.yaw), np.sin(self.yaw)
        return (self.x + c * dx - s * dy, self.y + s * dx + c * dy, self.z + dz)


def _box(mb: MeshBuilder, p: Pose2, off: tuple[float, float, float], size, label, mat, inst):
    mb.box(p.at(*off), size, label, mat, yaw=p.yaw, instance=inst)


def _wheels(
    mb: MeshBuilder,
    p: Pose2,
    length: float,
    width: float,
    r: float,
    label: int,
    inst: int,
    axles: int = 2,
) -> None:
    xs = np.linspace(-length * 0.34, length * 0.34, axles)
    for dx in xs:
        for side in (-1, 1):
            _box(
                mb,
                p,
                (dx, side * (width / 2 - 0.12), 0),
                (2 * r, 0.24, 2 * r),
                label,
                "rubber",
                inst,
            )


#: Body paints of passenger cars, darkest first; the 4th entry of a car's dims picks one.
CAR_PAINTS = ("car_paint", "car_paint_mid", "car_paint_light")


def car(mb: MeshBuilder, p: Pose2, dims: np.ndarray, label: int = 10, inst: int = 0) -> None:
    """Passenger car. dims = (length, width, height[, paint]), e.g. (4.5, 1.8, 1.5, 0): paint
    indexes :data:`CAR_PAINTS` (default 0, the dark one)."""
    length, width, height = dims[:3]
    paint = CAR_PAINTS[int(dims[3])] if len(dims) > 3 else CAR_PAINTS[0]
    _wheels(mb, p, length, width, 0.32, label, inst)
    _box(mb, p, (0, 0, 0.3), (length, width, 0.55), label, paint, inst)
    _box(mb, p, (length * 0.4, 0, 0.85), (length * 0.2, width * 0.96, 0.08), label, paint, inst)
    cabin = length * 0.5
    _box(
        mb,
        p,
        (-length * 0.06, 0, 0.85),
        (cabin, width * 0.9, height - 0.95),
        label,
        "car_glass",
        inst,
    )
    _box(
        mb,
        p,
        (-length * 0.06, 0, height - 0.1),
        (cabin * 0.92, width * 0.86, 0.1),
        label,
        paint,
        inst,
    )


def truck(mb: MeshBuilder, p: Pose2, dims: np.ndarray, label: int = 18, inst: int = 0) -> None:
    """Box truck: cab in front, cargo box behind. dims = (length, width, height)."""
    length, width, height = dims
    _wheels(mb, p, length, width, 0.5, label, inst, axles=3)
    cab = 2.2
    _box(
        mb,
        p,
        (length / 2 - cab / 2, 0, 0.5),
        (cab, width, height * 0.75 - 0.5),
        label,
        "truck_paint",
        inst,
    )
    _box(
        mb,
        p,
        (-cab / 2, 0, 0.9),
        (length - cab - 0.2, width, height - 0.9),
        label,
        "truck_paint",
        inst,
    )


def bus(mb: MeshBuilder, p: Pose2, dims: np.ndarray, label: int = 13, inst: int = 0) -> None:
    """Bus: long body with a glass band. dims = (length, width, height)."""
    length, width, height = dims
    _wheels(mb, p, length, width, 0.5, label, inst)
    _box(mb, p, (0, 0, 0.35), (length, width, 1.1), label, "truck_paint", inst)
    _box(mb, p, (0, 0, 1.45), (length, width * 0.98, height - 1.95), label, "car_glass", inst)
    _box(mb, p, (0, 0, height - 0.5), (length, width, 0.5), label, "truck_paint", inst)


def other_vehicle(
    mb: MeshBuilder, p: Pose2, dims: np.ndarray, label: int = 20, inst: int = 0
) -> None:
    """Trailer / caravan / tractor-like vehicle: tall box on a low chassis and a drawbar."""
    length, width, height = dims
    _wheels(mb, p, length * 0.4, width, 0.35, label, inst, axles=1)
    _box(mb, p, (0, 0, 0.45), (length, width, height - 0.45), label, "plastic", inst)
    _box(mb, p, (length / 2 + 0.6, 0, 0.4), (1.2, 0.1, 0.1), label, "metal", inst)


def person(
    mb: MeshBuilder, p: Pose2, dims: np.ndarray, label: int = 30, inst: int = 0, phase: float = 0.0
) -> None:
    """Standing or walking person. dims = (height, shoulder width); ``phase`` swings the legs."""
    height, shoulder = dims
    leg = 0.47 * height
    swing = 0.18 * np.sin(phase)
    for side, sgn in ((-1, 1), (1, -1)):
        _box(
            mb, p, (sgn * swing, side * shoulder * 0.2, 0), (0.16, 0.15, leg), label, "cloth", inst
        )
        _box(
            mb,
            p,
            (-sgn * swing * 0.6, side * shoulder * 0.55, leg + 0.1),
            (0.12, 0.1, 0.33 * height),
            label,
            "cloth",
            inst,
        )
    _box(mb, p, (0, 0, leg), (0.26, shoulder * 0.85, 0.36 * height), label, "cloth", inst)
    mb.ellipsoid(p.at(0, 0, height - 0.11), (0.1, 0.09, 0.12), label, "cloth", p.yaw, inst)


def bicycle(
    mb: MeshBuilder, p: Pose2, rider: np.ndarray | None, label: int = 11, inst: int = 0
) -> None:
    """Bicycle, optionally ridden (``rider`` = person dims; the rider shares ``label``, as
    SemanticKITTI labels a ridden bicycle and its rider together as bicyclist)."""
    for dx in (-0.55, 0.55):
        _box(mb, p, (dx, 0, 0), (0.68, 0.05, 0.68), label, "rubber", inst)
    _box(mb, p, (0, 0, 0.55), (1.0, 0.06, 0.1), label, "metal", inst)
    _box(mb, p, (0.45, 0, 0.9), (0.08, 0.55, 0.05), label, "metal", inst)
    if rider is not None:
        _rider(mb, p, rider, label, inst, seat=0.9)


def motorcycle(
    mb: MeshBuilder, p: Pose2, rider: np.ndarray | None, label: int = 15, inst: int = 0
) -> None:
    """Motorcycle, optionally with a rider (labelled together, like :func:`bicycle`)."""
    for dx in (-0.7, 0.7):
        _box(mb, p, (dx, 0, 0), (0.62, 0.16, 0.62), label, "rubber", inst)
    _box(mb, p, (0, 0, 0.3), (1.4, 0.4, 0.5), label, "car_paint", inst)
    _box(mb, p, (0.55, 0, 0.8), (0.1, 0.7, 0.15), label, "metal", inst)
    if rider is not None:
        _rider(mb, p, rider, label, inst, seat=0.8)


def _rider(mb: MeshBuilder, p: Pose2, dims: np.ndarray, label: int, inst: int, seat: float):
    height, shoulder = dims
    _box(mb, p, (-0.1, 0, seat), (0.28, shoulder * 0.85, 0.36 * height), label, "cloth", inst)
    for side in (-1, 1):
        _box(mb, p, (0.05, side * 0.15, seat - 0.5), (0.15, 0.13, 0.55), label, "cloth", inst)
    mb.ellipsoid(
        p.at(-0.05, 0, seat + 0.36 * height + 0.13), (0.11, 0.1, 0.13), label, "cloth", p.yaw, inst
    )


def tree(
    mb: MeshBuilder, p: Pose2, rng: np.random.Generator, inst: int = 0, scale: float = 1.0
) -> None:
    """Tree: trunk (71) under one or two crown ellipsoids (70)."""
    trunk_h = rng.uniform(0.6, 2.0) * scale
    r = rng.uniform(0.06, 0.16) * scale
    crown = rng.uniform(1.5, 3.2) * scale
    mb.cylinder((p.x, p.y, p.z - 0.2), r, trunk_h + crown * 0.3, 71, "bark", inst)
    cz = p.z + trunk_h + crown * 0.9
    mb.ellipsoid(
        (p.x, p.y, cz),
        (crown, crown * rng.uniform(0.85, 1.1), crown * 0.95),
        70,
        "foliage",
        rng.uniform(0, np.pi),
    )
    if rng.random() < 0.5:
        off = rng.normal(0, crown * 0.35, 2)
        mb.ellipsoid(
            (p.x + off[0], p.y + off[1], cz + crown * 0.5), (crown * 0.7,) * 3, 70, "foliage"
        )


def bush(mb: MeshBuilder, p: Pose2, rng: np.random.Generator) -> None:
    """Bush: a squat foliage ellipsoid (70) sitting on the ground."""
    r = rng.uniform(0.5, 1.4)
    mb.ellipsoid(
        (p.x, p.y, p.z + r * 0.5), (r, r * rng.uniform(0.7, 1.3), r * 0.75), 70, "foliage", p.yaw
    )


def hedge(mb: MeshBuilder, p: Pose2, length: float, rng: np.random.Generator) -> None:
    """Hedge: a long foliage box (70) along the heading, 0.5-2.1 m tall (generator 5: low
    trimmed hedges too; 0.8-2.1 m before)."""
    mb.box(
        (p.x, p.y, p.z - 0.1),
        (length, rng.uniform(0.6, 1.2), rng.uniform(0.6, 2.2)),
        70,
        "foliage",
        p.yaw,
    )


def shrub_bed(mb: MeshBuilder, p: Pose2, length: float, rng: np.random.Generator) -> None:
    """Bed of low shrubs (70) along the heading: overlapping flat foliage ellipsoids, 0.2-0.8 m
    tall, one every ~0.8 m of ``length``.

    Generator 5. Half the vegetation points of the labelled real scans lie below 0.75 m above
    the local ground (ground cover, shrubs along sidewalks and facades); the simulator's
    bushes, hedges and crowns put 85 % above it, and a network trained on them called the
    real low vegetation fence, sidewalk or terrain.
    """
    n = max(1, int(length / 0.8 + 0.5))
    for dx in np.linspace(-length / 2, length / 2, n):
        rz = rng.uniform(0.15, 0.45)
        c = p.at(dx + rng.normal(0, 0.15), rng.normal(0, 0.2), rz * rng.uniform(0.1, 0.7))
        mb.ellipsoid(
            c,
            (rng.uniform(0.35, 0.7), rng.uniform(0.3, 0.6), rz),
            70,
            "foliage",
            p.yaw + rng.normal(0, 0.3),
        )


def fence(mb: MeshBuilder, p: Pose2, length: float, rng: np.random.Generator) -> None:
    """Fence (51): posts plus a porous panel along the heading."""
    height = rng.uniform(0.9, 2.0)
    mat = "fence" if rng.random() < 0.6 else "concrete"
    _box(mb, p, (0, 0, 0), (length, 0.06, height), 51, mat, 0)
    for dx in np.arange(-length / 2, length / 2 + 1e-6, 2.5):
        _box(mb, p, (dx, 0, 0), (0.08, 0.08, height + 0.1), 51, "metal", 0)


def street_lamp(mb: MeshBuilder, p: Pose2, rng: np.random.Generator) -> None:
    """Lamp post (80): vertical pole with an arm over the road (heading = towards road)."""
    h = rng.uniform(5.0, 8.5)
    mb.cylinder((p.x, p.y, p.z), rng.uniform(0.07, 0.13), h, 80, "metal")
    _box(mb, p, (0.8, 0, h - 0.1), (1.6, 0.08, 0.08), 80, "metal", 0)
    _box(mb, p, (1.5, 0, h - 0.3), (0.5, 0.25, 0.2), 80, "metal", 0)


def sign_post(mb: MeshBuilder, p: Pose2, rng: np.random.Generator) -> None:
    """Traffic sign (81) on a thin pole (80); the plate faces along the heading."""
    h = rng.uniform(2.0, 2.8)
    mb.cylinder((p.x, p.y, p.z), 0.04, h + 0.3, 80, "metal")
    w = rng.uniform(0.5, 0.8)
    kind = rng.integers(3)
    size = [(0.04, w, w), (0.04, w * 1.3, w * 0.7), (0.04, w, w * 1.2)][kind]
    _box(mb, p, (0.05, 0, h - size[2] / 2 + 0.25), size, 81, "sign", 0)
    if rng.random() < 0.3:
        _box(mb, p, (0.05, 0, h - size[2] - 0.25), (0.04, w * 0.8, 0.35), 81, "sign", 0)


def traffic_light(mb: MeshBuilder, p: Pose2, rng: np.random.Generator) -> None:
    """Traffic-light pole (80) with a signal head, labelled traffic-sign (81)."""
    h = rng.uniform(3.0, 4.0)
    mb.cylinder((p.x, p.y, p.z), 0.09, h, 80, "metal")
    _box(mb, p, (0, 0, h - 0.2), (0.3, 0.35, 0.95), 81, "sign", 0)


def street_object(mb: MeshBuilder, p: Pose2, rng: np.random.Generator) -> None:
    """Other-object (99): bin, bollard, electrical cabinet, bench or planter."""
    kind = rng.integers(5)
    if kind == 0:
        mb.cylinder((p.x, p.y, p.z), 0.3, 1.05, 99, "plastic")
    elif kind == 1:
        mb.cylinder((p.x, p.y, p.z), 0.1, 0.9, 99, "metal")
    elif kind == 2:
        _box(mb, p, (0, 0, 0), (0.45, 0.9, 1.4), 99, "metal", 0)
    elif kind == 3:
        _box(mb, p, (0, 0, 0.4), (0.5, 1.8, 0.08), 99, "plastic", 0)
        _box(mb, p, (-0.22, 0, 0.4), (0.06, 1.8, 0.45), 99, "plastic", 0)
        for dy in (-0.8, 0.8):
            _box(mb, p, (0, dy, 0), (0.4, 0.06, 0.42), 99, "metal", 0)
    else:
        _box(mb, p, (0, 0, 0), (1.0, 1.0, 0.6), 99, "concrete", 0)


def shelter(mb: MeshBuilder, p: Pose2, rng: np.random.Generator) -> None:
    """Other-structure (52): bus shelter / kiosk / low wall."""
    kind = rng.integers(3)
    if kind == 0:
        length = rng.uniform(3, 5)
        _box(mb, p, (0, -0.7, 0), (length, 0.05, 2.3), 52, "glass", 0)
        for dx in (-length / 2, length / 2):
            _box(mb, p, (dx, 0, 0), (0.05, 1.4, 2.3), 52, "glass", 0)
        _box(mb, p, (0, 0, 2.3), (length + 0.3, 1.7, 0.12), 52, "metal", 0)
    elif kind == 1:
        _box(mb, p, (0, 0, 0), rng.uniform([2, 2, 2.3], [3.5, 3, 3]), 52, "concrete", 0)
    else:
        _box(mb, p, (0, 0, 0), (rng.uniform(4, 12), 0.3, rng.uniform(0.6, 1.6)), 52, "concrete", 0)


def clutter(mb: MeshBuilder, p: Pose2, rng: np.random.Generator) -> None:
    """Unlabeled (0) clutter: crates, building material, things no class covers."""
    for _ in range(rng.integers(1, 4)):
        off = rng.normal(0, 0.8, 2)
        mb.box(
            p.at(off[0], off[1], 0),
            rng.uniform([0.4, 0.4, 0.3], [2.0, 1.5, 1.6]),
            0,
            "plastic",
            p.yaw + rng.uniform(-0.5, 0.5),
        )


def building(
    mb: MeshBuilder, p: Pose2, width: float, depth: float, height: float, rng: np.random.Generator
) -> None:
    """Building (50) whose street facade is the local x axis at y=0.

    ``p`` is the middle of the facade line; the heading points along the facade and the building
    extends to the LEFT (+y in the object frame). The facade gets window recesses: a grid of
    piers and floor bands stands 0.3 m proud of the wall, so windows are 0.3 m deep holes, some
    glazed (porous glass). Optional setback upper storey and a roof parapet vary the skyline.
    """
    recess = 0.3
    _box(mb, p, (0, recess + depth / 2, -0.5), (width, depth, height + 0.5), 50, "facade", 0)
    floor_h = rng.uniform(2.8, 3.6)
    n_floors = max(1, int(height // floor_h))
    win_w = rng.uniform(1.0, 1.8)
    pier = rng.uniform(0.6, 1.6)
    n_win = max(1, int((width - pier) // (win_w + pier)))
    step = width / n_win
    for i in range(n_win + 1):  # piers
        _box(
            mb,
            p,
            (-width / 2 + i * step, recess / 2, -0.5),
            (pier, recess, height + 0.5),
            50,
            "facade",
            0,
        )
    sill = rng.uniform(0.8, 1.2)
    win_h = min(floor_h - 0.7, rng.uniform(1.2, 1.9))
    bottoms = [f * floor_h + sill for f in range(n_floors) if f * floor_h + sill + win_h < height]
    edges = [-0.5]
    for b in bottoms:  # solid floor bands between window rows
        edges += [b, b + win_h]
    edges.append(height)
    for z0, z1 in zip(edges[::2], edges[1::2], strict=True):
        if z1 > z0:
            _box(mb, p, (0, recess / 2, z0), (width, recess, z1 - z0), 50, "facade", 0)
    if rng.random() < 0.5:  # glazing in some windows: porous glass just behind the piers
        _box(mb, p, (0, recess * 0.8, 0), (width * 0.98, 0.02, height * 0.9), 50, "glass", 0)
    if rng.random() < 0.35 and depth > 8:  # setback upper storey
        extra = rng.uniform(2.5, 7)
        _box(
            mb,
            p,
            (0, recess + 2.5 + (depth - 2.5) / 2, height),
            (width * 0.9, depth - 2.5, extra),
            50,
            "facade",
            0,
        )
    else:  # parapet
        _box(mb, p, (0, recess + 0.15, height), (width, 0.3, 0.8), 50, "facade", 0)
