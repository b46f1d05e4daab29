#!/usr/bin/env python
"""Check every scan and label file of a SemanticKITTI-layout root before a long run.

    python scripts/check_dataset.py --root /datasets/semantickitti
    python scripts/check_dataset.py --root data/synthetic_kitti --sequences 0 1 --jobs 2

Runs the checks training uses (pcseg.data.validation: corrupt or truncated scans, NaN/inf
points, fewer than --min-points points, degenerate scans with fewer than --min-voxels voxels at
--voxel-size, label files missing, corrupt, of the wrong length or with ids the label yaml does
not define), then prints one table row per problem kind with its
count and example files. Exit status: 0 clean, 1 any problem (also a missing root or sequence).

--voxel-size, --min-points and --min-voxels default to the data config --data names
(configs/data/<name>.yaml; default: the one `make train` uses), so a scan this passes is one
that training keeps. `--voxel-size none` counts distinct positions (data.voxel_size=null).

A scan needs a label file when its sequence is in the label yaml's train or valid split or has
a labels/ folder; elsewhere (the test split) labels are checked only where they exist.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from omegaconf import OmegaConf
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from pcseg import PROJECT_ROOT
from pcseg.data.errors import DatasetFileError
from pcseg.data.labels import LabelMap, load_label_map
from pcseg.data.semantickitti import ScanRecord, index_scans
from pcseg.data.validation import (
    DEFAULT_MIN_POINTS,
    DEFAULT_MIN_VOXELS,
    Problem,
    check_scan,
    check_voxel_size,
)

EXAMPLES = 3  # files shown per problem kind
CONFIGS = PROJECT_ROOT / "configs"


def default_data_config() -> str:
    """The data group configs/train.yaml selects (what `make train` reads)."""
    train = OmegaConf.to_container(OmegaConf.load(CONFIGS / "train.yaml"))
    for entry in train.get("defaults", []):
        if isinstance(entry, dict) and "data" in entry:
            return str(entry["data"])
    return "semantickitti"


def data_config(name: str) -> dict:
    """configs/data/<name>.yaml merged over the data configs its defaults list names (plain
    values only: enough for voxel_size, min_points, min_voxels)."""
    path = CONFIGS / "data" / f"{name}.yaml"
    if not path.is_file():
        choices = sorted(p.stem for p in (CONFIGS / "data").glob("*.yaml"))
        raise SystemExit(f"error: no data config {path} (choose from {', '.join(choices)})")
    own = OmegaConf.load(path)
    defaults = list(own.pop("defaults", None) or [])
    if "_self_" not in defaults:
        defaults.append("_self_")
    merged = OmegaConf.create()
    for entry in defaults:
        merged = OmegaConf.merge(merged, own if entry == "_self_" else data_config(str(entry)))
    return OmegaConf.to_container(merged, resolve=False)


def _voxel_size(text: str) -> float | None:
    if text.lower() in ("none", "null"):
        return None
    try:
        return check_voxel_size(float(text))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    p.add_argument("--root", required=True, type=Path, help="dataset root (holds sequences/)")
    p.add_argument("--sequences", nargs="+", help="sequence ids, e.g. 0 1 8 (default: all)")
    p.add_argument("--labels", type=Path, help="label yaml (default: SemanticKITTI's)")
    p.add_argument(
        "--data", default=None, help="data config for the defaults below (default: make train's)"
    )
    p.add_argument("--min-points", type=int, help="as data.min_points")
    p.add_argument("--voxel-size", type=_voxel_size, help="as data.voxel_size (metres, or none)")
    p.add_argument("--min-voxels", type=int, help="as data.min_voxels")
    p.add_argument("--jobs", type=int, default=1, help="worker processes")
    p.add_argument("--all", action="store_true", help="list every problem, not only examples")
    args = p.parse_args(argv)
    data = data_config(args.data or default_data_config())
    if args.min_points is None:
        args.min_points = int(data.get("min_points", DEFAULT_MIN_POINTS))
    if args.min_voxels is None:
        args.min_voxels = int(data.get("min_voxels", DEFAULT_MIN_VOXELS))
    if args.voxel_size is None and not _given(argv, "--voxel-size"):
        args.voxel_size = check_voxel_size(data.get("voxel_size"))
    return args


def _given(argv: list[str] | None, flag: str) -> bool:
    """Whether ``flag`` is on the command line (``--voxel-size none`` is a choice too)."""
    argv = sys.argv[1:] if argv is None else argv
    return any(a == flag or a.startswith(flag + "=") for a in argv)


def _sequences(root: Path, wanted: list[str] | None) -> list[str]:
    if wanted:
        return [f"{int(s):02d}" if s.isdigit() else s for s in wanted]
    seq_dir = root / "sequences"
    return sorted(p.name for p in seq_dir.iterdir() if (p / "velodyne").is_dir())


def _records(root: Path, sequences: list[str], label_map: LabelMap) -> list[ScanRecord]:
    """Every scan to check; a missing required label file stays in as a problem to report."""
    labelled = {int(s) for k in ("train", "valid") for s in label_map.split.get(k, [])}
    records: list[ScanRecord] = []
    for seq in sequences:
        needs_labels = (seq.isdigit() and int(seq) in labelled) or (
            root / "sequences" / seq / "labels"
        ).is_dir()
        records += index_scans(root, [seq], needs_labels, defer_missing_labels=True)
    return records


def _check(args: tuple[ScanRecord, Path, int, float | None, int]) -> list[Problem]:
    record, label_config, min_points, voxel_size, min_voxels = args
    return check_scan(
        record.scan_path,
        record.label_path,
        load_label_map(label_config),
        min_points,
        voxel_size,
        min_voxels,
    )


def _table(problems: list[Problem], root: Path, show_all: bool) -> Table:
    by_kind: dict[str, list[Problem]] = defaultdict(list)
    for problem in problems:
        by_kind[problem.kind].append(problem)
    table = Table(title=f"problems in {root}", show_lines=True)
    table.add_column("problem")
    table.add_column("files", justify="right")
    table.add_column("examples" if not show_all else "files and reasons", overflow="fold")
    for kind in sorted(by_kind):
        shown = by_kind[kind] if show_all else by_kind[kind][:EXAMPLES]
        lines = [f"{_relative(p.path, root)}: {p.reason}" for p in shown]
        if len(by_kind[kind]) > len(shown):
            lines.append(f"... and {len(by_kind[kind]) - len(shown)} more")
        table.add_row(kind, str(len(by_kind[kind])), "\n".join(lines))
    return table


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console()
    label_map = load_label_map(args.labels)
    try:
        records = _records(args.root, _sequences(args.root, args.sequences), label_map)
    except (DatasetFileError, FileNotFoundError) as e:
        console.print(f"[red]error:[/] {e}")
        return 1
    if not records:
        console.print(f"[red]error:[/] no sequences with scans under {args.root / 'sequences'}")
        return 1

    problems: list[Problem] = []
    bad_scans = 0
    columns = (
        TextColumn("checking"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[bad]} bad"),
        TimeRemainingColumn(),
    )
    voxels = f"{args.voxel_size:g} m voxels" if args.voxel_size else "distinct positions"
    console.print(
        f"checking {len(records)} scans: min_points={args.min_points}, "
        f"min_voxels={args.min_voxels} ({voxels})"
    )
    jobs = [(r, label_map.path, args.min_points, args.voxel_size, args.min_voxels) for r in records]
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("scans", total=len(records), bad=0)
        pool = ProcessPoolExecutor(args.jobs) if args.jobs > 1 else None
        try:
            results = pool.map(_check, jobs, chunksize=16) if pool else map(_check, jobs)
            for found in results:
                problems += found
                bad_scans += bool(found)
                progress.update(task, advance=1, bad=bad_scans)
        finally:
            if pool:
                pool.shutdown()

    if not problems:
        console.print(f"[green]{len(records)} scans checked: no problems[/]")
        return 0
    console.print(_table(problems, args.root, args.all))
    console.print(
        f"[red]{len(problems)} problem(s) in {bad_scans} of {len(records)} scans.[/] "
        "Training skips them (data.on_bad_scan=skip); evaluation stops at them."
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
