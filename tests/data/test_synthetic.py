"""The synthetic LiDAR dataset: determinism, layout, readability, realism bounds, motion,
class coverage and the reuse logic of ensure_dataset. Small sensors keep it fast; a few
full-resolution scans check the HDL-64E numbers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pcseg.data.io import read_labels, read_scan
from pcseg.data.labels import load_label_map
from pcseg.data.synthetic import (
    DEFAULT_SEQUENCES,
    DEFAULT_SPLIT,
    LAYOUTS,
    MARKER,
    DatasetSpecError,
    LidarConfig,
    Randomization,
    SensorConfigError,
    SensorDraw,
    build_scene,
    ensure_dataset,
    generate_dataset,
    is_complete,
    scene_for,
    simulate_sequence,
)
from pcseg.data.synthetic.scene import LayoutError
from pcseg.data.synthetic.sequence import TR_VELO_TO_CAM
from tests.cli import run_cli

SMALL = LidarConfig(n_beams=16, n_azimuth=360)
SMALL_SEQS = {0: 3, 2: 2}


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != MARKER
    }


@pytest.fixture(scope="module")
def small_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("syn") / "a"
    return generate_dataset(root, SMALL_SEQS, seed=3, progress=False, workers=1, lidar=SMALL)


@pytest.fixture(scope="module")
def full_scans() -> dict[str, list]:
    """Frames 0 and 6 of one sequence per layout at full resolution, with their poses."""
    out = {}
    for seq, layout in enumerate(LAYOUTS):
        out[layout] = list(simulate_sequence(seq, 8, seed=0, frame_ids=[0, 6]))
    return out


def test_default_split_matches_sequences():
    assert sorted(s for ids in DEFAULT_SPLIT.values() for s in ids) == sorted(DEFAULT_SEQUENCES)
    assert set(DEFAULT_SPLIT) == {"train", "valid", "test"}


@pytest.mark.slow
def test_same_seed_same_bytes_other_seed_differs(small_root, tmp_path):
    again = generate_dataset(
        tmp_path / "b", SMALL_SEQS, seed=3, progress=True, workers=2, lidar=SMALL
    )
    other = generate_dataset(
        tmp_path / "c", SMALL_SEQS, seed=4, progress=False, workers=1, lidar=SMALL
    )
    a, b, c = _files(small_root), _files(again), _files(other)
    assert a.keys() == b.keys() == c.keys()
    assert a == b, "same seed (and another worker count) must give byte-identical files"
    differ = [k for k in a if k.endswith(".bin") and a[k] != c[k]]
    assert len(differ) == sum(SMALL_SEQS.values())


def test_layout_poses_times_calib(small_root):
    marker = json.loads((small_root / MARKER).read_text())
    assert marker["seed"] == 3 and marker["sequences"] == {"00": 3, "02": 2}
    for seq, frames in SMALL_SEQS.items():
        folder = small_root / "sequences" / f"{seq:02d}"
        for f in range(frames):
            assert (folder / "velodyne" / f"{f:06d}.bin").is_file()
            assert (folder / "labels" / f"{f:06d}.label").is_file()
        poses = np.loadtxt(folder / "poses.txt", ndmin=2)
        times = np.loadtxt(folder / "times.txt", ndmin=1)
        assert poses.shape == (frames, 12) and times.shape == (frames,)
        np.testing.assert_allclose(np.diff(times), 0.1, atol=1e-9)
        calib = {}
        for line in (folder / "calib.txt").read_text().splitlines():
            key, values = line.split(":")
            calib[key] = np.array(values.split(), dtype=float)
        assert sorted(calib) == ["P0", "P1", "P2", "P3", "Tr"]
        assert all(v.shape == (12,) for v in calib.values())
        tr = np.vstack([calib["Tr"].reshape(3, 4), [0, 0, 0, 1]])
        np.testing.assert_allclose(tr, TR_VELO_TO_CAM, atol=1e-9)
        np.testing.assert_allclose(poses[0], np.eye(4)[:3].ravel(), atol=1e-9)
        # camera poses -> velodyne motion: the ego drives forward 0.5-1.5 m per frame
        for f in range(1, frames):
            cam = np.vstack([poses[f].reshape(3, 4), [0, 0, 0, 1]])
            velo = np.linalg.inv(tr) @ cam @ tr
            step = np.linalg.norm(velo[:3, 3]) / f
            assert 0.5 <= step <= 1.5
            assert velo[0, 3] > 0  # forward is +x of the first velodyne frame


def test_every_scan_reads_back_and_maps(small_root):
    lm = load_label_map()
    n = 0
    for scan in sorted(small_root.glob("sequences/*/velodyne/*.bin")):
        xyz, rem = read_scan(scan)
        label_path = scan.parent.parent / "labels" / (scan.stem + ".label")
        sem, _ = read_labels(label_path, num_points=len(xyz))
        train = lm.to_train(sem, label_path)
        assert train.min() >= 0 and train.max() < lm.num_classes
        assert 0.0 <= rem.min() and rem.max() <= 1.0
        n += 1
    assert n == sum(SMALL_SEQS.values())


@pytest.mark.slow
def test_full_resolution_scans_look_like_hdl64(full_scans):
    cfg = LidarConfig()
    for layout, frames in full_scans.items():
        for _, scan, _ in frames:
            r = np.linalg.norm(scan.xyz, axis=1)
            assert 100_000 <= len(scan) <= 130_000, (layout, len(scan))
            assert r.max() <= cfg.max_range + 1e-3
            # ego car masked: nothing on the car's body (below the sensor, within its footprint;
            # branches above the roof are fine), nothing closer than the minimum range
            x, y, z = scan.xyz.T
            on_car = (np.abs(x) < 2.3) & (np.abs(y) < 0.9) & (z < -0.2)
            assert not on_car.any() and r.min() >= cfg.min_range
            el = np.degrees(np.arcsin(scan.xyz[:, 2] / r))
            assert -27 < np.percentile(el, 0.5) and np.percentile(el, 99.5) < 5
            assert 0.0 <= scan.remission.min() and scan.remission.max() <= 1.0
            assert 0.15 < np.median(scan.remission) < 0.45
            assert -2.2 < np.median(z) < -1.0  # most points on the ground ~1.73 m below


def test_class_coverage_and_raw_ids(full_scans):
    lm = load_label_map()
    present: set[int] = set()
    raw: set[int] = set()
    for frames in full_scans.values():
        for _, scan, _ in frames:
            present |= set(np.unique(lm.to_train(scan.semantic)).tolist())
            raw |= set(np.unique(scan.semantic).tolist())
    learning = present - {0}
    assert len(learning) >= 15, sorted(lm.class_names[c] for c in learning)
    # ids the learning map folds or ignores are exercised too
    assert {0, 1, 52, 60, 99} <= raw
    assert raw & {252, 253, 254, 255, 257, 258, 259}


def test_rare_vehicles_are_in_every_scene(full_scans):
    """A truck drives towards the ego and a motorcycle is parked beside the road in every scene,
    so the validation scans score the rarest vehicle classes (an absent class counts 0 in the
    official mIoU as soon as it is predicted anywhere)."""
    lm = load_label_map()
    names = lm.class_names
    seen = {"truck": 0, "motorcycle": 0}
    for frames in full_scans.values():
        for _, scan, _ in frames:
            counts = np.bincount(lm.to_train(scan.semantic), minlength=len(names))
            for cls in seen:
                seen[cls] += int(counts[names.index(cls)] >= 20)
    scans = sum(len(f) for f in full_scans.values())
    assert seen["truck"] == scans, seen
    # the motorcycle stands on the sidewalk: parked cars may hide it from some positions
    assert seen["motorcycle"] >= scans - 2, seen


def test_moving_objects_move_static_ones_stay(full_scans):
    moved = 0
    for frames in full_scans.values():
        (_, a, pa), (_, b, pb) = frames

        def world(scan, pose, inst):
            m = scan.instance == inst
            return (scan.xyz[m] @ pose[:3, :3].T + pose[:3, 3]).mean(0), int(m.sum())

        common = set(np.unique(a.instance)) & set(np.unique(b.instance)) - {0}
        for inst in common:
            sem = int(np.bincount(a.semantic[a.instance == inst]).argmax())
            ca, na = world(a, pa, inst)
            cb, nb = world(b, pb, inst)
            if min(na, nb) < 150:
                continue  # few points: the visible part changes too much
            shift = np.linalg.norm((ca - cb)[:2])
            if sem in (10, 11, 15, 18, 20):  # parked: stays put (within visibility changes)
                assert shift < 1.5, (sem, shift)
            if sem in (252, 258, 259, 257):  # moving vehicles: 6 frames at >= 6 m/s
                assert shift > 2.5, (sem, shift)
                moved += 1
    assert moved >= 1


def test_scene_agents_move_between_frames():
    scene = scene_for(0, 10, seed=0)
    moving = [a for a in scene.agents if a.speed != 0]
    assert moving and all(a.label >= 252 for a in moving)
    v0, v5 = scene.dynamic(0).verts, scene.dynamic(5).verts
    assert len(v0) and len(v5) and not np.array_equal(v0[:100], v5[:100])
    p0 = [scene.agent_pose(a, 0) for a in moving]
    p5 = [scene.agent_pose(a, 5) for a in moving]
    shifts = [np.hypot(x.x - y.x, x.y - y.y) for x, y in zip(p0, p5, strict=True) if x and y]
    assert shifts and min(shifts) > 0.4  # >= 0.9 m/s for half a second


def test_ensure_dataset_reuses_complete_and_redoes_incomplete(tmp_path):
    root = tmp_path / "d"
    seqs = {1: 2}
    ensure_dataset(root, seqs, seed=0, progress=False, lidar=SMALL)
    marker = root / MARKER
    scan = root / "sequences/01/velodyne/000001.bin"
    stamp = (marker.stat().st_mtime_ns, scan.stat().st_mtime_ns)
    assert is_complete(root, seqs, 0, SMALL)
    ensure_dataset(root, seqs, seed=0, progress=False, lidar=SMALL)  # complete: reused
    assert (marker.stat().st_mtime_ns, scan.stat().st_mtime_ns) == stamp
    label = root / "sequences/01/labels/000000.label"
    label.unlink()  # interrupted / damaged: regenerated
    assert not is_complete(root, seqs, 0, SMALL)
    ensure_dataset(root, seqs, seed=0, progress=False, lidar=SMALL)
    assert label.is_file() and is_complete(root, seqs, 0, SMALL)
    assert scan.stat().st_mtime_ns != stamp[1]
    marker.unlink()  # no marker = generation never finished
    ensure_dataset(root, seqs, seed=0, progress=False, lidar=SMALL)
    assert marker.is_file()
    assert not is_complete(root, seqs, 1, SMALL)  # another seed is another dataset
    assert not is_complete(root, seqs, 0)  # another sensor too


def test_bad_arguments_raise_specific_errors(tmp_path):
    with pytest.raises(DatasetSpecError, match="frames"):
        generate_dataset(tmp_path, {0: 0}, progress=False)
    with pytest.raises(DatasetSpecError, match="outside"):
        generate_dataset(tmp_path, {100: 1}, progress=False)
    with pytest.raises(DatasetSpecError, match="workers"):
        generate_dataset(tmp_path, {0: 1}, progress=False, workers=0)
    with pytest.raises(SensorConfigError):
        LidarConfig(n_beams=0)
    with pytest.raises(LayoutError, match="unknown layout"):
        build_scene(np.random.default_rng(0), "moon", 3)
    assert not (tmp_path / MARKER).exists()


@pytest.mark.slow
def test_cli_and_compare_script(tmp_path, small_root):
    root = tmp_path / "cli"
    args = ["--root", str(root), "--frames", "1", "--sequences", "1", "--eval-sequences", "1"]
    args += ["--quiet", "--workers", "1"]
    out = run_cli("scripts/make_synthetic_dataset.py", *args).stdout
    assert str(root) in out and (root / MARKER).is_file()
    assert "train [0], valid [1], test [2]" in out
    assert sorted(p.name for p in (root / "sequences").iterdir()) == ["00", "01", "02"]
    bad = run_cli("scripts/make_synthetic_dataset.py", "--frames", "0", expect=2)
    assert "--frames" in bad.stderr
    png = tmp_path / "cmp.png"
    res = run_cli(
        "scripts/compare_scans.py",
        "--synthetic",
        str(small_root / "sequences/02/velodyne/000000.bin"),
        "--real",
        str(small_root / "sequences/00/velodyne/000000.bin"),
        "--out",
        str(png),
    )
    assert "range m" in res.stdout and png.stat().st_size > 10_000


def test_domain_randomisation_draws_within_its_ranges_and_can_be_turned_off():
    rnd = Randomization()
    draws = [SensorDraw.sample(rnd, 64, np.random.default_rng(k)) for k in range(50)]
    assert all(abs(d.height) <= rnd.height for d in draws)
    assert all(rnd.remission_gamma[0] <= d.gamma <= rnd.remission_gamma[1] for d in draws)
    assert all(rnd.dropout[0] <= d.dropout <= rnd.dropout[1] for d in draws)
    assert len({round(d.gain, 6) for d in draws}) == 50  # one draw per sequence
    pose = np.eye(4)
    moved = draws[0].apply_to_pose(pose)
    assert moved[2, 3] == pytest.approx(draws[0].height)
    np.testing.assert_allclose(moved[:3, :3] @ moved[:3, :3].T, np.eye(3), atol=1e-12)
    off = SensorDraw.sample(Randomization(enabled=False), 64, np.random.default_rng(0))
    np.testing.assert_array_equal(off.apply_to_pose(pose), pose)
    assert off.elevation is None and off.gain == 1.0 and off.dropout == 0.0


def test_randomisation_changes_the_scan_but_not_the_scene():
    fixed = LidarConfig(n_beams=16, n_azimuth=360, randomize=Randomization(enabled=False))
    ((_, a, pa),) = simulate_sequence(1, 1, seed=0, config=fixed)
    ((_, b, pb),) = simulate_sequence(1, 1, seed=0, config=SMALL)
    assert not np.array_equal(pa, pb)  # sensor height / tilt drawn per sequence
    np.testing.assert_allclose(pa[:2, 3], pb[:2, 3])  # same place in the same scene
    assert abs(pa[2, 3] - pb[2, 3]) <= Randomization().height + 1e-9
    assert abs(len(a) - len(b)) < 0.1 * len(a)


def test_faint_echoes_read_dark_and_strong_ones_do_not():
    """Remission fades below ``faint_echo`` echo strength: asphalt at 35 m under grazing
    incidence reads mostly 0 (as KITTI's far ground does), the same asphalt at 5 m keeps its
    brightness, and a wall facing the sensor at 40 m only loses the range fade of every surface
    (generator 6), not more."""
    from pcseg.data.synthetic.sensor import _remission

    n, cfg, draw = 4000, LidarConfig(), SensorDraw()
    rng = np.random.default_rng(0)

    def remission(refl: float, cos_inc: float, r: float) -> np.ndarray:
        return _remission(
            np.full(n, refl),
            np.full(n, cos_inc),
            np.full(n, r),
            np.ones(n),
            np.zeros(n, bool),
            draw,
            rng,
            cfg.faint_echo,
            cfg.range_fade(np.full(n, r)),
        )

    near_road = remission(0.33, 1.73 / 5, 5.0)
    far_road = remission(0.33, 1.73 / 35, 35.0)
    far_wall = remission(0.46, 0.9, 40.0)
    assert np.median(near_road) > 0.2 and np.mean(near_road == 0) < 0.1
    assert np.mean(far_road == 0) > 0.5
    near_wall = np.median(remission(0.46, 0.9, 8.0))
    assert cfg.range_fade(8.0) == 1.0 and 0.3 < cfg.range_fade(40.0) < 0.7
    assert np.median(far_wall) == pytest.approx(near_wall * cfg.range_fade(40.0), abs=0.02)


def test_shrub_beds_are_low_vegetation_along_their_heading():
    """Generator 5: a shrub bed is foliage (raw 70) no taller than 0.8 m, laid along the
    heading over its length (half the real vegetation points lie below 0.75 m)."""
    from pcseg.data.synthetic import objects as obj
    from pcseg.data.synthetic.materials import MATERIAL_ID
    from pcseg.data.synthetic.mesh import MeshBuilder

    rng = np.random.default_rng(0)
    for yaw in (0.0, 1.0):
        mb = MeshBuilder()
        obj.shrub_bed(mb, obj.Pose2(10.0, -4.0, 0.5, yaw), 6.0, rng)
        mesh = mb.build()
        assert set(np.unique(mesh.labels)) == {70}
        assert set(np.unique(mesh.materials)) == {MATERIAL_ID["foliage"]}
        z = mesh.verts[:, 2] - 0.5
        assert z.max() <= 0.8 and z.max() > 0.15
        along = (mesh.verts[:, :2] - (10.0, -4.0)) @ (np.cos(yaw), np.sin(yaw))
        across = (mesh.verts[:, :2] - (10.0, -4.0)) @ (-np.sin(yaw), np.cos(yaw))
        assert along.max() - along.min() > 6.0 and across.max() - across.min() < 2.5


def test_cars_get_a_drawn_paint_and_keep_it_between_frames():
    """Generator 5: each car draws its paint (dark, silver-grey, white) into its dims, so a
    moving car is rebuilt with the same paint in every frame; three-entry dims (older callers)
    mean the dark paint."""
    from pcseg.data.synthetic import objects as obj
    from pcseg.data.synthetic.agents import CAR_PAINT_P, Agent, build_agent, vehicle_dims
    from pcseg.data.synthetic.materials import MATERIAL_ID, MATERIALS
    from pcseg.data.synthetic.mesh import MeshBuilder

    rng = np.random.default_rng(0)
    paints = np.array([vehicle_dims("car", rng)[3] for _ in range(3000)], int)
    np.testing.assert_allclose(np.bincount(paints, minlength=3) / 3000, CAR_PAINT_P, atol=0.03)
    assert len(vehicle_dims("truck", rng)) == 3
    refl = [MATERIALS[MATERIAL_ID[p]].reflectivity for p in obj.CAR_PAINTS]
    assert refl == sorted(refl) and refl[-1] > 3 * refl[0]

    def body_materials(dims, pose: obj.Pose2 | None = None) -> set[int]:
        mb = MeshBuilder()
        agent = Agent("car", 252, 1, np.asarray(dims, float), 0, 0, 0, 5.0)
        build_agent(mb, agent, pose or obj.Pose2(0, 0, 0, 0))
        return set(np.unique(mb.build().materials).tolist())

    light = body_materials([4.5, 1.8, 1.5, 2])
    assert MATERIAL_ID["car_paint_light"] in light and MATERIAL_ID["car_paint"] not in light
    assert light == body_materials([4.5, 1.8, 1.5, 2], obj.Pose2(7, 3, 0.2, 1.0))  # next frame
    dark = body_materials([4.5, 1.8, 1.5])
    assert MATERIAL_ID["car_paint"] in dark and MATERIAL_ID["car_paint_light"] not in dark
