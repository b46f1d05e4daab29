"""Layout kinds and their street parameters, drawn once per scene."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pcseg.data.synthetic.ground import YARD_GRASS, YARD_PAVED, GroundKind

LAYOUTS = ("urban", "curve", "suburban", "boulevard")


class LayoutError(ValueError):
    """An unknown layout name or impossible scene parameters."""


@dataclass
class LayoutParams:
    """Per-layout parameters drawn once per scene."""

    lanes: int
    lane_w: float
    median: float
    parking: tuple[float, float]
    lawn: tuple[float, float]
    sidewalk: tuple[float, float]
    setback: tuple[float, float]
    yard: tuple[GroundKind, GroundKind]
    p_building: float
    height: tuple[float, float]
    tree_spacing: float  # 0 = no street trees
    p_hedge: float
    p_lot: float
    relief: float


def layout_params(layout: str, rng: np.random.Generator) -> LayoutParams:
    """Street cross-section, density and relief parameters of ``layout``."""
    u = rng.uniform
    two = lambda p, w: (w if rng.random() < p else 0.0, w if rng.random() < p else 0.0)  # noqa: E731
    if layout == "urban":
        return LayoutParams(
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
        return LayoutParams(
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
        return LayoutParams(
            1,
            u(3.3, 3.8),
            0.0,
            two(0.5, u(2.0, 2.4)),
            two(0.4, u(1.5, 3.0)),
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
        return LayoutParams(
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
