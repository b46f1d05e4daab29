"""Sensor presets (configs/sensors/*.yaml) and the custom sensor YAML: published beam layouts,
a simulated scan's elevation range, dataset roots per sensor, specific errors."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from pcseg import PROJECT_ROOT
from pcseg.data.synthetic import (
    LidarConfig,
    SensorConfigError,
    load_sensor,
    preset_names,
    sensor_from_dict,
    sensor_root,
    simulate_sequence,
)
from tests.cli import run_cli

#: published layouts: beams, top and bottom elevation (deg), max range (m)
PUBLISHED = {
    "hdl64e": (64, 2.0, -24.9, 80.0),  # KITTI's scans reach ~80 m (sensor: 120 m)
    "hdl32e": (32, 10.67, -30.67, 100.0),
    "vlp16": (16, 15.0, -15.0, 100.0),
    "vlp32c": (32, 15.0, -25.0, 200.0),
    "os1-64": (64, 22.5, -22.5, 120.0),
    "os1-128": (128, 22.5, -22.5, 120.0),
}


def test_every_preset_has_its_published_layout():
    assert sorted(PUBLISHED) == preset_names()
    for name, (beams, top, bottom, max_range) in PUBLISHED.items():
        cfg = load_sensor(name)
        el = cfg.base_elevations()
        assert cfg.name == name and cfg.n_beams == beams == len(el), name
        assert el.max() == pytest.approx(top) and el.min() == pytest.approx(bottom), name
        assert np.all(np.diff(el) < 0), name  # distinct beams, top first
        assert cfg.max_range == max_range, name
        assert cfg.directions().shape == (beams * cfg.n_azimuth, 3)


def test_default_sensor_is_the_hdl64e_preset_and_roots_differ_per_sensor():
    assert load_sensor("hdl64e") == LidarConfig() == load_sensor(None)
    base = PROJECT_ROOT / "data" / "synthetic_kitti"
    assert sensor_root("hdl64e") == base
    assert sensor_root("vlp16") == base.with_name("synthetic_kitti_vlp16")
    assert len({sensor_root(n) for n in preset_names()}) == len(preset_names())


@pytest.mark.parametrize("name", ["vlp16", "os1-64"])
def test_simulated_scan_spans_the_preset_elevations(name):
    """The scan's elevations (from the sensor origin) stay within the preset's beams, and the
    lowest beams reach the ground; fewer azimuth steps keep it fast."""
    base = load_sensor(name)
    cfg = dataclasses.replace(base, n_azimuth=360)
    _, scan, _ = next(simulate_sequence(2, 1, seed=0, config=cfg))
    r = np.linalg.norm(scan.xyz, axis=1)
    el = np.degrees(np.arcsin(scan.xyz[:, 2] / r))
    top, bottom = base.base_elevations().max(), base.base_elevations().min()
    # margins: per-laser error, sensor tilt (mount and randomisation), road slope
    assert el.min() >= bottom - 2.5 and el.max() <= top + 2.5
    assert el.min() <= bottom + 1.0
    assert len(scan) > 1000


def test_custom_yaml_and_its_errors(tmp_path):
    good = tmp_path / "my_lidar.yaml"
    good.write_text(
        "elevation: [10.0, {from: 5.0, to: -5.0, n: 3}, -20]\n"
        "n_azimuth: 900\nmax_range: 60\nmount_height: 2.0\n"
        "randomize: {enabled: false}\n"
    )
    cfg = load_sensor(good)
    assert cfg.name == "my_lidar" and cfg.n_beams == 5
    np.testing.assert_allclose(cfg.base_elevations(), [10, 5, 0, -5, -20])
    assert cfg.mount_height == 2.0 and not cfg.randomize.enabled
    assert sensor_root(good).name == "synthetic_kitti_my_lidar"
    bad = tmp_path / "bad.yaml"
    for text, match in (
        ("n_azimuth: 10\n", "elevation"),
        ("elevation: [1, 2]\nbeams: 3\n", "unknown keys"),
        ("elevation: [{from: 1, to: 2}]\n", "from, to and n"),
        ("elevation: [95]\n", r"\(-90, 90\)"),
        ("elevation: [1]\nrandomize: {height: 1, colour: 2}\n", "randomize"),
    ):
        bad.write_text(text)
        with pytest.raises(SensorConfigError, match=match) as err:
            load_sensor(bad)
        assert "bad" in str(err.value)
    with pytest.raises(SensorConfigError, match=r"x\.yaml: a sensor file is a mapping"):
        sensor_from_dict([1, 2], "x.yaml")
    with pytest.raises(SensorConfigError, match="unknown sensor 'hdl99'"):
        load_sensor("hdl99")
    with pytest.raises(SensorConfigError, match="does not exist"):
        load_sensor(tmp_path / "missing.yaml")


def test_cli_sensor_option(tmp_path):
    bad = run_cli("scripts/make_synthetic_dataset.py", "--sensor", "nonexistent", expect=2)
    assert "unknown sensor" in bad.stderr


def test_datamodule_sensor_selects_its_root():
    from pcseg.data.datamodule import SemanticKITTIDataModule

    dm = SemanticKITTIDataModule(sensor="vlp16", generate=True)
    assert dm.root.name == "synthetic_kitti_vlp16"
    assert SemanticKITTIDataModule().root.name == "synthetic_kitti"
