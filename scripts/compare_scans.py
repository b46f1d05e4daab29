#!/usr/bin/env python
"""Compare a synthetic scan with a real SemanticKITTI scan: statistics table and a figure.

    python scripts/compare_scans.py                      # defaults below
    python scripts/compare_scans.py --synthetic data/synthetic_kitti/sequences/04/velodyne/000000.bin \\
        --real $PCSEG_REAL_DATA/sequences/00/velodyne/000000.bin --out docs/compare_scans.png

Defaults: synthetic = first frame of the default validation sequence in data/synthetic_kitti;
real = $PCSEG_REAL_DATA/sequences/00/velodyne/000000.bin. Labels are looked up beside each scan
by the SemanticKITTI layout (``velodyne/X.bin`` -> ``labels/X.label``) unless given.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from pcseg import PROJECT_ROOT
from pcseg.data.io import read_labels, read_scan
from pcseg.data.labels import load_label_map
from pcseg.data.synthetic import DEFAULT_SPLIT

PERCENTILES = (1, 5, 25, 50, 75, 95, 99)


def labels_beside(scan: Path) -> Path | None:
    """``.../velodyne/X.bin`` -> ``.../labels/X.label`` if that file exists."""
    cand = scan.parent.parent / "labels" / (scan.stem + ".label")
    return cand if cand.is_file() else None


def load(scan: Path, labels: Path | None, lm) -> dict:
    """Scan arrays plus derived range, elevation and training labels (None without labels)."""
    xyz, rem = read_scan(scan)
    rng = np.linalg.norm(xyz, axis=1)
    out = {
        "xyz": xyz,
        "remission": rem,
        "range": rng,
        "elevation": np.degrees(np.arcsin(np.clip(xyz[:, 2] / np.maximum(rng, 1e-6), -1, 1))),
        "train": None,
    }
    if labels is not None:
        sem, _ = read_labels(labels, num_points=len(xyz))
        out["train"] = lm.to_train(sem, labels)
    return out


def stats_table(scans: dict[str, dict]) -> str:
    """Percentile table (text) of range, z, elevation and remission for each scan."""
    w = 8 * len(PERCENTILES) + 4
    rows = [f"{'statistic':<16}" + "".join(f"{name:>{w}}" for name in scans)]
    rows.append(f"{'points':<16}" + "".join(f"{len(s['range']):>{w},}" for s in scans.values()))
    rows.append(
        f"{'percentile':<16}"
        + "".join(f"{'':4}" + "".join(f"{p:>7}%" for p in PERCENTILES) for _ in scans)
    )
    for key, label in (
        ("range", "range m"),
        ("z", "z m"),
        ("elevation", "elevation deg"),
        ("remission", "remission"),
    ):
        vals = []
        for s in scans.values():
            v = s["xyz"][:, 2] if key == "z" else s[key]
            vals.append(f"{'':4}" + "".join(f"{x:8.2f}" for x in np.percentile(v, PERCENTILES)))
        rows.append(f"{label:<16}" + "".join(vals))
    return "\n".join(rows)


def figure(scans: dict[str, dict], lm, out: Path) -> None:
    """Histograms, class proportions and bird's-eye views, saved as a PNG at ``out``."""
    names = list(scans)
    colors = ["tab:orange", "tab:blue"]
    fig = plt.figure(figsize=(16, 10), dpi=72)
    grid = fig.add_gridspec(3, 4)
    ax = fig.add_subplot(grid[0, 0])
    ax.bar(names, [len(s["range"]) for s in scans.values()], color=colors)
    ax.set_title("points per scan")
    for k, (key, title, bins) in enumerate(
        [
            ("range", "range (m)", np.linspace(0, 80, 81)),
            ("z", "height z (m, sensor frame)", np.linspace(-4, 4, 81)),
            ("elevation", "elevation (deg)", np.linspace(-27, 5, 65)),
            ("remission", "remission", np.linspace(0, 1, 51)),
        ]
    ):
        ax = fig.add_subplot(grid[(k + 1) // 4, (k + 1) % 4])
        for (name, s), c in zip(scans.items(), colors, strict=False):
            v = s["xyz"][:, 2] if key == "z" else s[key]
            ax.hist(v, bins=bins, histtype="step", density=True, color=c, label=name, lw=1.5)
        ax.set_title(title)
        ax.legend(fontsize=8)
    ax = fig.add_subplot(grid[1, 1:])
    width = 0.4
    cls = np.arange(1, lm.num_classes)
    for i, ((name, s), c) in enumerate(zip(scans.items(), colors, strict=False)):
        if s["train"] is None:
            continue
        frac = np.bincount(s["train"], minlength=lm.num_classes)[1:] / len(s["train"]) * 100
        ax.bar(
            cls + (i - 0.5) * width,
            frac,
            width,
            color=lm.train_colors_rgb[1:],
            edgecolor=c,
            linewidth=1.5,
            label=name,
        )
    ax.set_xticks(cls, lm.class_names[1:], rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("% of points")
    ax.set_yscale("symlog", linthresh=1.0)
    ax.set_title("class proportions (bar edge: scan)")
    ax.legend(fontsize=8)
    for i, name in enumerate(names):
        s = scans[name]
        ax = fig.add_subplot(grid[2, 2 * i : 2 * i + 2])
        keep = s["range"] < 50
        xyz = s["xyz"][keep]
        col = lm.train_colors_rgb[s["train"][keep]] if s["train"] is not None else "k"
        ax.scatter(xyz[:, 0], xyz[:, 1], s=0.05, c=col, rasterized=True)
        ax.set_aspect("equal")
        ax.set_xlim(-50, 50)
        ax.set_ylim(-25, 25)
        ax.set_title(f"bird's-eye view: {name} (coloured by class, range < 50 m)")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=72)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    real_root = os.environ.get("PCSEG_REAL_DATA")
    default_real = (Path(real_root) / "sequences/00/velodyne/000000.bin") if real_root else None
    valid = DEFAULT_SPLIT["valid"][0]
    default_syn = (
        PROJECT_ROOT / "data/synthetic_kitti/sequences" / f"{valid:02d}" / "velodyne/000000.bin"
    )
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--synthetic", type=Path, default=default_syn)
    p.add_argument("--real", type=Path, default=default_real)
    p.add_argument("--synthetic-labels", type=Path, default=None)
    p.add_argument("--real-labels", type=Path, default=None)
    p.add_argument("--out", type=Path, default=PROJECT_ROOT / "docs" / "compare_scans.png")
    args = p.parse_args(argv)
    if args.real is None:
        p.error("--real not given and $PCSEG_REAL_DATA is unset")
    for path in (args.synthetic, args.real):
        if not path.is_file():
            p.error(f"{path}: no such scan (run scripts/make_synthetic_dataset.py first?)")
    lm = load_label_map()
    scans = {
        "synthetic": load(
            args.synthetic, args.synthetic_labels or labels_beside(args.synthetic), lm
        ),
        "real": load(args.real, args.real_labels or labels_beside(args.real), lm),
    }
    print(stats_table(scans))
    for name, s in scans.items():
        if s["train"] is not None:
            frac = np.bincount(s["train"], minlength=lm.num_classes) / len(s["train"]) * 100
            print(
                f"{name} classes %: "
                + ", ".join(
                    f"{lm.class_names[c]} {frac[c]:.1f}" for c in np.argsort(-frac) if frac[c] > 0
                )
            )
    figure(scans, lm, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
