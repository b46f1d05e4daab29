"""Surface materials: how a surface answers a laser pulse.

Every triangle of a synthetic scene carries a material index into :data:`MATERIALS`. The sensor
model reads three numbers from it:

- ``reflectivity``: diffuse albedo at 905 nm in [0, 1]; remission is derived from it, the
  incidence angle and the range (see :mod:`pcseg.data.synthetic.sensor`). Values are tuned so the
  per-class median remission resembles SemanticKITTI (road ~0.25, building ~0.42, car ~0.09).
- ``porosity``: probability that a pulse passes through (foliage, chain-link fences, glass), so
  porous objects show points both on and behind them, as real trees do.
- ``roughness``: extra Gaussian range noise in metres;
- ``depth``: mean penetration (m, exponential) of echoes into a volumetric surface: foliage is
  modelled by hull meshes, and this spreads its returns through the crown instead of onto a
  shell, as leaves do.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Material:
    """One surface material. See the module docstring for the meaning of each field."""

    name: str
    reflectivity: float
    porosity: float = 0.0
    roughness: float = 0.0
    depth: float = 0.0


MATERIALS: tuple[Material, ...] = (
    Material("asphalt", 0.33),
    Material("paint", 0.50),
    Material("concrete", 0.40),
    Material("paving", 0.40),
    Material("grass", 0.42, roughness=0.01),  # real terrain scattering 0.003
    Material("soil", 0.33),
    # Generator 4: 5 cm roughness stands for the relief a facade mesh lacks (sills, pipes,
    # balconies, ornament): building scattering / verticality / planarity 0.58 / 0.48 / 0.19
    # -> 0.14 / 0.29 / 0.08 from the labelled scans (W1 / IQR), every point's scattering 0.32
    # -> 0.26 from the unlabelled ones, on two fresh scenes with the foliage change below.
    Material("facade", 0.46, roughness=0.05),
    Material("glass", 0.12, porosity=0.5),
    # Generator 5: a spread of paints, one per vehicle (agents.vehicle_dims draws it): real
    # cars read 0.37 at the 90th percentile of their remission in the labelled scans, the one
    # dark paint 0.13. Most stay dark (clear coat is specular, black and blue are dark at
    # 905 nm); silver and white paints return two to four times as much.
    Material("car_paint", 0.11),
    Material("car_paint_mid", 0.22),
    Material("car_paint_light", 0.40),
    Material("car_glass", 0.05, porosity=0.4),
    Material("rubber", 0.03),
    # Generator 4: depth 0.5 -> 0.15 m, roughness 5 -> 3 cm. Real leaves return mostly from the
    # crown's outer layer; the deeper spread gave every point set a high-scattering tail that
    # the unlabelled KITTI scans lack (scattering q90/q95 0.30/0.40 vs 0.26/0.34; now
    # 0.25/0.35), and vegetation a median scattering of 0.28 vs the labelled scans' 0.15 (now
    # 0.21): real bushes and hedges look like surfaces, which the network had only seen on
    # fences, cars and walls.
    Material("foliage", 0.39, porosity=0.3, roughness=0.03, depth=0.15),
    Material("bark", 0.36),
    Material("metal", 0.21),
    Material("sign", 0.45),
    Material("fence", 0.36, porosity=0.45),
    Material("cloth", 0.16),
    Material("plastic", 0.36),
    Material("truck_paint", 0.30),
)

#: Material name -> index into :data:`MATERIALS` (what the scene stores per triangle).
MATERIAL_ID: dict[str, int] = {m.name: i for i, m in enumerate(MATERIALS)}


def material_table() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Lookup arrays indexed by material id: reflectivity, porosity, roughness and depth,
    each (M,) float32."""
    refl = np.array([m.reflectivity for m in MATERIALS], dtype=np.float32)
    poro = np.array([m.porosity for m in MATERIALS], dtype=np.float32)
    rough = np.array([m.roughness for m in MATERIALS], dtype=np.float32)
    depth = np.array([m.depth for m in MATERIALS], dtype=np.float32)
    return refl, poro, rough, depth
