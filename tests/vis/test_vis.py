"""Visualisation: colours from the label yaml, error marking, BEV pixels, offscreen PNG, the
window's key actions, and scripts/visualize.py end to end on a tiny SemanticKITTI tree."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from pcseg import PROJECT_ROOT
from pcseg.data.io import read_labels, read_scan, write_labels, write_scan
from pcseg.data.labels import load_label_map
from pcseg.vis.bev import bev_image, bev_panel, bev_pixels
from pcseg.vis.colors import (
    ERROR_CORRECT,
    ERROR_IGNORED,
    ERROR_WRONG,
    class_colors,
    error_colors,
    error_mask,
    raw_label_colors,
    remission_colors,
)
from pcseg.vis.frames import VisualizationError, find_frames, parse_frames
from pcseg.vis.render import Camera, OffscreenRenderer, save_png
from pcseg.vis.window import SequenceViewer

SCRIPT = PROJECT_ROOT / "scripts" / "visualize.py"
RAW_IDS = np.array([0, 10, 40, 48, 50, 70, 252])  # unlabeled, car, road, sidewalk, ..., moving-car


@pytest.fixture(scope="module")
def label_map():
    return load_label_map()


@pytest.fixture(scope="module")
def yaml_bgr(label_map) -> dict[int, list[int]]:
    """The colour map read straight from the yaml, independently of LabelMap."""
    with open(label_map.path) as f:
        return {int(k): v for k, v in yaml.safe_load(f)["color_map"].items()}


def _scene(n_ground: int = 3000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A small street: a ground plane at z=-1.7 around the sensor and a box (a 'car') ahead.

    Returns xyz (N, 3) float32 and raw labels (N,) with road, car and some unlabeled points.
    """
    rng = np.random.default_rng(seed)
    ground = np.column_stack(
        [rng.uniform(-20, 40, n_ground), rng.uniform(-15, 15, n_ground), np.full(n_ground, -1.7)]
    )
    car = rng.uniform([8, -1, -1.7], [12, 1, -0.2], size=(800, 3))
    xyz = np.concatenate([ground, car]).astype(np.float32)
    raw = np.concatenate([np.full(n_ground, 40), np.full(len(car), 10)])
    raw[rng.random(raw.shape[0]) < 0.05] = 0
    return xyz, raw


def _tiny_dataset(root: Path, frames: int = 3, with_predictions: bool = True) -> Path:
    """Write sequences/08/{velodyne,labels} and a submission tree of predictions under root."""
    seq = root / "data" / "sequences" / "08"
    for i in range(frames):
        xyz, raw = _scene(seed=i)
        write_scan(seq / "velodyne" / f"{i:06d}.bin", xyz, np.linspace(0, 1, len(xyz)))
        write_labels(seq / "labels" / f"{i:06d}.label", raw)
        if with_predictions:
            pred = raw.copy()
            pred[::7] = 48  # every 7th point predicted 'sidewalk'
            pred[pred == 0] = 40
            write_labels(
                root / "preds" / "sequences" / "08" / "predictions" / f"{i:06d}.label", pred
            )
    return root / "data"


def _headless_env() -> dict[str, str]:
    """This environment without a display, as on CI or a server."""
    return {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}


def _run(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env=_headless_env(),
    )


# --- colours -------------------------------------------------------------------------------


def test_class_colors_match_the_label_yaml(label_map, yaml_bgr):
    train = label_map.to_train(RAW_IDS)
    colors = class_colors(train, label_map)
    for raw, color in zip(RAW_IDS, colors, strict=True):
        # The training id's colour is that of its learning_map_inv raw id, stored as BGR.
        b, g, r = yaml_bgr[label_map.learning_map_inv[label_map.learning_map[int(raw)]]]
        np.testing.assert_allclose(color, np.array([r, g, b]) / 255.0, atol=1e-6)
    car = class_colors(label_map.to_train(np.array([10])), label_map)[0]
    np.testing.assert_allclose(car, np.array(yaml_bgr[10][::-1]) / 255.0, atol=1e-6)
    with pytest.raises(ValueError, match="training ids"):
        class_colors(np.array([label_map.num_classes]), label_map)


def test_raw_label_colors_keep_moving_classes(label_map, yaml_bgr):
    colors = raw_label_colors(np.array([10, 252, 9999]), label_map)
    np.testing.assert_allclose(colors[0], np.array(yaml_bgr[10][::-1]) / 255.0, atol=1e-6)
    np.testing.assert_allclose(colors[1], np.array(yaml_bgr[252][::-1]) / 255.0, atol=1e-6)
    np.testing.assert_allclose(colors[2], [1.0, 0.0, 1.0])  # unknown id: magenta


def test_error_colors_mark_exactly_the_wrong_points(label_map):
    rng = np.random.default_rng(1)
    target = rng.integers(0, label_map.num_classes, 5000)
    pred = np.where(rng.random(5000) < 0.3, rng.integers(0, label_map.num_classes, 5000), target)
    pred[:10] = 0  # predicting 'unlabeled' on a labelled point is wrong
    target[:10] = 1
    colors = error_colors(pred, target, label_map.ignore_index)
    wrong = (pred != target) & (target != label_map.ignore_index)
    ignored = target == label_map.ignore_index
    assert wrong.sum() > 100 and ignored.sum() > 100
    np.testing.assert_array_equal(np.all(colors == ERROR_WRONG, axis=1), wrong)
    np.testing.assert_array_equal(np.all(colors == ERROR_IGNORED, axis=1), ignored)
    np.testing.assert_array_equal(np.all(colors == ERROR_CORRECT, axis=1), ~wrong & ~ignored)
    np.testing.assert_array_equal(error_mask(pred, target, 0) == 1, wrong)
    palette = [ERROR_CORRECT, ERROR_WRONG, ERROR_IGNORED]
    for i in range(3):  # clearly distinct: far apart in RGB
        for j in range(i):
            assert np.abs(palette[i] - palette[j]).max() >= 0.5
    with pytest.raises(ValueError, match="predictions for"):
        error_colors(pred[:-1], target, 0)


def test_scalar_colors_are_visible_on_black():
    colors = remission_colors(np.linspace(0, 1, 100))
    assert colors.shape == (100, 3) and colors.dtype == np.float32
    assert colors.max(axis=1).min() > 0.25  # the lowest value is not near-black
    assert not np.allclose(colors[0], colors[-1])


# --- bird's-eye view -----------------------------------------------------------------------


def test_bev_puts_a_point_at_the_expected_pixel():
    xyz = np.array([[10.0, -5.0, 0.0], [60.0, 0.0, 0.0]])  # the second lies outside the extent
    colors = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    image = bev_image(xyz, colors, extent=50.0, resolution=0.5)
    assert image.shape == (200, 200, 3) and image.dtype == np.uint8
    # x forward is up: row = (50 - 10) / 0.5 = 80; y left is left: col = (50 + 5) / 0.5 = 110.
    np.testing.assert_array_equal(image[80, 110], [255, 0, 0])
    assert (image.reshape(-1, 3).any(axis=1)).sum() == 1
    rows, cols, inside, size = bev_pixels(xyz, 50.0, 0.5)
    assert (rows[0], cols[0], size) == (80, 110, 200) and inside.tolist() == [True, False]


@pytest.mark.parametrize("order", [[0, 1], [1, 0]])
def test_bev_highest_point_wins_whatever_the_order(order):
    xyz = np.array([[0.02, 0.02, 3.0], [0.03, 0.03, -1.0]])[order]
    colors = np.array([[0, 0, 255], [255, 0, 0]], dtype=np.uint8)[order]  # high one is blue
    image = bev_image(xyz, colors, extent=1.0, resolution=0.1)
    np.testing.assert_array_equal(image[9, 9], [0, 0, 255])


def test_bev_panel_shows_prediction_and_error_side_by_side(label_map):
    xyz, raw = _scene()
    target = label_map.to_train(raw)
    pred = target.copy()
    pred[::5] = 1
    panel = bev_panel(xyz, pred, target, label_map, extent=25.0, resolution=0.25, gap=4)
    assert panel.shape == (200, 404, 3) and panel.dtype == np.uint8
    np.testing.assert_array_equal(
        panel[:, :200], bev_image(xyz, class_colors(pred, label_map), 25.0, 0.25)
    )
    np.testing.assert_array_equal(panel[:, 200:204], 255)
    error_view = panel[:, 204:].reshape(-1, 3)
    assert (error_view == np.round(ERROR_WRONG * 255)).all(axis=1).any()
    assert bev_panel(xyz, pred, target, label_map, 25.0, 0.25, with_target=True).shape[1] == 608


# --- offscreen rendering -------------------------------------------------------------------


def test_renderer_draws_a_synthetic_cloud_where_the_camera_looks(tmp_path):
    """A red patch around the camera target must land in the image centre (camera maths),
    through Open3D's offscreen OpenGL (EGL when there is no display)."""
    camera = Camera()
    g = np.linspace(-2.0, 2.0, 60)
    patch = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)
    xyz = np.column_stack([patch + camera.target[:2], np.full(len(patch), camera.target[2])])
    xyz = np.concatenate([xyz, _scene()[0][:3000]])  # + the ground (the 'car' would occlude)
    colors = np.zeros_like(xyz)
    colors[: len(patch)] = [1.0, 0.0, 0.0]
    colors[len(patch) :] = [0.0, 0.8, 1.0]
    with OffscreenRenderer(320, 240, camera=camera, point_size=3.0, backend="auto") as renderer:
        assert renderer.backend == "open3d", (
            "Open3D could not render offscreen; it needs Mesa EGL "
            "(libegl1 libegl-mesa0 libgl1-mesa-dri libgbm1 libgl1)"
        )
        image = renderer.render_png(tmp_path / "synthetic.png", xyz, colors)
        assert image.shape == (240, 320, 3) and image.dtype == np.uint8
        centre = image[115:125, 150:170].reshape(-1, 3).astype(int)
        assert (centre[:, 0] > 150).mean() > 0.5 and (centre[:, 1] < 80).mean() > 0.5
        assert (image.reshape(-1, 3)[:, 2] > 150).sum() > 200  # the cyan street is drawn too
        # A second frame in the same window: a small cloud after a large one is still drawn.
        small = renderer.render(xyz[: len(patch)], colors[: len(patch)])
        assert (small[115:125, 150:170, 0] > 150).mean() > 0.5
    written = np.asarray(Image.open(tmp_path / "synthetic.png"))
    np.testing.assert_array_equal(written, image)


def test_bev_fallback_renders_the_requested_size(tmp_path):
    xyz, _ = _scene()
    colors = np.tile([[0.0, 1.0, 0.0]], (len(xyz), 1))
    with OffscreenRenderer(300, 200, backend="bev") as renderer:
        image = renderer.render(xyz, colors)
    assert renderer.backend == "bev"
    assert image.shape == (200, 300, 3)
    assert 50 < (image[..., 1] == 255).sum() < image.shape[0] * image.shape[1]
    assert image[:, :50].max() == 0  # letterboxed: the square view sits in the middle
    assert save_png(tmp_path / "b.png", image).stat().st_size > 0


def test_renderer_on_a_real_scan(real_root, label_map, tmp_path):
    seq = real_root / "sequences" / "00"
    xyz, _ = read_scan(seq / "velodyne" / "000000.bin")
    semantic, _ = read_labels(seq / "labels" / "000000.label", xyz.shape[0])
    colors = class_colors(label_map.to_train(semantic), label_map)
    with OffscreenRenderer(640, 360) as renderer:
        image = renderer.render_png(tmp_path / "real.png", xyz, colors)
    on_disk = np.asarray(Image.open(tmp_path / "real.png"))
    assert on_disk.shape == (360, 640, 3)
    lit = on_disk.reshape(-1, 3).any(axis=1).mean()
    assert 0.05 < lit < 0.9, f"{lit:.1%} of pixels drawn"
    assert len(np.unique(on_disk.reshape(-1, 3), axis=0)) > 10  # many class colours
    np.testing.assert_array_equal(on_disk, image)


# --- frames and the window -----------------------------------------------------------------


def test_parse_frames():
    available = [0, 1, 2, 3, 5, 8]
    assert parse_frames(None, available) == available
    assert parse_frames("0:3", available) == [0, 1, 2]
    assert parse_frames("3:", available) == [3, 5, 8]
    assert parse_frames("0:9:4", available) == [0, 8]
    assert parse_frames("8,1", available) == [8, 1]
    with pytest.raises(VisualizationError, match=r"frames \[4\] do not exist"):
        parse_frames("1,4", available)
    with pytest.raises(VisualizationError, match="expected a range"):
        parse_frames("a:b", available)


def test_window_keys_step_and_cycle_modes(tmp_path, label_map):
    root = _tiny_dataset(tmp_path)
    frames = find_frames(root, "08", None, tmp_path / "preds")
    lines: list[str] = []
    viewer = SequenceViewer(frames, label_map, "error", echo=lines.append)
    assert viewer.open(320, 240, visible=False), "no hidden Open3D window (EGL) available"
    try:
        first = viewer.capture()
        assert "sequence 08  frame 000000 (1/3)  mode error" in lines[-1]
        viewer.step(+1)
        assert "frame 000001 (2/3)" in lines[-1]
        viewer.step(-1)
        viewer.step(-1)  # wraps to the last frame
        assert "frame 000002 (3/3)" in lines[-1]
        viewer.cycle_mode()
        assert viewer.mode == "remission" and "mode remission" in lines[-1]
        assert not np.array_equal(viewer.capture(), first)
        for _ in range(3):  # remission -> height -> gt -> pred
            viewer.cycle_mode()
        assert viewer.mode == "pred"
    finally:
        viewer.close()


# --- scripts/visualize.py ------------------------------------------------------------------


def test_cli_png_without_display(tmp_path):
    root = _tiny_dataset(tmp_path)
    out = tmp_path / "png"
    result = _run(
        "--root", root, "--sequence", "8", "--predictions", tmp_path / "preds",
        "--png", out, "--width", "320", "--height", "240",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    files = sorted(p.name for p in out.iterdir())
    assert files == [f"08_{i:06d}_error.png" for i in range(3)]  # error: labels + predictions
    image = np.asarray(Image.open(out / files[0]))
    assert image.shape == (240, 320, 3) and len(np.unique(image.reshape(-1, 3), axis=0)) > 2
    assert "wrote 3 PNG file(s)" in result.stdout
    if "XDG_RUNTIME_DIR" not in os.environ:  # the Wayland probe's noise is silenced
        assert "XDG_RUNTIME_DIR" not in result.stderr


@pytest.mark.parametrize("display", [None, ":987"], ids=["unset", "unreachable"])
def test_cli_without_a_usable_display_renders_pngs(tmp_path, display):
    """No window can open: PNGs instead (an unreachable $DISPLAY once made Open3D fall back to
    an invisible EGL window and wait for keys forever)."""
    root = _tiny_dataset(tmp_path, frames=1, with_predictions=False)
    env = _headless_env() | ({"DISPLAY": display} if display else {})
    result = subprocess.run(
        [sys.executable, SCRIPT, "--root", root, "--sequence", "08", "--width", "64",
         "--height", "48"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "rendering PNG files offscreen" in result.stdout
    assert (tmp_path / "outputs" / "vis" / "08" / "08_000000_gt.png").is_file()


def test_cli_ply_writes_a_coloured_cloud(tmp_path, label_map):
    import open3d as o3d

    root = _tiny_dataset(tmp_path)
    flat_preds = tmp_path / "preds" / "sequences" / "08" / "predictions"  # a plain folder
    result = _run(
        "--root", root, "--sequence", "08", "--frames", "1", "--predictions", flat_preds,
        "--mode", "gt", "--ply", tmp_path / "ply",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    cloud = o3d.io.read_point_cloud(str(tmp_path / "ply" / "08_000001_gt.ply"))
    xyz, raw = _scene(seed=1)
    assert cloud.has_colors() and len(cloud.points) == len(xyz)
    np.testing.assert_allclose(np.asarray(cloud.points), xyz, atol=1e-5)
    expected = class_colors(label_map.to_train(raw), label_map)
    np.testing.assert_allclose(np.asarray(cloud.colors), expected, atol=1 / 255 + 1e-6)


def test_cli_names_a_missing_sequence(tmp_path):
    root = _tiny_dataset(tmp_path, frames=1, with_predictions=False)
    result = _run("--root", root, "--sequence", "05", "--png", tmp_path / "out")
    assert result.returncode == 2
    assert "sequence 05 not found" in result.stderr and "available: 08" in result.stderr


def test_cli_names_a_prediction_file_with_the_wrong_count(tmp_path):
    root = _tiny_dataset(tmp_path, frames=2)
    bad = tmp_path / "preds" / "sequences" / "08" / "predictions" / "000001.label"
    write_labels(bad, np.full(10, 40))
    result = _run(
        "--root", root, "--sequence", "08", "--predictions", tmp_path / "preds",
        "--png", tmp_path / "out", "--width", "64", "--height", "48",
    )  # fmt: skip
    assert result.returncode == 2
    assert str(bad) in result.stderr and "10 labels but the scan has" in result.stderr


def test_cli_names_a_missing_prediction_file(tmp_path):
    root = _tiny_dataset(tmp_path, frames=2)
    missing = tmp_path / "preds" / "sequences" / "08" / "predictions" / "000001.label"
    missing.unlink()
    result = _run(
        "--root", root, "--sequence", "08", "--predictions", tmp_path / "preds",
        "--png", tmp_path / "out",
    )  # fmt: skip
    assert result.returncode == 2 and str(missing) in result.stderr


def test_cli_leaves_out_a_scan_with_garbage_coordinates_and_draws_the_others(tmp_path):
    """One scan with a 1e30 coordinate once turned every PNG of the run black (Open3D's view
    bounds): it is now reported with its file and the other frames render normally."""
    root = _tiny_dataset(tmp_path, frames=3, with_predictions=False)
    bad = root / "sequences" / "08" / "velodyne" / "000001.bin"
    xyz, remission = read_scan(bad)
    xyz[5] = 1e30
    write_scan(bad, xyz, remission)
    out = tmp_path / "png"
    result = _run(
        "--root", root, "--sequence", "08", "--mode", "gt", "--png", out,
        "--width", "64", "--height", "48",
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert f"skipped frame 000001: {bad}: coordinates reach 1e+30 m" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["08_000000_gt.png", "08_000002_gt.png"]
    for name in ("08_000000_gt.png", "08_000002_gt.png"):
        image = np.asarray(Image.open(out / name))
        assert len(np.unique(image.reshape(-1, 3), axis=0)) > 2, f"{name} is blank"
    assert "wrote 2 PNG file(s)" in result.stdout


def test_renderer_refuses_garbage_coordinates():
    with OffscreenRenderer(32, 24, backend="bev") as renderer:
        xyz = np.zeros((4, 3), np.float32)
        xyz[1] = 1e30
        with pytest.raises(ValueError, match=r"coordinates beyond 1e\+05 m"):
            renderer.render(xyz, np.zeros((4, 3), np.float32))


def test_cli_reads_pcd_and_ply_scans_and_lists_ignored_names(tmp_path):
    root = _tiny_dataset(tmp_path, frames=3, with_predictions=False)
    velodyne = root / "sequences" / "08" / "velodyne"
    for frame, suffix in ((1, ".pcd"), (2, ".ply")):
        xyz, remission = read_scan(velodyne / f"{frame:06d}.bin")
        (velodyne / f"{frame:06d}.bin").unlink()
        write_scan(velodyne / f"{frame:06d}{suffix}", xyz, remission)
    (velodyne / os.fsdecode(b"00000\xff.bin")).write_bytes(b"\0" * 16)  # not UTF-8
    (velodyne / "notes.txt").write_text("not a scan")
    out = tmp_path / "ply"
    result = _run("--root", root, "--sequence", "08", "--mode", "height", "--ply", out)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == [f"08_{i:06d}_height.ply" for i in range(3)]
    assert "ignored 2 file(s)" in result.stderr
    assert "00000\\xff.bin" in result.stderr and "notes.txt" in result.stderr
    # the same frame id in two formats is ambiguous: named, not guessed
    write_scan(velodyne / "000001.bin", *read_scan(velodyne / "000001.pcd"))
    result = _run("--root", root, "--sequence", "08", "--ply", out)
    assert result.returncode == 2
    assert "frame 000001 of sequence 08 is there twice: 000001.bin and 000001.pcd" in result.stderr


def test_cli_names_a_sequence_without_velodyne(tmp_path):
    root = _tiny_dataset(tmp_path, frames=1, with_predictions=False)
    shutil.rmtree(root / "sequences" / "08" / "velodyne")
    result = _run("--root", root, "--sequence", "08", "--png", tmp_path / "out")
    assert result.returncode == 2
    assert "sequence 08 has no velodyne/ folder" in result.stderr
    assert "holds: labels" in result.stderr
