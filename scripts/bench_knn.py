"""Benchmark ``pcseg.ops.knn`` against scipy's cKDTree and pykdtree on real scans.

    python scripts/bench_knn.py [--root DATASET] [--k 16] [--repeats 7]

Cases: one real SemanticKITTI scan (query = support = the scan, ~124k points) and a batch of
4 clouds of 30k points (random subsets of the scans, searched per cloud by offsets). Every
timing includes building the index, as a fresh scan needs. The rows of a case are timed
round-robin, one call of each per round, so background load hits all of them alike; the
table shows the median over rounds and ratios against the peers of the same run.
``run_knn_benchmark`` returns the rows so ``scripts/bench_ops.py`` can include them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from pcseg.data.io import read_scan
from pcseg.ops.knn import available_backends, knn, resolve_backend

DEFAULT_ROOT = "/work/shared/data/semantickitti"
# Brute force is O(M*N): fine on a GPU, minutes on 2 CPU cores at 124k points.
CPU_BRUTEFORCE_MAX_PAIRS = 2e9


def _scan_paths(root: Path) -> list[Path]:
    paths = sorted(root.glob("sequences/*/velodyne/*.bin"))
    if not paths:
        raise FileNotFoundError(f"{root}: no sequences/*/velodyne/*.bin scans")
    return paths


def _cases(root: Path, clouds: int, cloud_size: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """name -> (points (N, 3) float32, offset (B,) int64) as numpy."""
    paths = _scan_paths(root)
    scan = read_scan(paths[0])[0]
    rng = np.random.default_rng(0)
    parts = []
    for b in range(clouds):
        xyz = read_scan(paths[b % len(paths)])[0]
        parts.append(xyz[rng.choice(len(xyz), size=min(cloud_size, len(xyz)), replace=False)])
    lengths = np.array([len(p) for p in parts], dtype=np.int64)
    return {
        f"scan {paths[0].stem} ({len(scan)} pts)": (scan, np.array([len(scan)], dtype=np.int64)),
        f"batch {clouds}x{cloud_size}": (np.concatenate(parts), np.cumsum(lengths)),
    }


def _per_cloud(points: np.ndarray, offset: np.ndarray, search: Callable[[np.ndarray], Any]) -> None:
    start = 0
    for end in offset.tolist():
        search(points[start:end])
        start = end


def _methods(points: np.ndarray, offset: np.ndarray, k: int) -> dict[str, Callable[[], Any]]:
    """name -> zero-argument callable doing the full search (index build included)."""
    from pykdtree.kdtree import KDTree
    from scipy.spatial import cKDTree

    methods: dict[str, Callable[[], Any]] = {
        "cKDTree (workers=-1)": lambda: _per_cloud(
            points, offset, lambda p: cKDTree(p).query(p, k=k, workers=-1)
        ),
        "pykdtree": lambda: _per_cloud(points, offset, lambda p: KDTree(p).query(p, k=k)),
    }
    pts = torch.from_numpy(points)
    off = torch.from_numpy(offset)
    lengths = offset - np.concatenate([[0], offset[:-1]])
    for name in available_backends("cpu"):
        if name == "bruteforce" and float((lengths.astype(np.float64) ** 2).sum()) > (
            CPU_BRUTEFORCE_MAX_PAIRS
        ):
            continue
        methods[f"ours: {name} (cpu)"] = lambda n=name: knn(pts, pts, k, off, off, backend=n)
    if torch.cuda.is_available():
        cuda_pts, cuda_off = pts.cuda(), off.cuda()

        def on_cuda(name: str) -> Callable[[], Any]:
            def run() -> Any:
                out = knn(cuda_pts, cuda_pts, k, cuda_off, cuda_off, backend=name)
                torch.cuda.synchronize()
                return out

            return run

        for name in available_backends("cuda"):
            methods[f"ours: {name} (cuda)"] = on_cuda(name)
    return methods


def run_knn_benchmark(
    root: str | Path | None = None,
    k: int = 16,
    repeats: int = 7,
    clouds: int = 4,
    cloud_size: int = 30_000,
    progress: Progress | None = None,
) -> list[dict[str, Any]]:
    """Time every KNN method on the real-scan cases. Returns one dict per (case, method):
    ``case, method, points, clouds, k, median_s, min_s, vs_ckdtree, vs_pykdtree`` (ratios are
    the peer's median time / this method's: > 1 means this method is faster)."""
    root = Path(root or os.environ.get("PCSEG_REAL_DATA", DEFAULT_ROOT))
    rows: list[dict[str, Any]] = []
    own_progress = progress is None
    progress = progress or Progress(transient=True)
    if own_progress:
        progress.start()
    try:
        for case, (points, offset) in _cases(root, clouds, cloud_size).items():
            methods = _methods(points, offset, k)
            for fn in methods.values():  # warm-up: imports, thread pools, CUDA context
                fn()
            times: dict[str, list[float]] = {name: [] for name in methods}
            task = progress.add_task(case, total=repeats * len(methods))
            names = list(methods)
            for r in range(repeats):
                for name in names[r % len(names) :] + names[: r % len(names)]:
                    t0 = time.perf_counter()
                    methods[name]()
                    times[name].append(time.perf_counter() - t0)
                    progress.advance(task)
            ckd = statistics.median(times["cKDTree (workers=-1)"])
            pyk = statistics.median(times["pykdtree"])
            for name, ts in times.items():
                med = statistics.median(ts)
                rows.append(
                    {
                        "case": case,
                        "method": name,
                        "points": int(offset[-1]),
                        "clouds": len(offset),
                        "k": k,
                        "median_s": med,
                        "min_s": min(ts),
                        "vs_ckdtree": ckd / med,
                        "vs_pykdtree": pyk / med,
                    }
                )
    finally:
        if own_progress:
            progress.stop()
    return rows


def knn_table(rows: list[dict[str, Any]]) -> Table:
    """A rich table of ``run_knn_benchmark`` rows."""
    table = Table(title=f"KNN (k={rows[0]['k']}), index build + query, median of rounds")
    for col in ("case", "method", "median ms", "min ms", "cKDTree / this", "pykdtree / this"):
        table.add_column(col, justify="left" if col in ("case", "method") else "right")
    for row in rows:
        table.add_row(
            row["case"],
            row["method"],
            f"{row['median_s'] * 1e3:.1f}",
            f"{row['min_s'] * 1e3:.1f}",
            f"{row['vs_ckdtree']:.2f}x",
            f"{row['vs_pykdtree']:.2f}x",
        )
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=None, help="SemanticKITTI root ($PCSEG_REAL_DATA)")
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    console = Console(width=max(Console().width, 110))
    console.print(
        f"torch threads: {torch.get_num_threads()}, OMP_NUM_THREADS="
        f"{os.environ.get('OMP_NUM_THREADS', 'unset')}, auto backend on cpu: "
        f"{resolve_backend(None, 'cpu')}"
    )
    with Progress(console=console, transient=True) as progress:
        rows = run_knn_benchmark(args.root, args.k, args.repeats, progress=progress)
    console.print(knn_table(rows))


if __name__ == "__main__":
    main()
