"""Benchmark the continuous-convolution layer against its peers (time and peak memory).

    python scripts/bench_ops.py [--sizes 20000,real] [--channels 64] [--k 16]
                                [--hidden 16,16 16,32] [--repeat 3] [--skip-naive]
    python scripts/bench_ops.py --network      # experiment=pccn_kitti network, one real scan

``--network``: one forward+backward of the ``experiment=pccn_kitti`` network (width 64, depth
8, K 16, full kernels, kernel_hidden [16, 32]) on the whole real scan (~124.7k points, no
voxelisation) on CPU, in a fresh subprocess: wall time, peak extra RSS of the step (VmHWM -
VmRSS before it), and the bytes autograd saved for backward (``saved_tensors_hooks``), per
point. The KNN of every level is computed before the measured step.

Methods, all computing the same function of feat at the same N, K and channels:
  reference   pcseg.ops.continuous_conv_reference (materialises M x K x C_in x C_out)
  nnconv      torch_geometric NNConv(aggr='mean', root_weight=False, bias=False) with the same
              kernel MLP (weight = nn(pos_i - pos_j).view(C_in, C_out), x_j @ weight, mean)
  open3d      open3d.ml.torch.layers.ContinuousConv, fused C++, 4x4x4 filter grid, fed the SAME
              K neighbours (user_neighbors_index) with per-point extents = 2 x the K-th neighbour
              distance, so every neighbour lies inside its filter
  full        pcseg ContinuousConv(kernel='full')        (the factorised fused path)
  separable   pcseg ContinuousConv(kernel='separable')

Sizes: an integer N is a spatial crop of the real scan (the N points nearest to a point of the
scan); 'real' is the whole scan $PCSEG_REAL_DATA/sequences/00/velodyne/000000.bin (~124k
points). Without the scan, random points in a 40 m box are used (noted in the output).

Method of measurement: every (size, kernel_hidden, method) case runs in a FRESH subprocess, so
one case's allocations cannot hide or inflate another's. The worker builds its inputs, runs one
warm-up forward+backward, then for each phase (forward; forward+backward) and each repeat it
resets the kernel's peak-RSS counter (writing 5 to /proc/self/clear_refs resets VmHWM), reads
VmRSS, runs the phase and reads VmHWM: "peak MB" is VmHWM - VmRSS before the phase, the extra
resident memory the phase needed (max over repeats). Times are wall clock, min and median over
repeats; gradients are taken w.r.t. feat and all parameters (positions are data). Ratios are
computed between rows of the same run. "load" is the 1-minute load average around the case:
above ~2 on 2 cores other processes shared them and times are inflated (the chunked fast paths,
made of many short multi-threaded ops, suffer most). The KNN rows come from scripts/bench_knn.py.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

    import torch
    from rich.console import Console
    from rich.table import Table

DEFAULT_SCAN = "/work/shared/data/semantickitti"
SCAN_REL = "sequences/00/velodyne/000000.bin"
METHODS = ("reference", "nnconv", "open3d", "full", "separable")
NAIVE = ("reference", "nnconv")


# ---------------------------------------------------------------------------------------------
# worker: one case, in its own process
# ---------------------------------------------------------------------------------------------


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status")


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def _points(size: str, seed: int = 0):
    """(N, 3) float32 tensor for a size spec, and a note on where it came from."""
    import numpy as np
    import torch

    from pcseg.ops import knn

    root = Path(os.environ.get("PCSEG_REAL_DATA", DEFAULT_SCAN))
    scan = root / SCAN_REL
    if scan.is_file():
        from pcseg.data.io import read_scan

        xyz = torch.from_numpy(read_scan(scan)[0])
        note = f"real scan {SCAN_REL}"
        if size == "real" or int(size) >= len(xyz):
            return xyz, note
        centre = xyz[len(xyz) // 3].unsqueeze(0)
        crop = knn(centre, xyz, int(size)).idx[0]
        return xyz[crop].contiguous(), f"{note}, crop of the {size} points nearest one point"
    n = 124_668 if size == "real" else int(size)
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.uniform(-20, 20, (n, 3)).astype(np.float32)), "random points"


def _mlp(hidden: tuple[int, ...], emit: int):
    from torch import nn

    layers: list[nn.Module] = []
    width = 3
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, emit))
    return nn.Sequential(*layers)


def _build_open3d(
    pos: torch.Tensor, idx: torch.Tensor, dist2: torch.Tensor, channels: int
) -> tuple[Callable[[torch.Tensor], torch.Tensor], list[torch.nn.Parameter]]:
    """open3d's ContinuousConv fed the same K neighbours (user_neighbors_index, CSR row
    splits), each point's filter extent 2 x its K-th neighbour distance (x 1.001), so every
    neighbour lies inside its filter; the forward closure and the parameters."""
    import open3d.ml.torch as ml3d
    import torch

    n = len(idx)
    conv = ml3d.layers.ContinuousConv(
        in_channels=channels,
        filters=channels,
        kernel_size=[4, 4, 4],
        activation=None,
        use_bias=False,
        normalize=True,
    )
    valid = idx >= 0
    nbr = idx[valid].to(torch.int32)
    splits = torch.zeros(n + 1, dtype=torch.int64)
    splits[1:] = torch.cumsum(valid.sum(1), 0)
    radius = torch.where(valid, dist2, torch.zeros_like(dist2)).clamp(min=0).amax(1).sqrt()
    extents = (2.0 * radius * 1.001).clamp(min=1e-3)
    return (
        lambda feat: conv(
            feat,
            pos,
            pos,
            extents=extents,
            user_neighbors_index=nbr,
            user_neighbors_row_splits=splits,
        ),
        list(conv.parameters()),
    )


def _build(method: str, pos, idx, dist2, channels: int, hidden: tuple[int, ...]):
    """A closure running the method's forward, and its parameters."""
    import torch

    n, k = idx.shape
    if method in ("full", "separable"):
        from pcseg.nn import ContinuousConv

        layer = ContinuousConv(channels, channels, hidden, kernel=method)
        return (lambda feat: layer(feat, pos, pos, idx)), list(layer.parameters())
    if method == "reference":
        from pcseg.nn import ContinuousConv
        from pcseg.ops import continuous_conv_reference

        layer = ContinuousConv(channels, channels, hidden, kernel="full")
        return (
            lambda feat: continuous_conv_reference(feat, pos, pos, idx, layer.kernel_mlp),
            list(layer.parameters()),
        )
    if method == "nnconv":
        from torch_geometric.nn import NNConv

        conv = NNConv(
            channels,
            channels,
            _mlp(hidden, channels * channels),
            aggr="mean",
            root_weight=False,
            bias=False,
        )
        valid = idx >= 0
        target = torch.arange(n).unsqueeze(1).expand(n, k)[valid]
        source = idx[valid]
        edge_index = torch.stack([source, target])  # messages flow source j -> target i
        edge_attr = pos[target] - pos[source]  # z = query_i - support_j
        return (lambda feat: conv(feat, edge_index, edge_attr)), list(conv.parameters())
    if method == "open3d":
        return _build_open3d(pos, idx, dist2, channels)
    raise ValueError(f"unknown method {method!r}")


def run_worker(args: argparse.Namespace) -> dict[str, Any]:
    """Time and measure one case; returns the JSON-able result."""
    import torch

    from pcseg.ops import knn

    torch.manual_seed(0)
    hidden = tuple(int(h) for h in args.hidden.split(",") if h)
    pos, note = _points(args.size)
    found = knn(pos, pos, args.k)
    fn, params = _build(args.method, pos, found.idx, found.dist2, args.channels, hidden)
    feat = torch.randn(len(pos), args.channels, requires_grad=True)

    def fwd() -> None:
        with torch.no_grad():
            fn(feat)

    def fwd_bwd() -> None:
        out = fn(feat)
        grads = torch.autograd.grad(out, [feat, *params], torch.ones_like(out))
        del out, grads

    fwd_bwd()  # warm-up: lazy imports, thread pools, allocator
    result: dict[str, Any] = {"n": len(pos), "note": note, "threads": torch.get_num_threads()}
    for phase, f in (("fwd", fwd), ("fwd_bwd", fwd_bwd)):
        times, peaks = [], []
        for _ in range(args.repeat):
            _reset_peak()
            base = _status_kb("VmRSS")
            t0 = time.perf_counter()
            f()
            times.append(time.perf_counter() - t0)
            peaks.append((_status_kb("VmHWM") - base) / 1024)
        result[phase] = {
            "min_s": min(times),
            "median_s": statistics.median(times),
            "peak_mb": max(peaks),
        }
    return result


def run_network_worker() -> dict[str, Any]:
    """One forward+backward of the experiment=pccn_kitti network on the real scan (CPU)."""
    import torch
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    import pcseg.config  # noqa: F401  (resolvers)
    from pcseg.structures import PointBatch

    torch.manual_seed(0)
    configs = str(Path(__file__).resolve().parents[1] / "configs")
    with initialize_config_dir(configs, job_name="bench_ops", version_base="1.3"):
        cfg = compose("train", overrides=["experiment=pccn_kitti"])
    net = instantiate(cfg.model.net)
    pos, note = _points("real")
    feat = torch.randn(len(pos), net.input_norm.num_features)
    batch = PointBatch(coord=pos, feat=feat, offset=torch.tensor([len(pos)]))
    saved = [0]

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved[0] += t.numel() * t.element_size()
        return t

    def step() -> None:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            logits = net(batch)
        logits.square().mean().backward()

    _reset_peak()
    base = _status_kb("VmRSS")
    t0 = time.perf_counter()
    step()
    seconds = time.perf_counter() - t0
    peak = (_status_kb("VmHWM") - base) / 1024
    n = len(pos)
    return {
        "n": n, "note": note, "threads": torch.get_num_threads(), "fwd_bwd_s": seconds,
        "peak_mb": peak, "peak_kb_per_point": peak * 1024 / n,
        "saved_mb": saved[0] / 2**20, "saved_kb_per_point": saved[0] / 1024 / n,
        "params": sum(p.numel() for p in net.parameters()),
    }  # fmt: skip


def network_main(timeout: int) -> None:
    load0 = os.getloadavg()[0]
    cmd = [sys.executable, __file__, "--worker", "--method", "network"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0:
        raise SystemExit(f"network worker failed:\n{res.stderr[-3000:]}")
    row = json.loads(res.stdout.strip().splitlines()[-1])
    row["load"] = (load0, os.getloadavg()[0])
    print(
        f"experiment=pccn_kitti network, one forward+backward on CPU ({row['threads']} threads), "
        f"N={row['n']} ({row['note']}), {row['params']:,} parameters\n"
        f"  time {row['fwd_bwd_s']:.1f} s   peak extra RSS {row['peak_mb']:.0f} MB "
        f"({row['peak_kb_per_point']:.1f} KB/point)   saved for backward "
        f"{row['saved_mb']:.0f} MB ({row['saved_kb_per_point']:.1f} KB/point)   "
        f"load {row['load'][0]:.1f} -> {row['load'][1]:.1f}"
    )


# ---------------------------------------------------------------------------------------------
# driver
# ---------------------------------------------------------------------------------------------


def _mem_available_mb() -> float:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    return float("inf")


def _naive_estimate_mb(n: int, k: int, c: int) -> float:
    """The naive forms hold the M x K x C_in x C_out kernel tensor and its gradient."""
    return 2.2 * n * k * c * c * 4 / 2**20


def _approx_n(size: str) -> int:
    return 124_668 if size == "real" else int(size)


def run_case(size: str, hidden: str, method: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        "--size",
        size,
        "--hidden",
        hidden,
        "--method",
        method,
        "--channels",
        str(args.channels),
        "--k",
        str(args.k),
        "--repeat",
        str(args.repeat),
    ]
    load_before = os.getloadavg()[0]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    load = max(load_before, os.getloadavg()[0])
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
        return {"error": f"exit {proc.returncode}: {tail[0][:120]}"}
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "load": load}


def _fmt_ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.1f}x" if a and b else "-"


def _parser() -> argparse.ArgumentParser:
    """The command line: the driver's options, plus the hidden ``--worker`` ones with which the
    driver runs each case in a fresh subprocess of this script."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="20000,real", help="comma list: N (crop) or 'real'")
    parser.add_argument("--channels", type=int, default=64, help="C_in = C_out")
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument(
        "--hidden", nargs="+", default=["16,16", "16,32"], help="kernel_hidden per run"
    )
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-naive", action="store_true", help="no reference / nnconv rows")
    parser.add_argument(
        "--naive-max", type=int, default=30_000, help="largest N for the naive forms"
    )
    parser.add_argument("--skip-knn", action="store_true")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per case")
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    parser.add_argument(
        "--network", action="store_true", help="peak memory of the pccn_kitti network instead"
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--size", help=argparse.SUPPRESS)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    return parser


def _plan_cases(args: argparse.Namespace) -> tuple[list[tuple[str, str, str]], list[str]]:
    """The (size, hidden, method) cases to run, and a line per case left out: the naive forms
    (they hold the M x K x C_in x C_out kernel tensor) above ``--naive-max`` points, under
    ``--skip-naive``, or when their estimated memory exceeds 80 % of MemAvailable."""
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    methods = [m for m in args.methods.split(",") if m]
    cases, skipped = [], []
    for size in sizes:
        for hidden in args.hidden:
            for method in methods:
                n = _approx_n(size)
                if method in NAIVE:
                    need = _naive_estimate_mb(n, args.k, args.channels)
                    if args.skip_naive or n > args.naive_max:
                        skipped.append(
                            f"{method} at N={size}: naive form skipped (--naive-max/--skip-naive)"
                        )
                        continue
                    if need > 0.8 * _mem_available_mb():
                        skipped.append(f"{method} at N={size}: needs ~{need:.0f} MB, not available")
                        continue
                cases.append((size, hidden, method))
    return cases, skipped


def _run_cases(
    cases: list[tuple[str, str, str]], args: argparse.Namespace, console: Console
) -> list[dict[str, Any]]:
    """Run the cases one after the other, each in a fresh subprocess (:func:`run_case`: one
    case's allocations cannot hide or inflate another's), under a transient progress bar; one
    row per case: its size, hidden and method, and the worker's result or an ``error``."""
    from rich.progress import Progress

    rows: list[dict[str, Any]] = []
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("continuous conv cases", total=len(cases))
        for size, hidden, method in cases:
            progress.update(task, description=f"N={size} hidden=({hidden}) {method}")
            res = run_case(size, hidden, method, args)
            rows.append({"size": size, "hidden": hidden, "method": method, **res})
            progress.advance(task)
    return rows


def _measured(r: dict[str, Any] | None, phase: str, key: str) -> float | None:
    """``r[phase][key]`` of a row, or None for a missing or failed row."""
    return r[phase][key] if r and "error" not in r else None


def _table_cells(row: dict[str, Any], rows: list[dict[str, Any]]) -> list[str]:
    """A measured row's cells: times and peaks, its ratios against the nnconv and open3d rows
    of the same size and kernel_hidden (peers; '-' where the peer is missing or failed)."""
    peers = {
        r["method"]: r for r in rows if (r["size"], r["hidden"]) == (row["size"], row["hidden"])
    }
    fb = _measured(row, "fwd_bwd", "min_s")
    return [
        str(row["n"]),
        row["hidden"],
        row["method"],
        f"{row['fwd']['min_s'] * 1e3:.0f} ({row['fwd']['median_s'] * 1e3:.0f})",
        f"{fb * 1e3:.0f} ({row['fwd_bwd']['median_s'] * 1e3:.0f})",
        f"{row['fwd']['peak_mb']:.0f}",
        f"{row['fwd_bwd']['peak_mb']:.0f}",
        _fmt_ratio(_measured(peers.get("nnconv"), "fwd_bwd", "min_s"), fb),
        _fmt_ratio(
            _measured(peers.get("nnconv"), "fwd_bwd", "peak_mb"),
            _measured(row, "fwd_bwd", "peak_mb"),
        ),
        _fmt_ratio(_measured(peers.get("open3d"), "fwd_bwd", "min_s"), fb),
        f"{row['load']:.1f}",
    ]


def _results_table(rows: list[dict[str, Any]], args: argparse.Namespace) -> Table:
    """The layer table: a row per case (a failed case shows its error in the time column)."""
    from rich.table import Table

    table = Table(
        title=f"ContinuousConv layer, C_in = C_out = {args.channels}, K = {args.k}, "
        f"min of {args.repeat} (median), peak = extra RSS of the phase"
    )
    for col in (
        "N",
        "hidden",
        "method",
        "fwd ms",
        "fwd+bwd ms",
        "fwd MB",
        "fwd+bwd MB",
        "nnconv/this time",
        "nnconv/this mem",
        "open3d/this time",
        "load",
    ):
        table.add_column(col, justify="left" if col in ("N", "hidden", "method") else "right")
    for row in rows:
        if "error" in row:
            table.add_row(row["size"], row["hidden"], row["method"], row["error"], *[""] * 7)
        else:
            table.add_row(*_table_cells(row, rows))
    return table


def _knn_section(k: int, console: Console) -> list[dict[str, Any]] | None:
    """Print the KNN table of scripts/bench_knn.py at this K and return its rows; None (with a
    note) when that script cannot be imported."""
    from rich.progress import Progress

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    try:
        from bench_knn import knn_table, run_knn_benchmark
    except ImportError as exc:
        console.print(
            f"[yellow]KNN section skipped[/yellow]: scripts/bench_knn.py not usable ({exc})"
        )
        return None
    with Progress(console=console, transient=True) as progress:
        knn_rows = run_knn_benchmark(k=k, progress=progress)
    console.print(knn_table(knn_rows))
    return knn_rows


def main() -> None:
    args = _parser().parse_args()
    if args.worker and args.method == "network":
        print(json.dumps(run_network_worker()))
        return
    if args.network:
        network_main(args.timeout * 4)
        return
    if args.worker:
        args.hidden = args.hidden[0] if isinstance(args.hidden, list) else args.hidden
        print(json.dumps(run_worker(args)))
        return

    from rich.console import Console

    console = Console(width=max(Console().width, 140))
    cases, skipped = _plan_cases(args)
    rows = _run_cases(cases, args, console)
    notes = sorted({r["note"] for r in rows if "note" in r})
    threads = sorted({r["threads"] for r in rows if "threads" in r})
    console.print(_results_table(rows, args))
    console.print(f"data: {'; '.join(notes)}; torch threads: {threads}")
    for line in skipped:
        console.print(f"[yellow]skipped[/yellow] {line}")
    if not args.skip_knn:
        knn_rows = _knn_section(args.k, console)
        if knn_rows is not None:
            rows.append({"knn": knn_rows})
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
