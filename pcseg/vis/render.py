"""Offscreen rendering of a coloured cloud to an image / PNG, and coloured PLY export.

Why Open3D's *legacy* ``Visualizer(visible=False)``: with no X server it falls back to Mesa's
EGL (software ``swrast``) by itself and renders a 120k-point scan in ~25 ms, whereas
``o3d.visualization.rendering.OffscreenRenderer`` needs the Vulkan loader and Mesa's Vulkan
drivers. The system libraries it loads here are those of the Debian packages ``libegl1
libegl-mesa0 libgl1-mesa-dri libgbm1 libgl1``.

The camera is a fixed physical camera (pinhole intrinsics + look-at extrinsics) rather than
Open3D's ``front/lookat/zoom``, whose zoom is relative to each cloud's bounding box: with a
fixed camera every frame of a sequence is seen from the same place, behind and above the
sensor, looking forward (KITTI sensor frame: x forward, y left, z up, road at z ~ -1.73 m).

If no OpenGL context can be had, :class:`OffscreenRenderer` warns
(:class:`RenderFallbackWarning`, with the reason) and draws the bird's-eye view of
:mod:`pcseg.vis.bev` instead, so a PNG is always written.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from pcseg.vis.bev import bev_image

Backend = Literal["auto", "open3d", "bev"]

_EGL_HINT = (
    "Open3D falls back to EGL offscreen rendering when there is no display; it needs the "
    "Mesa EGL libraries (Debian: libegl1 libegl-mesa0 libgl1-mesa-dri libgbm1 libgl1)"
)


class RenderFallbackWarning(UserWarning):
    """The Open3D renderer was unavailable; a bird's-eye view was drawn instead."""


class RenderError(RuntimeError):
    """``backend="open3d"`` was asked for and Open3D cannot render here."""


@contextmanager
def quiet_window_creation() -> Iterator[None]:
    """Silence the expected noise while Open3D creates a window with no display.

    With no display, GLFW probes Wayland, whose client library prints "error: XDG_RUNTIME_DIR
    is invalid or not set" when that variable is unset, and Open3D logs "no display, falling
    back to EGL": both harmless and confusing. For the duration of the call only, point
    ``XDG_RUNTIME_DIR`` at an empty private folder and raise Open3D's log level to errors.
    """
    import open3d as o3d

    made = None
    if "XDG_RUNTIME_DIR" not in os.environ:
        made = tempfile.mkdtemp(prefix="pcseg-xdg-")  # mode 0700, as the variable requires
        os.environ["XDG_RUNTIME_DIR"] = made
    try:
        with o3d.utility.VerbosityContextManager(o3d.utility.VerbosityLevel.Error):
            yield
    finally:
        if made is not None:
            os.environ.pop("XDG_RUNTIME_DIR", None)
            shutil.rmtree(made, ignore_errors=True)


@dataclass(frozen=True)
class Camera:
    """A pinhole camera in the sensor frame (metres); the default looks ahead from behind/above.

    ``eye``: camera position; ``target``: the point it looks at; ``up``: world up;
    ``fov_deg``: horizontal field of view.
    """

    eye: tuple[float, float, float] = (-14.0, 0.0, 9.0)
    target: tuple[float, float, float] = (16.0, 0.0, -1.5)
    up: tuple[float, float, float] = (0.0, 0.0, 1.0)
    fov_deg: float = 60.0

    def extrinsic(self) -> np.ndarray:
        """(4, 4) float64 world -> camera transform, camera axes x right, y down, z forward."""
        eye, target, up = (
            np.asarray(v, dtype=np.float64) for v in (self.eye, self.target, self.up)
        )
        forward = target - eye
        forward /= np.linalg.norm(forward)
        right = np.cross(forward, up)
        norm = np.linalg.norm(right)
        if norm < 1e-9:
            raise ValueError(f"camera up {self.up} is parallel to the viewing direction")
        right /= norm
        down = np.cross(forward, right)
        rotation = np.stack([right, down, forward])
        extrinsic = np.eye(4)
        extrinsic[:3, :3] = rotation
        extrinsic[:3, 3] = -rotation @ eye
        return extrinsic

    def intrinsic_matrix(self, width: int, height: int) -> np.ndarray:
        """(3, 3) float64 pinhole matrix for an image of ``width`` x ``height`` pixels."""
        fx = width / 2.0 / np.tan(np.deg2rad(self.fov_deg) / 2.0)
        return np.array(
            [[fx, 0.0, width / 2.0 - 0.5], [0.0, fx, height / 2.0 - 0.5], [0.0, 0.0, 1.0]]
        )


def apply_camera(vis: object, camera: Camera, width: int, height: int) -> bool:
    """Point an Open3D legacy visualiser's view at ``camera``; False if Open3D refused it."""
    import open3d as o3d

    params = o3d.camera.PinholeCameraParameters()
    params.intrinsic = o3d.camera.PinholeCameraIntrinsic(
        width, height, camera.intrinsic_matrix(width, height)
    )
    params.extrinsic = camera.extrinsic()
    view = vis.get_view_control()  # type: ignore[attr-defined]
    return bool(view.convert_from_pinhole_camera_parameters(params, allow_arbitrary=True))


def _as_float64_colors(colors: np.ndarray) -> np.ndarray:
    colors = np.asarray(colors)
    if colors.dtype == np.uint8:
        return colors.astype(np.float64) / 255.0
    return np.clip(colors.astype(np.float64), 0.0, 1.0)


def _check_cloud(xyz: np.ndarray, colors: np.ndarray) -> None:
    xyz = np.asarray(xyz)
    if xyz.ndim != 2 or xyz.shape[1] != 3:
        raise ValueError(f"xyz must have shape (N, 3), got {xyz.shape}")
    if np.asarray(colors).shape != xyz.shape:
        raise ValueError(f"colors must have shape {xyz.shape}, got {np.asarray(colors).shape}")
    # One garbage point (NaN, or ~1e30 from corrupt bytes) would set Open3D's view bounds and
    # clip planes so that this frame and every later one render black: refuse it instead.
    from pcseg.data.validation import MAX_ABS_COORDINATE

    if xyz.size and not (np.isfinite(xyz).all() and np.abs(xyz).max() <= MAX_ABS_COORDINATE):
        raise ValueError(
            f"xyz holds NaN/inf or coordinates beyond {MAX_ABS_COORDINATE:.0e} m: not a LiDAR "
            "scan (corrupt bytes?); nothing rendered"
        )


class OffscreenRenderer:
    """Render coloured clouds to (H, W, 3) uint8 images; reuse one for many frames.

    ``backend``: "open3d" (raise :class:`RenderError` if it cannot start), "bev" (numpy
    bird's-eye view, no OpenGL), or "auto" (Open3D, else warn and use "bev"). The backend in
    use is ``self.backend``. Use as a context manager, or call :meth:`close`.
    """

    def __init__(
        self,
        width: int = 1280,
        height: int = 720,
        camera: Camera | None = None,
        point_size: float = 1.5,
        background: tuple[float, float, float] = (0.0, 0.0, 0.0),
        backend: Backend = "auto",
        bev_extent: float = 50.0,
    ) -> None:
        if backend not in ("auto", "open3d", "bev"):
            raise ValueError(f"backend must be 'auto', 'open3d' or 'bev', got {backend!r}")
        self.width, self.height = int(width), int(height)
        self.camera = camera or Camera()
        self.point_size = float(point_size)
        self.background = tuple(float(c) for c in background)
        self.bev_extent = float(bev_extent)
        self._vis = None
        self.backend: Literal["open3d", "bev"] = "bev"
        if backend == "bev":
            return
        reason = self._start_open3d()
        if reason is None:
            self.backend = "open3d"
        elif backend == "open3d":
            raise RenderError(reason)
        else:
            warnings.warn(
                f"{reason}; drawing a bird's-eye view instead of the 3D view",
                RenderFallbackWarning,
                stacklevel=2,
            )

    def _start_open3d(self) -> str | None:
        """Create the hidden window; returns None on success, else why it failed."""
        try:
            import open3d as o3d
        except ImportError as e:  # pragma: no cover - open3d is a dependency
            return f"cannot import open3d ({e})"
        vis = o3d.visualization.Visualizer()
        with quiet_window_creation():
            ok = vis.create_window(
                window_name="pcseg", width=self.width, height=self.height, visible=False
            )
        if not ok:
            return f"Open3D could not create an offscreen OpenGL window. {_EGL_HINT}"
        options = vis.get_render_option()
        options.point_size = self.point_size
        options.background_color = np.asarray(self.background, dtype=np.float64)
        self._vis = vis
        self._o3d = o3d
        return None

    def render(self, xyz: np.ndarray, colors: np.ndarray) -> np.ndarray:
        """Render ``xyz`` (N, 3) with ``colors`` (N, 3) float [0, 1] or uint8 -> (H, W, 3) uint8."""
        _check_cloud(xyz, colors)
        if self._vis is None:
            return self._render_bev(xyz, colors)
        o3d, vis = self._o3d, self._vis
        pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.asarray(xyz, np.float64)))
        pcd.colors = o3d.utility.Vector3dVector(_as_float64_colors(colors))
        # Re-adding resets the bounding box Open3D derives its near/far clip planes from, so a
        # small cloud followed by a large one is not clipped; costs a few ms.
        vis.clear_geometries()
        vis.add_geometry(pcd, reset_bounding_box=True)
        apply_camera(vis, self.camera, self.width, self.height)
        buffer = np.asarray(vis.capture_screen_float_buffer(do_render=True))
        return (np.clip(buffer, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)

    def _render_bev(self, xyz: np.ndarray, colors: np.ndarray) -> np.ndarray:
        """Bird's-eye view letterboxed into (height, width): the no-OpenGL fallback."""
        side = min(self.width, self.height)
        square = bev_image(
            xyz,
            colors if np.asarray(colors).dtype == np.uint8 else np.asarray(colors, np.float32),
            extent=self.bev_extent,
            resolution=2 * self.bev_extent / side,
            background=tuple(round(c * 255) for c in self.background),
        )
        side = square.shape[0]
        image = np.empty((self.height, self.width, 3), dtype=np.uint8)
        image[:] = np.asarray([round(c * 255) for c in self.background], dtype=np.uint8)
        top, left = (self.height - side) // 2, (self.width - side) // 2
        image[top : top + side, left : left + side] = square[: self.height, : self.width]
        return image

    def render_png(self, path: str | Path, xyz: np.ndarray, colors: np.ndarray) -> np.ndarray:
        """Render and write a PNG at ``path`` (parents created); returns the (H, W, 3) image."""
        image = self.render(xyz, colors)
        save_png(path, image)
        return image

    def close(self) -> None:
        """Destroy the hidden window (safe to call twice)."""
        if self._vis is not None:
            self._vis.destroy_window()
            self._vis = None

    def __enter__(self) -> OffscreenRenderer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def render_png(
    path: str | Path, xyz: np.ndarray, colors: np.ndarray, **renderer_kwargs: object
) -> np.ndarray:
    """One-off: render ``xyz`` (N, 3) / ``colors`` (N, 3) to a PNG; returns the image.

    ``renderer_kwargs`` go to :class:`OffscreenRenderer` (width, height, camera, backend, ...).
    For many frames keep one renderer instead: creating the window costs ~0.3 s.
    """
    with OffscreenRenderer(**renderer_kwargs) as renderer:  # type: ignore[arg-type]
        return renderer.render_png(path, xyz, colors)


def save_png(path: str | Path, image: np.ndarray) -> Path:
    """Write an (H, W, 3) uint8 image as PNG (parents created); returns the path.

    Through Pillow (a matplotlib dependency) at zlib level 3: ~25 ms for 1280x720, where
    ``matplotlib.image.imsave`` takes ~200-450 ms, more than the rendering itself.
    """
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(
        path, format="PNG", compress_level=3
    )
    return path


def save_ply(path: str | Path, xyz: np.ndarray, colors: np.ndarray) -> Path:
    """Write ``xyz`` (N, 3) with RGB ``colors`` (N, 3) as a binary PLY (for MeshLab, CloudCompare,
    Open3D...). Parents are created; raises ``OSError`` if Open3D cannot write it."""
    import open3d as o3d

    _check_cloud(xyz, colors)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.asarray(xyz, np.float64)))
    pcd.colors = o3d.utility.Vector3dVector(_as_float64_colors(colors))
    if not o3d.io.write_point_cloud(str(path), pcd, write_ascii=False):
        raise OSError(f"{path}: Open3D could not write the point cloud")
    return path
