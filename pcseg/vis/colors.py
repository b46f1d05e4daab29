"""Per-point colours for a scan: by class, by error, or by a scalar (remission, height).

Every function returns ``colors: (N, 3) float32`` RGB in [0, 1], the form both Open3D
(``Vector3dVector``) and the bird's-eye-view rasteriser take. Class colours come from the label
yaml (which stores BGR, like the official semantic-kitti-api; :class:`LabelMap` flips them),
so there is no colour table in Python.

Error colours (:func:`error_colors`) are chosen to be told apart at a glance on a black
background, also by red-green colour-blind viewers (the pair is grey vs red, not green vs red):

- correct prediction: light grey  ``ERROR_CORRECT``
- wrong prediction:   bright red  ``ERROR_WRONG``
- ignored (ground truth 'unlabeled', which the metric drops): dim blue ``ERROR_IGNORED``
"""

from __future__ import annotations

import numpy as np

from pcseg.data.labels import LabelMap

#: Colour of a correctly predicted point in the error view (light grey).
ERROR_CORRECT = np.array([0.70, 0.70, 0.70], dtype=np.float32)
#: Colour of a wrongly predicted point in the error view (bright red).
ERROR_WRONG = np.array([1.00, 0.10, 0.10], dtype=np.float32)
#: Colour of a point whose ground truth is ignored ('unlabeled'): dim blue, so it recedes.
ERROR_IGNORED = np.array([0.15, 0.20, 0.45], dtype=np.float32)
#: Colour for raw ids the label yaml does not define (magenta stands out as "something's off").
UNKNOWN_COLOR = np.array([1.0, 0.0, 1.0], dtype=np.float32)


def class_colors(train_ids: np.ndarray, label_map: LabelMap) -> np.ndarray:
    """Colour points by training id. ``train_ids``: (N,) ints in [0, C) -> (N, 3) float32.

    Raises ``ValueError`` for ids outside [0, C): a silent wrap-around would paint a wrong class.
    """
    ids = np.asarray(train_ids).astype(np.int64, copy=False).reshape(-1)
    palette = label_map.train_colors_rgb.astype(np.float32)
    if ids.size and (ids.min() < 0 or ids.max() >= palette.shape[0]):
        raise ValueError(
            f"training ids must lie in [0, {palette.shape[0]}), got [{ids.min()}, {ids.max()}]"
        )
    return palette[ids]


def raw_label_colors(raw_ids: np.ndarray, label_map: LabelMap) -> np.ndarray:
    """Colour points by RAW SemanticKITTI id (e.g. 10 car, 252 moving-car) -> (N, 3) float32.

    Uses the yaml's ``color_map`` directly, so moving classes keep their own colours. Ids the
    yaml does not define get :data:`UNKNOWN_COLOR`. To compare ground truth with a prediction,
    prefer :func:`class_colors` on training ids: predictions never contain moving classes.
    """
    raw = np.asarray(raw_ids).astype(np.int64, copy=False).reshape(-1)
    bgr = label_map.color_map_bgr
    lut = np.tile(UNKNOWN_COLOR, (max(bgr) + 1, 1))
    for raw_id, (b, g, r) in bgr.items():
        lut[raw_id] = (r / 255.0, g / 255.0, b / 255.0)
    out = np.tile(UNKNOWN_COLOR, (raw.shape[0], 1))
    known = (raw >= 0) & (raw < lut.shape[0])
    out[known] = lut[raw[known]]
    return out


def error_mask(pred: np.ndarray, target: np.ndarray, ignore_index: int) -> np.ndarray:
    """(N,) int8: 1 wrong, 0 correct, -1 ignored (target == ``ignore_index``).

    Same rule as the metric: points whose ground truth is ignored do not count, and a
    prediction of the ignored class on a labelled point is wrong.
    """
    pred = np.asarray(pred).reshape(-1)
    target = np.asarray(target).reshape(-1)
    if pred.shape != target.shape:
        raise ValueError(f"{pred.shape[0]} predictions for {target.shape[0]} ground-truth labels")
    mask = (pred != target).astype(np.int8)
    mask[target == ignore_index] = -1
    return mask


def error_colors(pred: np.ndarray, target: np.ndarray, ignore_index: int) -> np.ndarray:
    """Colour points by correctness (training ids, (N,) each) -> (N, 3) float32.

    Correct: :data:`ERROR_CORRECT`, wrong: :data:`ERROR_WRONG`, ignored ground truth:
    :data:`ERROR_IGNORED`.
    """
    mask = error_mask(pred, target, ignore_index)
    palette = np.stack([ERROR_IGNORED, ERROR_CORRECT, ERROR_WRONG])  # index = mask + 1
    return palette[mask.astype(np.int64) + 1]


def scalar_colors(
    values: np.ndarray,
    cmap: str = "viridis",
    percentiles: tuple[float, float] = (1.0, 99.0),
    vmin: float | None = None,
    vmax: float | None = None,
    floor: float = 0.2,
) -> np.ndarray:
    """Colour points by a scalar through a matplotlib colormap -> (N, 3) float32.

    The range defaults to the given percentiles of ``values`` so a few outliers (retro-
    reflective signs, a point far below the road) do not wash the rest of the scan out. Values
    map onto ``[floor, 1]`` of the colormap because the dark low end of viridis/turbo vanishes
    on the black background the renderers use.
    """
    from matplotlib import colormaps

    v = np.asarray(values, dtype=np.float32).reshape(-1)
    if v.size == 0:
        return np.zeros((0, 3), dtype=np.float32)
    lo = float(np.percentile(v, percentiles[0])) if vmin is None else vmin
    hi = float(np.percentile(v, percentiles[1])) if vmax is None else vmax
    scaled = floor + (1.0 - floor) * np.clip((v - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
    return colormaps[cmap](scaled)[:, :3].astype(np.float32)


def remission_colors(remission: np.ndarray, cmap: str = "viridis") -> np.ndarray:
    """Colour an unlabelled scan by remission (N,) -> (N, 3) float32."""
    return scalar_colors(remission, cmap=cmap)


def height_colors(xyz: np.ndarray, cmap: str = "turbo") -> np.ndarray:
    """Colour an unlabelled scan by height (z of ``xyz`` (N, 3)) -> (N, 3) float32."""
    return scalar_colors(np.asarray(xyz)[:, 2], cmap=cmap)
