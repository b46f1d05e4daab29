"""The label yaml agrees with the official one, and remapping matches hand-computed examples."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import yaml

from pcseg import PROJECT_ROOT
from pcseg.data.errors import LabelConfigError, LabelFormatError
from pcseg.data.labels import DEFAULT_LABEL_CONFIG, load_label_map


def _official_yaml() -> Path | None:
    """The official semantic-kitti-api yaml: beside $PCSEG_REAL_DATA, or in ../shared/."""
    candidates = [PROJECT_ROOT.parent / "shared" / "data" / "reference" / "semantic-kitti.yaml"]
    if os.environ.get("PCSEG_REAL_DATA"):
        real = Path(os.environ["PCSEG_REAL_DATA"])
        candidates.insert(0, real.parent / "reference" / "semantic-kitti.yaml")
    return next((c for c in candidates if c.is_file()), None)


def test_agrees_with_official_definition():
    official_path = _official_yaml()
    if official_path is None:
        pytest.skip("official label yaml not found beside $PCSEG_REAL_DATA or in ../shared/")
    ours = yaml.safe_load(DEFAULT_LABEL_CONFIG.read_text())
    official = yaml.safe_load(official_path.read_text())
    for key in (
        "labels",
        "color_map",
        "content",
        "learning_map",
        "learning_map_inv",
        "learning_ignore",
        "split",
    ):
        assert ours[key] == official[key], key


def test_tables():
    lm = load_label_map()
    assert lm.num_classes == 20
    assert lm.ignore_index == 0
    names = lm.class_names
    assert names[0] == "unlabeled" and names[1] == "car" and names[19] == "traffic-sign"
    assert len(set(names)) == 20
    colors = lm.train_colors_rgb
    assert colors.shape == (20, 3)
    # car is BGR [245, 150, 100] in the yaml -> RGB (100, 150, 245) / 255
    np.testing.assert_allclose(colors[1], np.array([100, 150, 245]) / 255.0, rtol=1e-6)


def test_remap_by_hand():
    lm = load_label_map()
    raw = np.array([0, 1, 10, 252, 60, 40, 52, 99, 253, 81, 259, 13, 16, 71])
    expected = np.array([0, 0, 1, 1, 9, 9, 0, 0, 7, 19, 5, 5, 5, 16])
    np.testing.assert_array_equal(lm.to_train(raw), expected)


def test_inverse_map_round_trip():
    lm = load_label_map()
    train = np.arange(20)
    raw = lm.to_raw(train)
    assert raw.dtype == np.uint32
    np.testing.assert_array_equal(raw[:4], [0, 10, 11, 15])
    np.testing.assert_array_equal(lm.to_train(raw), train)
    with pytest.raises(ValueError, match="training ids must lie in"):
        lm.to_raw(np.array([20]))


def test_unknown_raw_ids_name_the_file():
    lm = load_label_map()
    expected = r"000005\.label: unknown raw label ids .*: 7 \(2 points\), 9999 \(1 points\)"
    with pytest.raises(LabelFormatError, match=expected):
        lm.to_train(np.array([10, 7, 7, 9999]), "seq/000005.label")


def test_broken_label_config_is_reported(tmp_path: Path):
    bad = yaml.safe_load(DEFAULT_LABEL_CONFIG.read_text())
    bad["learning_map"][10] = 42
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    expected = r"bad\.yaml: learning_map targets outside 0..19: \[42\]"
    with pytest.raises(LabelConfigError, match=expected):
        load_label_map(path)
    del bad["learning_map"]
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(LabelConfigError, match="missing keys: learning_map"):
        load_label_map(path)
