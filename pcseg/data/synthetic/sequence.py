"""One sequence: scene, ego trajectory, frames, and the SemanticKITTI files around them.

Writes ``ROOT/sequences/NN/`` with ``velodyne/NNNNNN.bin``, ``labels/NNNNNN.label``,
``poses.txt``, ``calib.txt`` and ``times.txt``.

Frames: KITTI's convention. ``calib.txt`` holds P0..P3 (an idealised KITTI stereo rig) and
``Tr`` (velodyne -> left camera: x_cam = -y_velo, y_cam = -z_velo, z_cam = x_velo, plus the
KITTI lever arm). ``poses.txt`` holds, like SemanticKITTI, the LEFT-CAMERA pose of each frame in
the first frame's camera frame (3x4 row-major), so ``Tr^-1 @ pose_i @ Tr`` is the velodyne
motion from frame 0 to frame i, exactly as semantic-kitti-api composes them.

Randomness: the scene comes from ``default_rng([seed, sequence, 0])`` and each frame's sensor
noise from ``default_rng([seed, sequence, 1, frame])``, the sequence's domain-randomisation draw
(sensor height, tilt, calibration; see :class:`~.sensor.Randomization`) from
``default_rng([seed, sequence, 2])``: sequences and frames are independent,
so any process can generate any part in any order and get identical bytes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pcseg.data.io import write_labels, write_scan
from pcseg.data.synthetic.ground import lane_marking
from pcseg.data.synthetic.scene import FRAME_DT, LAYOUTS, Scene, build_scene
from pcseg.data.synthetic.sensor import (
    LidarConfig,
    Scan,
    SensorDraw,
    raycasting_scene,
    simulate_scan,
)

#: velodyne -> left camera (rotation to camera axes and KITTI's ~0.27 m lever arm)
TR_VELO_TO_CAM = np.array(
    [
        [0.0, -1.0, 0.0, -0.004],
        [0.0, 0.0, -1.0, -0.076],
        [1.0, 0.0, 0.0, -0.272],
        [0.0, 0.0, 0.0, 1.0],
    ]
)
_F, _CX, _CY, _BASELINE = 718.856, 607.1928, 185.2157, 0.537


def layout_of(sequence: int) -> str:
    """Layout of a sequence id: the layouts cycle, so neighbouring sequences differ."""
    return LAYOUTS[sequence % len(LAYOUTS)]


def scene_for(sequence: int, frames: int, seed: int) -> Scene:
    """The scene of ``sequence`` (deterministic from ``seed`` and the sequence id)."""
    return build_scene(np.random.default_rng([seed, sequence, 0]), layout_of(sequence), frames)


def calib_text() -> str:
    """calib.txt content: P0..P3 (3x4) and Tr (3x4), KITTI odometry style."""
    lines = []
    for k, shift in enumerate([0.0, -_BASELINE, 0.06, -_BASELINE + 0.06]):
        p = np.array([[_F, 0, _CX, _F * shift], [0, _F, _CY, 0], [0, 0, 1, 0]])
        lines.append(f"P{k}: " + " ".join(f"{v:.12e}" for v in p.ravel()))
    lines.append("Tr: " + " ".join(f"{v:.12e}" for v in TR_VELO_TO_CAM[:3].ravel()))
    return "\n".join(lines) + "\n"


def camera_poses(velo_poses: list[np.ndarray]) -> list[np.ndarray]:
    """Left-camera poses relative to the first frame: Tr @ inv(V0) @ Vi @ inv(Tr), (4, 4) each."""
    tr_inv = np.linalg.inv(TR_VELO_TO_CAM)
    v0_inv = np.linalg.inv(velo_poses[0])
    return [TR_VELO_TO_CAM @ v0_inv @ v @ tr_inv for v in velo_poses]


def _marking_fn(scene: Scene):
    def marking(xy: np.ndarray) -> np.ndarray:
        mark = np.zeros(len(xy), bool)
        for street in scene.streets:
            s, d, inside = street.local(xy)
            mine = inside & (np.abs(d) < street.half_road)
            mark[mine] |= lane_marking(street, s[mine], d[mine])
        return mark

    return marking


def simulate_sequence(
    sequence: int,
    frames: int,
    seed: int,
    config: LidarConfig | None = None,
    frame_ids: list[int] | None = None,
):
    """Yield ``(frame, Scan, velodyne pose (4, 4))`` for the frames of a sequence."""
    cfg = config or LidarConfig()
    scene = scene_for(sequence, frames, seed)
    static = (raycasting_scene(scene.static), scene.static)
    marking = _marking_fn(scene)
    draw = SensorDraw.sample(cfg.randomize, cfg.n_beams, np.random.default_rng([seed, sequence, 2]))
    for f in frame_ids if frame_ids is not None else range(frames):
        rng = np.random.default_rng([seed, sequence, 1, f])
        pose = draw.apply_to_pose(scene.ego_pose(f, cfg.mount_height))
        scan = simulate_scan(static, scene.dynamic(f), pose, rng, cfg, marking, draw)
        yield f, scan, pose


def write_sequence(
    root: Path,
    sequence: int,
    frames: int,
    seed: int,
    config: LidarConfig | None = None,
    on_frame=None,
) -> Path:
    """Generate and write one sequence under ``root/sequences/NN``; returns that folder.
    ``on_frame()`` is called after each written frame (progress reporting)."""
    folder = Path(root) / "sequences" / f"{sequence:02d}"
    (folder / "velodyne").mkdir(parents=True, exist_ok=True)
    (folder / "labels").mkdir(parents=True, exist_ok=True)
    poses = []
    for f, scan, pose in simulate_sequence(sequence, frames, seed, config):
        _write_frame(folder, f, scan)
        poses.append(pose)
        if on_frame is not None:
            on_frame()
    cam = camera_poses(poses)
    (folder / "poses.txt").write_text(
        "".join(" ".join(f"{v:.12e}" for v in p[:3].ravel()) + "\n" for p in cam)
    )
    (folder / "times.txt").write_text("".join(f"{f * FRAME_DT:.6e}\n" for f in range(frames)))
    (folder / "calib.txt").write_text(calib_text())
    return folder


def _write_frame(folder: Path, frame: int, scan: Scan) -> None:
    write_scan(folder / "velodyne" / f"{frame:06d}.bin", scan.xyz, scan.remission)
    write_labels(folder / "labels" / f"{frame:06d}.label", scan.semantic, scan.instance)
