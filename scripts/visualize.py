"""Look at a SemanticKITTI sequence coloured by ground truth, prediction or error.

    python scripts/visualize.py --root <dataset> --sequence 08 --predictions <dir>
    python scripts/visualize.py --root <dataset> --sequence 08 --frames 0:10 --png out/
    python scripts/visualize.py --root <dataset> --sequence 08 --frames 3,7 --ply out/

With a display and neither --png nor --ply: an Open3D window (N/→ next, P/← previous,
M cycles the mode, Q quits). --png renders offscreen to OUT/<seq>_<frame>_<mode>.png (also
without any X server, through EGL); --ply writes OUT/<seq>_<frame>_<mode>.ply. With no usable
display ($DISPLAY and $WAYLAND_DISPLAY unset, or naming no reachable server) and neither given,
PNG files go to outputs/vis/<seq>/.

Scans may be NNNNNN.bin, .pcd or .ply; other files in velodyne/ (other names or suffixes,
names that are not UTF-8) are listed as ignored. A frame that cannot be read (e.g. a corrupt
scan with 1e30 coordinates) is reported with its file and left out; the other frames are still
written, and the exit status is 2.

--predictions: a submission root holding sequences/NN/predictions/NNNNNN.label (what
`evaluate.py export=true` writes) or a folder with the NNNNNN.label files directly; either way
they hold RAW SemanticKITTI ids, like the labels.
--mode: gt | pred | error | remission | height; default error when labels and predictions
exist, else gt (else pred, else remission). Error colours: light grey correct, red wrong,
dim blue ignored ('unlabeled' ground truth).
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path

from pcseg.data.errors import DatasetFileError
from pcseg.data.labels import load_label_map
from pcseg.vis.frames import (
    MODES,
    FrameFiles,
    VisualizationError,
    default_mode,
    find_frames,
    frame_colors,
    ignored_scan_files,
    load_frame,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    p.add_argument("--root", required=True, type=Path, help="dataset root (holds sequences/)")
    p.add_argument("--sequence", required=True, help="sequence number, e.g. 08")
    p.add_argument("--frames", help="frame ids: 0:10 (end exclusive), 5:, or 3,7,12; default all")
    p.add_argument("--predictions", type=Path, help="submission root or folder of .label files")
    p.add_argument("--mode", choices=MODES, help="colouring (default: see above)")
    p.add_argument("--png", type=Path, metavar="OUT_DIR", help="render PNG files offscreen")
    p.add_argument("--ply", type=Path, metavar="OUT_DIR", help="write coloured PLY clouds")
    p.add_argument("--labels-config", type=Path, help="label yaml (default: SemanticKITTI)")
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=720)
    p.add_argument("--point-size", type=float, default=1.5)
    return p.parse_args(argv)


def display_problem() -> str | None:
    """Why no window can be shown here, or None if a display looks reachable.

    Checked up front because when GLFW cannot open the named display Open3D silently falls back
    to an invisible EGL window, and ``run()`` would then wait forever for keys nobody can press.
    """
    wayland = os.environ.get("WAYLAND_DISPLAY")
    if wayland:
        runtime = os.environ.get("XDG_RUNTIME_DIR", "")
        socket_path = Path(wayland) if wayland.startswith("/") else Path(runtime) / wayland
        if socket_path.exists():
            return None
    display = os.environ.get("DISPLAY")
    if not display:
        if wayland:
            return f"the Wayland socket of $WAYLAND_DISPLAY={wayland} does not exist"
        return "no display ($DISPLAY and $WAYLAND_DISPLAY are unset)"
    host, _, number = display.rpartition(":")
    number = number.split(".")[0]
    if not number.isdigit():
        return f"cannot parse $DISPLAY={display}"
    if host in ("", "unix"):
        if Path(f"/tmp/.X11-unix/X{number}").exists():
            return None
        return f"$DISPLAY={display} but no X server socket /tmp/.X11-unix/X{number}"
    try:  # a TCP display (e.g. ssh -X forwards to localhost:10)
        with socket.create_connection((host, 6000 + int(number)), timeout=1.0):
            return None
    except OSError as e:
        return f"cannot reach the X server of $DISPLAY={display} ({e})"


def export(frames: list[FrameFiles], args: argparse.Namespace, mode: str | None) -> list[str]:
    """Write PNG and/or PLY files for every frame, with a progress bar.

    A frame that cannot be read or drawn is left out; returns one line per such frame (its
    file and why), so one corrupt scan never spoils the others.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from pcseg.vis.render import OffscreenRenderer, save_ply

    label_map = load_label_map(args.labels_config)
    renderer = None
    if args.png is not None:
        renderer = OffscreenRenderer(args.width, args.height, point_size=args.point_size)
        if renderer.backend != "open3d":
            print("note: PNG files show a bird's-eye view (see the warning above)")
    columns = ("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn())
    skipped: list[str] = []
    try:
        with Progress(*columns, TimeRemainingColumn(), transient=False) as progress:
            task = progress.add_task(f"sequence {frames[0].sequence}", total=len(frames))
            for files in frames:
                try:
                    frame = load_frame(files, label_map)
                except DatasetFileError as e:
                    skipped.append(f"skipped frame {files.frame:06d}: {e}")
                    progress.advance(task)
                    continue
                frame_mode = mode or default_mode(files)
                colors = frame_colors(frame, frame_mode, label_map)
                stem = f"{files.sequence}_{files.frame:06d}_{frame_mode}"
                if renderer is not None:
                    renderer.render_png(args.png / f"{stem}.png", frame.xyz, colors)
                if args.ply is not None:
                    save_ply(args.ply / f"{stem}.ply", frame.xyz, colors)
                progress.advance(task)
    finally:
        if renderer is not None:
            renderer.close()
    for kind, folder in (("PNG", args.png), ("PLY", args.ply)):
        if folder is not None:
            print(f"wrote {len(frames) - len(skipped)} {kind} file(s) to {folder}")
    return skipped


def show(frames: list[FrameFiles], args: argparse.Namespace, mode: str | None) -> None:
    """Open the interactive window."""
    from pcseg.vis.window import SequenceViewer

    label_map = load_label_map(args.labels_config)
    viewer = SequenceViewer(
        frames, label_map, mode or default_mode(frames[0]), point_size=args.point_size
    )
    if not viewer.open(args.width, args.height):
        raise VisualizationError(
            "Open3D could not open a window on this display; use --png OUT_DIR to render files"
        )
    viewer.run()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        frames = find_frames(args.root, args.sequence, args.frames, args.predictions)
        ignored = ignored_scan_files(frames[0].scan.parent)
        if ignored:
            shown = ", ".join(ignored[:10]) + (
                f" and {len(ignored) - 10} more" if len(ignored) > 10 else ""
            )
            print(
                f"note: ignored {len(ignored)} file(s) in {frames[0].scan.parent} that are not "
                f"NNNNNN.bin/.pcd/.ply scans: {shown}",
                file=sys.stderr,
            )
        if args.mode is not None:  # fail before any work if the mode cannot be shown
            need_labels = args.mode in ("gt", "error")
            need_pred = args.mode in ("pred", "error")
            if need_labels and frames[0].labels is None:
                raise VisualizationError(
                    f"--mode {args.mode} needs ground truth, but "
                    f"{frames[0].scan.parent.parent / 'labels'} has no label for frame "
                    f"{frames[0].frame:06d}"
                )
            if need_pred and args.predictions is None:
                raise VisualizationError(f"--mode {args.mode} needs --predictions")
        problem = None if args.png or args.ply else display_problem()
        if problem is not None:
            args.png = Path("outputs") / "vis" / frames[0].sequence
            print(f"{problem}: rendering PNG files offscreen to {args.png}/ instead of a window")
        if args.png is not None or args.ply is not None:
            skipped = export(frames, args, args.mode)
            for line in skipped:
                print(f"error: {line}", file=sys.stderr)
            if skipped:
                return 2
        else:
            show(frames, args, args.mode)
    except (VisualizationError, DatasetFileError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
