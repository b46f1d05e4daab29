"""Interactive Open3D window stepping through the frames of a sequence.

Keys: N or → next frame, P or ← previous, M cycles the colour mode (gt / pred / error, then
remission and height), Q or Esc quits. The legacy Open3D window cannot retitle itself, so each
frame change prints a status line ("sequence 08  frame 000123 (4/50)  mode error  ...").

The state changes (:meth:`SequenceViewer.step`, :meth:`SequenceViewer.cycle_mode`) are plain
methods that the key callbacks call, so they can be exercised without a display.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from pcseg.data.labels import LabelMap
from pcseg.vis.frames import Frame, FrameFiles, frame_colors, load_frame

KEY_RIGHT = 262  # GLFW key codes, as Open3D passes them to key callbacks
KEY_LEFT = 263
KEY_ESCAPE = 256


class SequenceViewer:
    """State and Open3D geometry of the frame viewer.

    ``frames``: the frames to step through; ``mode``: the initial colour mode (must be
    available for the first frame); ``echo``: where status lines go (default ``print``).
    """

    def __init__(
        self,
        frames: list[FrameFiles],
        label_map: LabelMap,
        mode: str,
        point_size: float = 1.5,
        echo: Callable[[str], None] = print,
    ) -> None:
        if not frames:
            raise ValueError("no frames to show")
        self.frames = frames
        self.label_map = label_map
        self.mode = mode
        self.point_size = point_size
        self.echo = echo
        self.index = 0
        self._frame: Frame = load_frame(frames[0], label_map)
        self._vis = None
        self._pcd = None
        self.colors()  # fail now, before a window opens, if the mode is not available

    @property
    def frame(self) -> Frame:
        """The frame on screen."""
        return self._frame

    def colors(self) -> np.ndarray:
        """(N, 3) float32 colours of the current frame in the current mode."""
        return frame_colors(self._frame, self.mode, self.label_map)

    def status(self) -> str:
        """One line: sequence, frame, position, mode and the keys."""
        f = self._frame.files
        return (
            f"sequence {f.sequence}  frame {f.frame:06d} ({self.index + 1}/{len(self.frames)})  "
            f"mode {self.mode}  [N/→ next, P/← previous, M mode, Q quit]"
        )

    def step(self, delta: int) -> None:
        """Move ``delta`` frames (wrapping around) and redraw."""
        self.index = (self.index + delta) % len(self.frames)
        self._frame = load_frame(self.frames[self.index], self.label_map)
        if self.mode not in self._frame.modes():  # e.g. a frame without labels
            self.mode = self._frame.modes()[0]
        self._update(reset_view=False)

    def cycle_mode(self) -> None:
        """Switch to the next colour mode this frame supports, and redraw."""
        modes = self._frame.modes()
        self.mode = (
            modes[(modes.index(self.mode) + 1) % len(modes)] if self.mode in modes else modes[0]
        )
        self._update(reset_view=False)

    def _update(self, reset_view: bool) -> None:
        self.echo(self.status())
        if self._vis is None:
            return
        import open3d as o3d

        self._pcd.points = o3d.utility.Vector3dVector(self._frame.xyz.astype(np.float64))
        self._pcd.colors = o3d.utility.Vector3dVector(self.colors().astype(np.float64))
        if reset_view:
            self._vis.add_geometry(self._pcd, reset_bounding_box=True)
        else:
            self._vis.update_geometry(self._pcd)

    def open(self, width: int = 1280, height: int = 720, visible: bool = True) -> bool:
        """Create the window and register the keys; returns False if no window could be made."""
        import open3d as o3d

        from pcseg.vis.render import Camera, apply_camera, quiet_window_creation

        f = self.frames[0]
        with quiet_window_creation():
            vis = o3d.visualization.VisualizerWithKeyCallback()
            ok = vis.create_window(
                window_name=f"pcseg - sequence {f.sequence}",
                width=width,
                height=height,
                visible=visible,
            )
        if not ok:
            return False
        options = vis.get_render_option()
        options.point_size = self.point_size
        options.background_color = np.zeros(3)
        self._vis, self._pcd = vis, o3d.geometry.PointCloud()

        def key(action: Callable[[], None]) -> Callable[[object], bool]:
            def callback(_vis: object) -> bool:
                action()
                return True  # ask Open3D to redraw

            return callback

        for code in (ord("N"), KEY_RIGHT):
            vis.register_key_callback(code, key(lambda: self.step(+1)))
        for code in (ord("P"), KEY_LEFT):
            vis.register_key_callback(code, key(lambda: self.step(-1)))
        vis.register_key_callback(ord("M"), key(self.cycle_mode))
        for code in (ord("Q"), KEY_ESCAPE):
            vis.register_key_callback(code, key(vis.close))
        self._update(reset_view=True)
        # Start from the PNG renderer's camera (behind and above the sensor, looking forward).
        if not apply_camera(vis, Camera(), width, height):
            view = vis.get_view_control()
            view.set_front([-1.0, 0.0, 0.8])
            view.set_lookat([12.0, 0.0, 0.0])
            view.set_up([0.6, 0.0, 1.0])
            view.set_zoom(0.12)
        return True

    def run(self) -> None:
        """Block until the window is closed."""
        if self._vis is None:
            raise RuntimeError("call open() first")
        self._vis.run()
        self._vis.destroy_window()
        self._vis = None

    def capture(self) -> np.ndarray:
        """The window's current image, (H, W, 3) uint8 (works for a hidden window too)."""
        if self._vis is None:
            raise RuntimeError("call open() first")
        buffer = np.asarray(self._vis.capture_screen_float_buffer(do_render=True))
        return (np.clip(buffer, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)

    def close(self) -> None:
        """Destroy the window if it is open."""
        if self._vis is not None:
            self._vis.destroy_window()
            self._vis = None
