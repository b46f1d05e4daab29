"""``predict(cfg)``: label loose point-cloud files with a checkpoint; ``predict.py`` is its CLI.

For every input file (``.bin``, ``.pcd``, ``.ply``, ``.npy``; see :mod:`pcseg.loose_files`)
it writes, under ``output`` and mirroring the file's path below the input folder:

- ``<stem>.label``: SemanticKITTI labels, one uint32 per point, raw ids (``learning_map_inv``);
- ``<stem>.probs.npy`` (``save_probs=true``): class probabilities, float16 (P, C), C training ids;
- ``<stem>.pred.ply`` (``ply=true``): the cloud coloured by class (uchar red/green/blue) with an
  int ``label`` property (raw id), for CloudCompare, MeshLab or Open3D;
- ``<stem>.png`` (``png=true``): bird's-eye view coloured by class (numpy, no OpenGL);
- ``summary.json``: per file points, voxels, tiles, seconds; failures with their reasons.

``prior=content`` predicts under SemanticKITTI's class mix instead of the training data's
(:mod:`pcseg.prior_shift`: for a model trained on simulated scans).

A bad file is reported (path and reason) and skipped; the others are still predicted and the
run ends with a non-zero status. Progress: a rich bar on a terminal, one plain line per file
otherwise (logs, SLURM, CI).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from pcseg.checkpoint_loading import LoadedRun
from pcseg.data.errors import DatasetFileError
from pcseg.data.io import _atomic_write, write_labels
from pcseg.data.labels import LabelMap
from pcseg.inference import CloudPredictor, Prediction, load_checkpoint_model, resolve_device
from pcseg.loose_files import INTENSITY_FIELDS, LooseScanLoader, find_inputs, read_xyz
from pcseg.prior_shift import apply_prior, ensure_source_prior

log = logging.getLogger(__name__)

__all__ = ["FileResult", "PredictSummary", "output_stems", "predict", "write_outputs"]

#: Remission the dataset feeds for every point of a scan without intensity (the value training's
#: remission dropout feeds; ``pcseg.data.features.REMISSION_FREE_VALUE``).
MISSING_INTENSITY = 0.0


@dataclass
class FileResult:
    """One input: where it came from, what was written, how long it took."""

    path: str
    points: int
    voxels: int
    tiles: int
    seconds: float
    outputs: list[str]


@dataclass
class PredictSummary:
    """What ``predict`` did: per-file results, failures as (path, reason), totals."""

    output: str
    files: list[FileResult] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    #: wall-clock seconds of the whole call (checkpoint loading included)
    wall_seconds: float = 0.0

    @property
    def points(self) -> int:
        return sum(f.points for f in self.files)

    @property
    def seconds(self) -> float:
        """Seconds spent on the files (read, predict, write), without start-up."""
        return sum(f.seconds for f in self.files)

    @property
    def points_per_s(self) -> float:
        return self.points / self.seconds if self.seconds > 0 else 0.0


def output_stems(base: Path, files: list[Path], out_dir: Path) -> dict[Path, Path]:
    """Output path prefix of each input: ``out_dir / <path below base without suffix>``.

    Two inputs with the same stem in one folder (``a.bin`` and ``a.ply``) keep their suffix
    (``a.bin``, ``a.ply``) so no output overwrites another.
    """
    relative = {}
    for f in files:
        try:
            relative[f] = f.relative_to(base)
        except ValueError:
            relative[f] = Path(f.name)
    stems = [r.with_suffix("") for r in relative.values()]
    clashes = {s for s in stems if stems.count(s) > 1}
    return {
        f: out_dir / (r if r.with_suffix("") in clashes else r.with_suffix(""))
        for f, r in relative.items()
    }


def _atomic(path: Path, write: Callable[[Path], None]) -> Path:
    """:func:`pcseg.data.io._atomic_write` (temp file beside ``path``, then rename); returns ``path``."""
    _atomic_write(path, write)
    return path


def _write_ply(path: Path, xyz: np.ndarray, colors: np.ndarray, raw: np.ndarray) -> None:
    import open3d as o3d

    cloud = o3d.t.geometry.PointCloud(o3d.core.Tensor(np.ascontiguousarray(xyz, np.float32)))
    rgb = (np.clip(colors, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    cloud.point["colors"] = o3d.core.Tensor(np.ascontiguousarray(rgb))
    cloud.point["label"] = o3d.core.Tensor(np.ascontiguousarray(raw.astype(np.int32)[:, None]))
    if not o3d.t.io.write_point_cloud(str(path), cloud):
        raise OSError(f"{path}: Open3D could not write the point cloud")


def _bev_png(path: Path, xyz: np.ndarray, colors: np.ndarray, pixels: int = 1024) -> None:
    """Bird's-eye view of the whole cloud (centred on its xy box), at most ``pixels`` square."""
    from pcseg.vis.bev import bev_image
    from pcseg.vis.render import save_png

    lo, hi = xyz[:, :2].min(axis=0), xyz[:, :2].max(axis=0)
    centre = (lo + hi) / 2
    extent = float(max((hi - lo).max() / 2 * 1.02, 1.0))
    resolution = max(2 * extent / pixels, 0.02)
    shifted = xyz - np.array([centre[0], centre[1], 0.0], dtype=np.float32)
    save_png(path, bev_image(shifted, colors, extent=extent, resolution=resolution))


def write_outputs(
    prefix: Path,
    xyz: np.ndarray,
    prediction: Prediction,
    label_map: LabelMap,
    ply: bool = True,
    png: bool = False,
) -> list[Path]:
    """Write the outputs of one cloud next to ``prefix`` (see the module docstring)."""
    from pcseg.vis.colors import class_colors

    prefix.parent.mkdir(parents=True, exist_ok=True)
    written = []
    raw = label_map.to_raw(prediction.labels)
    label_path = prefix.with_name(prefix.name + ".label")
    write_labels(label_path, raw)
    written.append(label_path)
    if prediction.probs is not None:
        probs = prediction.probs.astype(np.float16, copy=False)
        written.append(
            _atomic(prefix.with_name(prefix.name + ".probs.npy"), lambda p: np.save(p, probs))
        )
    if ply or png:
        colors = class_colors(prediction.labels, label_map)
        if ply:
            path = prefix.with_name(prefix.name + ".pred.ply")
            written.append(_atomic(path, lambda p: _write_ply(p, xyz, colors, raw)))
        if png:
            path = prefix.with_name(prefix.name + ".png")
            written.append(_atomic(path, lambda p: _bev_png(p, xyz, colors)))
    return written


class _Reporter:
    """A rich progress bar on a terminal; plain, flushed lines otherwise."""

    def __init__(self, total: int, interactive: bool) -> None:
        self.interactive = interactive
        self.progress: Progress | None = None
        self.console = Console(stderr=False)
        if interactive:
            self.progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[detail]}"),
                TimeElapsedColumn(),
                console=self.console,
                transient=True,
            )
            self.task = self.progress.add_task("predicting", total=total, detail="")
            self.progress.start()

    def detail(self, text: str) -> None:
        if self.progress is not None:
            self.progress.update(self.task, detail=text)

    def line(self, text: str, style: str = "") -> None:
        if self.progress is not None:
            self.progress.console.print(text, style=style or None, highlight=False)
        else:
            print(text, flush=True)

    def warn(self, text: str) -> None:
        if self.progress is None:
            log.warning(text)
        else:
            self.line(f"warning: {text}", "yellow")

    def advance(self) -> None:
        if self.progress is not None:
            self.progress.advance(self.task)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


def _predictor(cfg: DictConfig) -> tuple[CloudPredictor, LoadedRun]:
    runs = Path(cfg.paths.log_dir) / "train" / "runs"
    model, run = load_checkpoint_model(cfg.ckpt_path, runs, _trusted(cfg))
    if cfg.get("prior"):  # prior=content: SemanticKITTI's class mix (pcseg.prior_shift)
        ensure_source_prior(model, run, _trusted(cfg))
        apply_prior(model, cfg.prior, run.path)
    tiles = cfg.get("tiles") or {}
    predictor = CloudPredictor.from_run(
        model,
        run.config,
        device=resolve_device(str(cfg.get("device", "auto"))),
        tta=int(cfg.get("tta", 1)),
        tta_seed=int(cfg.get("tta_seed", 0)),
        max_points=tiles.get("max_points"),
        tile_size=float(tiles.get("size", 100.0)),
        tile_overlap=float(tiles.get("overlap", 10.0)),
    )
    log.info("checkpoint %s on %s", run.path, predictor.device)
    return predictor, run


def _trusted(cfg: DictConfig) -> list[str]:
    return list(cfg.get("trusted_targets") or [])


def predict(cfg: DictConfig) -> PredictSummary:
    """Predict every file ``cfg.input`` names into ``cfg.output``; see the module docstring.

    Returns the summary (``failed`` lists the files that could not be predicted). Raises
    :class:`~pcseg.loose_files.InputSpecError` when the input names no file at all, and the
    checkpoint errors before any file is read.
    """
    start = time.perf_counter()
    base, files = find_inputs(cfg.input)
    predictor, run = _predictor(cfg)
    out_dir = Path(cfg.output)
    prefixes = output_stems(base, files, out_dir)
    summary = PredictSummary(output=str(out_dir))
    progress = cfg.get("progress", "auto")
    interactive = progress is True or (progress == "auto" and sys.stdout.isatty())
    ply, png = bool(cfg.get("ply", True)), bool(cfg.get("png", False))
    reporter = _Reporter(len(files), interactive)
    try:
        with LooseScanLoader(run, _trusted(cfg), cfg.get("min_points")) as loader:
            for i, path in enumerate(files, 1):
                reporter.detail(path.name)
                t0 = time.perf_counter()
                try:
                    result, written, n = _predict_file(
                        path, prefixes[path], loader, predictor, reporter, cfg, ply, png
                    )
                except (DatasetFileError, OSError) as e:
                    reason = e.problem if isinstance(e, DatasetFileError) else str(e)
                    summary.failed.append((str(path), reason))
                    reporter.line(f"[{i}/{len(files)}] FAILED {path}: {reason}", "red")
                    reporter.advance()
                    continue
                seconds = time.perf_counter() - t0
                summary.files.append(
                    FileResult(
                        str(path),
                        n,
                        result.voxels,
                        result.tiles,
                        seconds,
                        [str(w) for w in written],
                    )
                )
                tiles = f", {result.tiles} tiles" if result.tiles > 1 else ""
                reporter.line(
                    f"[{i}/{len(files)}] {path}: {n:,} points{tiles}, {seconds:.2f} s "
                    f"({n / max(seconds, 1e-9):,.0f} points/s) -> {written[0]}"
                )
                reporter.advance()
    finally:
        reporter.close()
    summary.wall_seconds = time.perf_counter() - start
    _report(summary, reporter, out_dir)
    return summary


def _predict_file(
    path: Path,
    prefix: Path,
    loader: LooseScanLoader,
    predictor: CloudPredictor,
    reporter: _Reporter,
    cfg: DictConfig,
    ply: bool,
    png: bool,
) -> tuple[Prediction, list[Path], int]:
    """Load, predict and write one file: (prediction, files written, point count)."""
    scan = loader.load(path)
    if scan.remission_missing and "remission" in predictor.features:
        reporter.warn(
            f"{path}: no intensity (no field named {'/'.join(INTENSITY_FIELDS)}, or one "
            f"value at every point): using remission {MISSING_INTENSITY:g} for every point, as "
            "training does for scans it drops the intensity of; expect lower accuracy"
        )

    def on_tile(done: int, total: int) -> None:
        if total > 1:
            reporter.detail(f"{path.name}: tile {done}/{total}")

    result = predictor.predict(scan.batch, with_probs=bool(cfg.get("save_probs")), on_tile=on_tile)
    xyz = read_xyz(path) if ply or png else np.zeros((0, 3), np.float32)
    written = write_outputs(prefix, xyz, result, predictor.label_map, ply=ply, png=png)
    return result, written, int(result.labels.shape[0])


def _report(summary: PredictSummary, reporter: _Reporter, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {
        "output": summary.output,
        "files": [asdict(f) for f in summary.files],
        "failed": [{"path": p, "reason": r} for p, r in summary.failed],
        "points": summary.points,
        "seconds": summary.seconds,
        "wall_seconds": summary.wall_seconds,
        "points_per_s": summary.points_per_s,
    }
    (out_dir / "summary.json").write_text(json.dumps(record, indent=2))
    reporter.line(
        f"predicted {len(summary.files)} file(s), {summary.points:,} points in "
        f"{summary.seconds:.1f} s ({summary.points_per_s:,.0f} points/s; "
        f"{summary.wall_seconds:.1f} s with start-up); outputs in {out_dir}"
    )
    if summary.failed:
        reporter.line(f"{len(summary.failed)} file(s) FAILED:", "red")
        for path, reason in summary.failed:
            reporter.line(f"  {path}: {reason}", "red")
