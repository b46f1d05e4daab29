"""Sensor presets and the sensor YAML format: simulate the user's own LiDAR.

Presets are data, one YAML file each in ``configs/sensors/`` (HDL-64E, HDL-32E, VLP-16,
VLP-32C, Ouster OS1-64 and OS1-128, with their published beam layouts); a user's own sensor is
one more file in the same format (documented in ``configs/sensors/hdl64e.yaml``)::

    cfg = load_sensor("vlp16")                  # a preset by name
    cfg = load_sensor("my_lidar.yaml")          # or a file
    generate_dataset(sensor_root(cfg), lidar=cfg)

``elevation`` lists angles in degrees, and/or blocks ``{from, to, n}`` spaced evenly; the beam
count is their total. Other keys are :class:`~.sensor.LidarConfig` fields; ``randomize`` takes
:class:`~.sensor.Randomization` fields.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import yaml

from pcseg import PROJECT_ROOT
from pcseg.data.synthetic.sensor import LidarConfig, Randomization, SensorConfigError

SENSOR_DIR = PROJECT_ROOT / "configs" / "sensors"
DEFAULT_SENSOR = "hdl64e"


def preset_names() -> list[str]:
    """Names of the shipped presets (the YAML files in ``configs/sensors``)."""
    return sorted(p.stem for p in SENSOR_DIR.glob("*.yaml"))


def _elevation(value, path: Path) -> tuple[float, ...]:
    """Angles (degrees) from a list of numbers and ``{from, to, n}`` blocks."""
    if not isinstance(value, list) or not value:
        raise SensorConfigError(f"{path}: 'elevation' must be a non-empty list")
    out: list[float] = []
    for item in value:
        if isinstance(item, dict):
            if set(item) != {"from", "to", "n"} or int(item["n"]) < 1:
                raise SensorConfigError(
                    f"{path}: an elevation block needs exactly from, to and n >= 1, got {item}"
                )
            out += [float(v) for v in np.linspace(item["from"], item["to"], int(item["n"]))]
        elif isinstance(item, int | float):
            out.append(float(item))
        else:
            raise SensorConfigError(f"{path}: elevation entry {item!r} is not a number or block")
    return tuple(out)


def sensor_from_dict(spec: dict, path: Path | str = "<sensor>") -> LidarConfig:
    """A :class:`LidarConfig` from a parsed sensor YAML (see the module docstring)."""
    path = Path(path)
    if not isinstance(spec, dict) or "elevation" not in spec:
        raise SensorConfigError(f"{path}: a sensor file is a mapping with at least 'elevation'")
    fields = {f.name for f in dataclasses.fields(LidarConfig)}
    unknown = sorted(set(spec) - fields)
    if unknown:
        raise SensorConfigError(f"{path}: unknown keys {unknown}; known: {sorted(fields)}")
    kw = dict(spec)
    kw["elevation"] = _elevation(spec["elevation"], path)
    kw.setdefault("n_beams", len(kw["elevation"]))
    kw.setdefault("name", path.stem)
    if "randomize" in kw:
        rnd = kw["randomize"] or {}
        known = {f.name for f in dataclasses.fields(Randomization)}
        if not isinstance(rnd, dict) or set(rnd) - known:
            raise SensorConfigError(f"{path}: 'randomize' keys must be among {sorted(known)}")
        kw["randomize"] = Randomization(
            **{k: tuple(v) if isinstance(v, list) else v for k, v in rnd.items()}
        )
    for key in ("beam_offset",):
        if key in kw:
            kw[key] = tuple(float(v) for v in kw[key])
    if "ego_boxes" in kw:
        kw["ego_boxes"] = tuple(
            tuple(tuple(float(c) for c in p) for p in b) for b in kw["ego_boxes"]
        )
    try:
        return LidarConfig(**kw)
    except TypeError as e:
        raise SensorConfigError(f"{path}: {e}") from e


def load_sensor(name_or_path: str | Path | LidarConfig | None) -> LidarConfig:
    """The sensor of a preset name (``vlp16``), a YAML path, or a config (returned as is);
    None is the default HDL-64E."""
    if isinstance(name_or_path, LidarConfig):
        return name_or_path
    if name_or_path is None:
        return LidarConfig()
    text = str(name_or_path)
    path = Path(text)
    if not (text.endswith((".yaml", ".yml")) or path.is_file()):
        path = SENSOR_DIR / f"{text.lower()}.yaml"
        if not path.is_file():
            raise SensorConfigError(
                f"unknown sensor '{text}': give a YAML file or one of {', '.join(preset_names())}"
            )
    if not path.is_file():
        raise SensorConfigError(f"{path}: sensor file does not exist")
    try:
        spec = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise SensorConfigError(f"{path}: not valid YAML ({e})") from e
    return sensor_from_dict(spec, path)


def sensor_root(sensor: LidarConfig | str | None, base: Path | None = None) -> Path:
    """Dataset root of a sensor: ``data/synthetic_kitti`` for the default HDL-64E,
    ``data/synthetic_kitti_<name>`` for any other, so datasets of different sensors never
    share a cache."""
    base = base or PROJECT_ROOT / "data" / "synthetic_kitti"
    cfg = load_sensor(sensor)
    if cfg == LidarConfig():
        return base
    return base.with_name(f"{base.name}_{cfg.name}")
