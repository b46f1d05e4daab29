#!/usr/bin/env python
"""Convert your own labelled clouds into the SemanticKITTI layout pcseg trains on.

    python scripts/convert_dataset.py --input my_scans/ --output data/my_dataset \
        --labels configs/labels/my-labels.yaml

Input: .ply/.pcd files with a per-point label field (``label``, ``class``, ``scalar_label``...;
choose with --label-field), or .npy pairs (<name>.npy: x, y, z[, intensity] rows;
<name>.labels.npy: one integer label per point). Files directly in --input become sequence
--sequence (default 0); each subfolder becomes its own sequence (numeric names keep their
number). Output: OUTPUT/sequences/NN/velodyne/NNNNNN.bin, labels/NNNNNN.label and
OUTPUT/conversion.csv (source file -> sequence, frame). With --labels every raw id is checked
against the label yaml's learning_map. A bad file is reported with its reason and skipped;
exit status 1 if any file failed. See docs/own_dataset.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from pcseg.convert_dataset import ConversionError, ConvertedScan, convert_folder, plan_conversion
from pcseg.data.errors import LabelConfigError
from pcseg.data.labels import load_label_map


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    p.add_argument("--input", required=True, type=Path, help="folder of labelled clouds")
    p.add_argument("--output", required=True, type=Path, help="dataset root to write")
    p.add_argument("--labels", type=Path, help="label yaml to check the raw ids against")
    p.add_argument("--label-field", help="per-point label field name (default: try common ones)")
    p.add_argument("--sequence", type=int, default=0, help="sequence of the top-level files")
    p.add_argument("--overwrite", action="store_true", help="replace existing sequence folders")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(soft_wrap=True)  # long paths stay on one line in logs
    interactive = sys.stdout.isatty()
    try:
        label_map = load_label_map(args.labels) if args.labels else None
        total = len(plan_conversion(args.input, args.sequence))
    except (ConversionError, LabelConfigError) as e:
        console.print(f"[red]error:[/] {e}", highlight=False)
        return 1
    progress = Progress(
        TextColumn("converting"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not interactive,
    )

    def on_scan(scan: ConvertedScan, points: int | None, error: str | None) -> None:
        where = f"sequences/{scan.sequence}/velodyne/{scan.frame}.bin"
        text = f"FAILED {error}" if error else f"{scan.source} -> {where} ({points:,} points)"
        if interactive:
            if error:
                progress.console.print(f"[red]{text}[/]", highlight=False)
        else:
            print(text, flush=True)
        progress.advance(task)

    with progress:
        task = progress.add_task("convert", total=total)
        try:
            result = convert_folder(
                args.input,
                args.output,
                sequence=args.sequence,
                label_field=args.label_field,
                label_map=label_map,
                overwrite=args.overwrite,
                on_scan=on_scan,
            )
        except ConversionError as e:
            console.print(f"[red]error:[/] {e}", highlight=False)
            return 1
    sequences = sorted({s.sequence for s, _ in result.written})
    points = sum(n for _, n in result.written)
    console.print(
        f"wrote {len(result.written)} scans ({points:,} points) into {result.root}/sequences "
        f"({', '.join(sequences) or 'none'}); index: {result.root / 'conversion.csv'}",
        highlight=False,
    )
    if result.without_intensity:
        console.print(
            f"[yellow]{len(result.without_intensity)} file(s) had no intensity field: written "
            "with remission 0 (e.g. "
            f"{result.without_intensity[0]}); train with data.features=[height,range] if none has one",
            highlight=False,
        )
    if result.failed:
        console.print(f"[red]{len(result.failed)} file(s) FAILED:[/]", highlight=False)
        for _, reason in result.failed:
            console.print(f"  {reason}", highlight=False)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
