"""Things that move: agent records and how to build their meshes at a pose.

An :class:`Agent` drives or walks along a street at constant speed; :func:`build_agent` adds its
mesh at the pose of a frame, so the same shape moves from frame to frame. Moving things carry
SemanticKITTI's moving-* raw ids (:data:`MOVING` maps a parked id to its moving id).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pcseg.data.synthetic import objects as obj
from pcseg.data.synthetic.mesh import MeshBuilder

FRAME_DT = 0.1  # 10 Hz

#: raw SemanticKITTI ids: static id -> moving id
MOVING = {10: 252, 31: 253, 30: 254, 32: 255, 13: 257, 18: 258, 20: 259}


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


VEHICLE_DIMS = {
    "car": ([3.9, 1.7, 1.4], [4.9, 1.95, 1.65]),
    "truck": ([6.5, 2.3, 2.9], [9.0, 2.55, 3.6]),
    "bus": ([10.5, 2.5, 2.9], [12.5, 2.55, 3.3]),
    "other": ([4.0, 1.9, 2.0], [6.0, 2.3, 2.8]),
}
VEHICLE_LABEL = {"car": 10, "truck": 18, "bus": 13, "other": 20}
#: chance of each of :data:`~.objects.CAR_PAINTS` (dark, silver-grey, white) per car
CAR_PAINT_P = (0.6, 0.25, 0.15)


def vehicle_dims(kind: str, rng: np.random.Generator) -> np.ndarray:
    """Random dims of a vehicle of ``kind`` (a key of :data:`VEHICLE_DIMS`): (length, width,
    height), and for a car a 4th entry, the index of its paint in :data:`~.objects.CAR_PAINTS`."""
    dims = rng.uniform(*VEHICLE_DIMS[kind])
    if kind == "car":
        dims = np.append(dims, rng.choice(len(CAR_PAINT_P), p=CAR_PAINT_P))
    return dims


def person_dims(rng: np.random.Generator) -> np.ndarray:
    """Random (height, shoulder width) of a person (m)."""
    return np.array([rng.uniform(1.55, 1.95), rng.uniform(0.38, 0.5)])
