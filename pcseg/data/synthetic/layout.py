"""Layout kinds and their street parameters, drawn once per scene.

Densities (p_building, p_hedge, p_lot) are set so the class shares of the simulated scans move
towards SemanticKITTI's ``content`` (scripts/domain_gap.py, generator 3): buildings 6.6 -> real
13.7 %, fences 2.6 -> 7.5 %, parking 5.5 -> 1.5 % before this change (parking lanes
on fewer streets, more hedges and fences, fewer parking lots, more buildings)."""

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
    # generator 5: chance of a bed of low shrubs along the sidewalk in front of a lot
    p_shrubs: float = 0.7


def layout_params(layout: str, rng: np.random.Generator) -> LayoutParams:
    """Street cross-section, density and relief parameters of ``layout``."""
    u = rng.uniform
    two = lambda p, w: (w if rng.random() < p else 0.0, w if rng.random() < p else 0.0)  # noqa: E731
    if layout == "urban":
        return LayoutParams(
            1 if rng.random() < 0.7 else 2,
            u(3.3, 3.8),
            0.0,
            two(0.35, u(2.1, 2.5)),
            two(0.4, u(1.2, 2.5)),
            (u(3.5, 6.0), u(3.5, 6.0)),
            (u(0.5, 4.0), u(0.5, 4.0)),
            (YARD_PAVED, YARD_GRASS),
            0.85,
            (7.0, 22.0),
            u(5, 9),
            0.65,
            0.04,
            0.6,
        )
    if layout == "curve":
        return LayoutParams(
            1,
            u(3.4, 3.9),
            0.0,
            two(0.4, u(2.1, 2.5)),
            two(0.5, u(1.5, 2.5)),
            (u(2.5, 4.5), u(2.5, 4.5)),
            (u(1, 5), u(1, 5)),
            (YARD_GRASS, YARD_PAVED),
            0.8,
            (6.0, 18.0),
            u(5, 9),
            0.7,
            0.06,
            0.9,
        )
    if layout == "suburban":
        return LayoutParams(
            1,
            u(3.3, 3.8),
            0.0,
            two(0.35, u(2.0, 2.4)),
            two(0.4, u(1.5, 3.0)),
            (u(2.0, 3.5), u(2.0, 3.5)),
            (u(3, 8), u(3, 8)),
            (YARD_GRASS, YARD_GRASS),
            0.8,
            (5.0, 9.5),
            u(5, 8),
            0.85,
            0.06,
            1.0,
        )
    if layout == "boulevard":
        return LayoutParams(
            2,
            u(3.2, 3.5),
            u(1.5, 3.0),
            two(0.4, u(2.2, 2.5)),
            two(0.5, u(1.5, 3)),
            (u(3.0, 5.0), u(3.0, 5.0)),
            (u(2, 6), u(2, 6)),
            (YARD_GRASS, YARD_PAVED),
            0.7,
            (8.0, 25.0),
            u(6, 10),
            0.65,
            0.12,
            0.8,
        )
    raise LayoutError(f"unknown layout '{layout}'; expected one of {', '.join(LAYOUTS)}")
