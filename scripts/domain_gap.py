#!/usr/bin/env python
"""Measure the simulated-to-real domain gap class by class: a markdown table and a PNG.

    python scripts/domain_gap.py                         # defaults below
    python scripts/domain_gap.py --synthetic data/synthetic_kitti --sequences 50 51 \\
        --real $PCSEG_REAL_DATA --unlabeled ../shared/data/kitti_unlabeled --out docs/domain_gap

Compares simulated scans (default: the validation sequences of data/synthetic_kitti, generated
first if absent) with the real labelled scans ($PCSEG_REAL_DATA, SemanticKITTI layout) per
class: share of points (against SemanticKITTI's dataset-wide ``content``), height above the
local ground, range, remission, elevation, points per object and local shape (verticality,
linearity, planarity, scattering of 16 neighbours); and, class-agnostic, with the unlabelled
KITTI scans (default: ``kitti_unlabeled`` beside $PCSEG_REAL_DATA). The distance is the
Wasserstein-1 distance divided by the real distribution's interquartile range (share:
|log2 ratio|); see pcseg/data/synthetic/gap.py. Real-vs-real (labelled vs unlabelled KITTI)
is printed beside sim-vs-real as the floor a simulator can hope for.

Writes OUT.md and OUT.png (default docs/domain_gap). A few seconds per scan.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from pcseg import PROJECT_ROOT
from pcseg.data.labels import LabelMap, load_label_map
from pcseg.data.synthetic import DEFAULT_SPLIT, ensure_dataset
from pcseg.data.synthetic.gap import (
    OBJECT_STAT,
    POINT_STATS,
    Gap,
    ScanSet,
    compare,
    content_shares,
    load_scan_set,
    rank,
)

STATS = ["share", *POINT_STATS, OBJECT_STAT]
SHORT = {OBJECT_STAT: "pts/object"}


def scans_of(root: Path, sequences: list[int] | None, limit: int) -> list[Path]:
    """``.bin`` scans of a SemanticKITTI-layout root (given sequences) or of a loose folder."""
    if (root / "sequences").is_dir():
        seqs = sequences or sorted(int(p.name) for p in (root / "sequences").iterdir())
        out = [
            p
            for s in seqs
            for p in sorted((root / "sequences" / f"{s:02d}" / "velodyne").glob("*.bin"))
        ]
    else:
        out = sorted(root.glob("*.bin"))
    return out[:limit] if limit > 0 else out


def fmt(g: Gap) -> tuple[str, str]:
    if g.stat == "share":
        return f"{100 * g.sim:.2f} %", f"{100 * g.real:.2f} %"
    if g.stat == OBJECT_STAT:
        return f"{g.sim:.0f}", f"{g.real:.0f}"
    return f"{g.sim:.3g}", f"{g.real:.3g}"


def markdown(
    gaps: list[Gap], agnostic: list[tuple[str, list[Gap]]], names: list[str], info: str, top: int
) -> str:
    """The report: largest gaps, the class x statistic matrix, and the class-agnostic table."""
    lines = ["# Simulated vs real LiDAR: the domain gap", "", info, ""]
    lines += [
        f"## The {top} largest gaps (distance = W1 / real IQR; share: |log2 ratio|)",
        "",
        "| # | class | statistic | simulated (median) | real (median) | distance |",
        "|---|---|---|---|---|---|",
    ]
    for k, g in enumerate(rank(gaps)[:top], 1):
        s, r = fmt(g)
        lines.append(
            f"| {k} | {g.cls} | {SHORT.get(g.stat, g.stat)} | {s} | {r} | {g.distance:.2f} |"
        )
    lines += ["", "## Every class and statistic (distance)", ""]
    lines.append("| class | " + " | ".join(SHORT.get(s, s) for s in STATS) + " |")
    lines.append("|---" * (len(STATS) + 1) + "|")
    table = {(g.cls, g.stat): g for g in gaps}
    for name in ["all points", *names[1:]]:
        cells = []
        for stat in STATS:
            g = table.get((name, stat))
            cells.append("" if g is None else f"{g.distance:.2f}")
        if any(cells):
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if agnostic:
        lines += ["", "## Class-agnostic, against unlabelled KITTI scans (distance; median)", ""]
        header = "| statistic | " + " | ".join(f"{n} (dist)" for n, _ in agnostic)
        lines.append(
            header
            + " | "
            + " | ".join(f"{n} (median)" for n, _ in agnostic)
            + " | unlabelled (median) |"
        )
        lines.append("|---" * (2 * len(agnostic) + 2) + "|")
        for stat in POINT_STATS:
            row = [next((g for g in gs if g.stat == stat), None) for _, gs in agnostic]
            if any(g is None for g in row):
                continue
            dist = " | ".join(f"{g.distance:.2f}" for g in row)
            med = " | ".join(f"{g.sim:.3g}" for g in row)
            lines.append(f"| {stat} | {dist} | {med} | {row[0].real:.3g} |")
    return "\n".join(lines) + "\n"


def figure(
    gaps: list[Gap], agnostic: list[tuple[str, list[Gap]]], names: list[str], out: Path
) -> None:
    """Heat map class x statistic, and the class-agnostic distances as bars."""
    rows = [n for n in ["all points", *names[1:]] if any(g.cls == n for g in gaps)]
    mat = np.full((len(rows), len(STATS)), np.nan)
    for g in gaps:
        if g.cls in rows:
            mat[rows.index(g.cls), STATS.index(g.stat)] = g.distance
    fig = plt.figure(figsize=(15, 8), dpi=80)
    grid = fig.add_gridspec(1, 3)
    ax = fig.add_subplot(grid[0, :2])
    im = ax.imshow(np.minimum(mat, 3.0), cmap="magma_r", vmin=0, vmax=3.0, aspect="auto")
    for i in range(mat.shape[0]):
        for j in range(mat.shape[1]):
            if np.isfinite(mat[i, j]):
                ax.text(
                    j,
                    i,
                    f"{mat[i, j]:.1f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if mat[i, j] > 1.5 else "black",
                )
    ax.set_xticks(range(len(STATS)), [SHORT.get(s, s) for s in STATS], rotation=35, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    ax.set_title(
        "simulated vs real SemanticKITTI: distance per class and statistic\n"
        "(W1 / real IQR; share: |log2 ratio| vs dataset content; capped at 3)"
    )
    fig.colorbar(im, ax=ax, fraction=0.03)
    ax = fig.add_subplot(grid[0, 2])
    stats = list(POINT_STATS)
    width = 0.8 / max(len(agnostic), 1)
    for k, (name, gs) in enumerate(agnostic):
        d = [next((g.distance for g in gs if g.stat == s), np.nan) for s in stats]
        ax.barh(np.arange(len(stats)) + k * width, d, width, label=name)
    ax.set_yticks(np.arange(len(stats)) + width * (len(agnostic) - 1) / 2, stats)
    ax.invert_yaxis()
    ax.set_xlabel("distance to unlabelled KITTI scans")
    ax.set_title("class-agnostic")
    ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)


def _parser() -> argparse.ArgumentParser:
    """The command line; ``--real`` defaults to $PCSEG_REAL_DATA (None when unset)."""
    real_env = os.environ.get("PCSEG_REAL_DATA")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--synthetic", type=Path, default=PROJECT_ROOT / "data/synthetic_kitti")
    p.add_argument(
        "--sequences",
        type=int,
        nargs="*",
        default=DEFAULT_SPLIT["valid"],
        help="simulated sequences (default: the validation split)",
    )
    p.add_argument("--real", type=Path, default=Path(real_env) if real_env else None)
    p.add_argument(
        "--unlabeled",
        type=Path,
        default=None,
        help="folder of unlabelled .bin scans (default: kitti_unlabeled beside --real)",
    )
    p.add_argument("--max-scans", type=int, default=24, help="at most this many scans per set")
    p.add_argument("--max-points", type=int, default=20000, help="points sampled per scan")
    p.add_argument("--top", type=int, default=20, help="rows of the largest-gap table")
    p.add_argument(
        "--out",
        type=Path,
        default=PROJECT_ROOT / "docs/domain_gap",
        help="writes OUT.md and OUT.png",
    )
    return p


def _labelled_sets(
    p: argparse.ArgumentParser, args: argparse.Namespace, lm: LabelMap
) -> dict[str, ScanSet]:
    """The labelled scan sets, ``simulated`` (``--sequences`` of ``--synthetic``) and ``real``
    (every sequence of ``--real``), at most ``--max-scans`` each; a usage error (exit 2) when
    either has no scan."""
    sets: dict[str, ScanSet] = {}
    for name, root, seqs in (
        ("simulated", args.synthetic, args.sequences),
        ("real", args.real, None),
    ):
        files = scans_of(root, seqs, args.max_scans)
        if not files:
            p.error(f"{root}: no .bin scans found")
        sets[name] = load_scan_set(name, files, lm, max_points=args.max_points)
    return sets


def _class_agnostic(
    sets: dict[str, ScanSet], unlabeled: Path, lm: LabelMap, args: argparse.Namespace
) -> list[tuple[str, list[Gap]]]:
    """The 'all points' gaps of the simulated and of the labelled real scans to the unlabelled
    KITTI scans (labels unused): real-vs-real is the floor a simulator can hope for. Empty
    when ``unlabeled`` is not a folder of scans."""
    files = scans_of(unlabeled, None, args.max_scans) if unlabeled.is_dir() else []
    if not files:
        return []
    unl = load_scan_set("unlabeled", files, None, max_points=args.max_points)
    agnostic: list[tuple[str, list[Gap]]] = []
    for name in ("simulated", "real"):
        label = "real (labelled)" if name == "real" else name
        agnostic.append(
            (label, [g for g in compare(sets[name], unl, lm.class_names) if g.cls == "all points"])
        )
    return agnostic


def _info(
    args: argparse.Namespace, sets: dict[str, ScanSet], unlabeled: Path, elapsed: float
) -> str:
    """The report's opening paragraph: what was compared, how, and how far to trust it."""
    return (
        f"Simulated: {sets['simulated'].scans} scans of `{args.synthetic.name}` "
        f"(sequences {args.sequences[0]}-{args.sequences[-1]}); real: {sets['real'].scans} labelled "
        f"SemanticKITTI scans; unlabelled: {unlabeled.name}. {args.max_points} points sampled per "
        f"scan; shares against SemanticKITTI's `content`. {elapsed:.0f} s. "
        "Command: `python scripts/domain_gap.py`.\n\nRead with care: the labelled real scans are "
        "three consecutive frames of one street, so a single class's range, elevation or height "
        "there says as much about that street as about the simulator (the rare classes have a "
        "few dozen points); the shares, the shape statistics and the class-agnostic table "
        "(five more KITTI scans, other streets) are the robust part. Rare classes are "
        "over-represented on purpose (every validation scene shows all 19 classes)."
    )


def main(argv: list[str] | None = None) -> int:
    p = _parser()
    args = p.parse_args(argv)
    if args.real is None:
        p.error("--real not given and $PCSEG_REAL_DATA is unset")
    if not (args.real / "sequences").is_dir():
        p.error(f"{args.real}: no sequences/ folder (not a SemanticKITTI-layout root)")
    unlabeled = args.unlabeled or args.real.parent / "kitti_unlabeled"
    if args.synthetic.resolve() == (PROJECT_ROOT / "data/synthetic_kitti").resolve():
        ensure_dataset(args.synthetic)
    lm = load_label_map()
    start = time.perf_counter()
    sets = _labelled_sets(p, args, lm)
    gaps = compare(
        sets["simulated"], sets["real"], lm.class_names, reference_shares=content_shares(lm)
    )
    agnostic = _class_agnostic(sets, unlabeled, lm, args)
    info = _info(args, sets, unlabeled, time.perf_counter() - start)
    md = markdown(gaps, agnostic, lm.class_names, info, args.top)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text(md)
    figure(gaps, agnostic, lm.class_names, args.out.with_suffix(".png"))
    print(md)
    print(f"wrote {args.out.with_suffix('.md')} and {args.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
