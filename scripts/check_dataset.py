#!/usr/bin/env python
"""Check every scan and label file of a SemanticKITTI-layout root before a long run.

    python scripts/check_dataset.py --root /datasets/semantickitti
    python scripts/check_dataset.py --root data/synthetic_kitti --sequences 0 1 --jobs 2

Runs the checks training uses (pcseg.data.validation: corrupt or truncated scans, NaN/inf
points, fewer than --min-points points, label files missing, corrupt, of the wrong length or
with ids the label yaml does not define), then prints one table row per problem kind with its
count and example files. Exit status: 0 clean, 1 any problem (also a missing root or sequence).

A scan needs a label file when its sequence is in the label yaml's train or valid split or has
a labels/ folder; elsewhere (the test split) labels are checked only where they exist.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from pcseg.data.errors import DatasetFileError
from pcseg.data.labels import LabelMap, load_label_map
from pcseg.data.semantickitti import ScanRecord, index_scans
from pcseg.data.validation import DEFAULT_MIN_POINTS, Problem, check_scan

EXAMPLES = 3  # files shown per problem kind


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    p.add_argument("--root", required=True, type=Path, help="dataset root (holds sequences/)")
    p.add_argument("--sequences", nargs="+", help="sequence ids, e.g. 0 1 8 (default: all)")
    p.add_argument("--labels", type=Path, help="label yaml (default: SemanticKITTI's)")
    p.add_argument("--min-points", type=int, default=DEFAULT_MIN_POINTS, help="as data.min_points")
    p.add_argument("--jobs", type=int, default=1, help="worker processes")
    p.add_argument("--all", action="store_true", help="list every problem, not only examples")
    return p.parse_args(argv)


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


def _check(args: tuple[ScanRecord, Path, int]) -> list[Problem]:
    record, label_config, min_points = args
    return check_scan(record.scan_path, record.label_path, load_label_map(label_config), min_points)


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
    jobs = [(r, label_map.path, args.min_points) for r in records]
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
