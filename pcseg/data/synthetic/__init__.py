"""The embedded synthetic dataset: a LiDAR simulator on Open3D ray casting.

Procedural streets (:mod:`.scene`, :mod:`.streets`, :mod:`.ground`, :mod:`.objects`) are scanned
by a LiDAR model (:mod:`.sensor`; HDL-64E by default, other sensors in :mod:`.presets`) along an ego trajectory (:mod:`.sequence`), and
written in the SemanticKITTI layout (:mod:`.dataset`), so the real-data code path reads it
unchanged::

    from pcseg.data.synthetic import ensure_dataset
    root = ensure_dataset("data/synthetic_kitti")   # generates once (< 2 min on 2 cores)
"""

from pcseg.data.synthetic.dataset import (
    DEFAULT_SEQUENCES,
    DEFAULT_SPLIT,
    GENERATOR_VERSION,
    MARKER,
    DatasetSpecError,
    ensure_dataset,
    generate_dataset,
    is_complete,
)
from pcseg.data.synthetic.presets import (
    DEFAULT_SENSOR,
    load_sensor,
    preset_names,
    sensor_from_dict,
    sensor_root,
)
from pcseg.data.synthetic.scene import LAYOUTS, Scene, build_scene
from pcseg.data.synthetic.sensor import (
    LidarConfig,
    Randomization,
    Scan,
    SensorConfigError,
    SensorDraw,
    simulate_scan,
)
from pcseg.data.synthetic.sequence import scene_for, simulate_sequence, write_sequence

__all__ = [
    "DEFAULT_SENSOR",
    "DEFAULT_SEQUENCES",
    "DEFAULT_SPLIT",
    "GENERATOR_VERSION",
    "LAYOUTS",
    "MARKER",
    "DatasetSpecError",
    "LidarConfig",
    "Randomization",
    "Scan",
    "Scene",
    "SensorConfigError",
    "SensorDraw",
    "build_scene",
    "ensure_dataset",
    "generate_dataset",
    "is_complete",
    "load_sensor",
    "preset_names",
    "scene_for",
    "sensor_from_dict",
    "sensor_root",
    "simulate_scan",
    "simulate_sequence",
    "write_sequence",
]
