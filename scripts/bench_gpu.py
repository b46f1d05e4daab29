"""GPU benchmark at the real-scan size: the operator's Triton path against our PyTorch paths,
KNN on CUDA, and one training step of the networks; fp32 and bf16 autocast.

    python scripts/bench_gpu.py [--out DIR] [--sections conv,knn,train] [--compile]
                                [--scan FILE.bin] [--repeat 10]
    python scripts/bench_gpu.py --device cpu --tiny      # smoke test of this script on a CPU

Sections (every ratio is between rows measured in this same run, on the same device):
  conv   ContinuousConv C=64 -> 64, K=16, kernel_hidden (16, 32), kernel full and separable;
         forward and forward+backward (grads of feat and every parameter); fp32 and bf16
         autocast. Paths: triton = continuous_conv(impl="triton"), the kernel MLP evaluated
         inside the Triton kernels; torch = the plain-PyTorch composition
         (pcseg.ops._conv_reference.continuous_conv_composed); chunked = the chunked autograd
         Function (the CPU backend) on CUDA. "x vs triton" = that path's time / the triton
         time (target: triton >= 3x faster than the PyTorch composition).
  knn    k=16 on the whole cloud with every pcseg.ops.knn backend available for CUDA (and
         pykdtree on the host's CPU for comparison); target < 5 ms per scan.
  train  one training step (forward, cross-entropy, backward, AdamW) of PCCN and
         PCCNEncoderDecoder at configs/model/pccn*.yaml widths on the scan voxelised at 0.05 m;
         fp32 vs bf16 autocast; points/s. "knn cached" rows replay each neighbour table
         from a cache, i.e. the step without neighbour search.
  kitti  the experiment=pccn_kitti network at batch 4 (four copies of the voxelised scan):
         one fp32 training step (targets: peak <= 12 GiB, step <= 0.6 s) and full-scan
         inference with the KNN included (target: >= 30 scans/s).
  compile (with --compile) the train section with pcseg.nn.continuous_conv.compile_network.

Timing: CUDA events around each call after warm-up calls (the first call of a shape pays the
Triton compile and autotune; reported as "first ms"), median of --repeat; peak = the largest
torch.cuda.max_memory_allocated during one call minus the memory allocated before it. On CPU
wall-clock and no peak. Points: --scan, else .whl/scan_00_000000.bin (carried to a GPU
machine next to the wheels), else $PCSEG_REAL_DATA/sequences/00/velodyne/000000.bin, else a
synthetic 64-beam LiDAR sweep of 124,668 points (ground + walls; noted in the output).
Writes bench_gpu.txt and bench_gpu.json to --out. Exits 0 with a message when no CUDA device
is present (unless --device cpu).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pcseg.data.features import compute_features  # noqa: E402
from pcseg.data.io import read_scan  # noqa: E402
from pcseg.data.voxelize import voxelize  # noqa: E402
from pcseg.nn.continuous_conv import ContinuousConv, compile_network  # noqa: E402
from pcseg.ops.knn import available_backends, knn  # noqa: E402
from pcseg.structures import PointBatch  # noqa: E402

REAL_N = 124_668
SCAN_REL = "sequences/00/velodyne/000000.bin"
CARRIED_SCAN = ROOT / ".whl" / "scan_00_000000.bin"


# --------------------------------------------------------------------------- points


def synthetic_sweep(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A 64-beam sweep (elevation -24..+3 deg, sensor 1.73 m above a flat road) hitting the
    ground or a wall 5-60 m away: xyz (n, 3) float32 and remission (n,)."""
    rng = np.random.default_rng(seed)
    elev = np.deg2rad(rng.uniform(-24.0, 3.0, n))
    azim = rng.uniform(-np.pi, np.pi, n)
    wall = rng.uniform(5.0, 60.0, n)
    ground = np.where(elev < 0, 1.73 / np.tan(-np.minimum(elev, -1e-3)), np.inf)
    rng_m = np.minimum(ground, wall) + rng.normal(0, 0.02, n)
    xyz = np.stack(
        [rng_m * np.cos(elev) * np.cos(azim), rng_m * np.cos(elev) * np.sin(azim)], axis=1
    )
    z = rng_m * np.sin(elev)
    xyz = np.concatenate([xyz, z[:, None]], axis=1).astype(np.float32)
    return xyz, rng.uniform(0, 0.6, n).astype(np.float32)


def load_points(scan: str | None, n_tiny: int | None) -> tuple[np.ndarray, np.ndarray, str]:
    """(xyz, remission, where they came from)."""
    candidates = [Path(scan)] if scan else []
    candidates.append(CARRIED_SCAN)
    if os.environ.get("PCSEG_REAL_DATA"):
        candidates.append(Path(os.environ["PCSEG_REAL_DATA"]) / SCAN_REL)
    for path in candidates:
        if path.is_file():
            xyz, rem = read_scan(path)
            note = f"real scan {path.name} ({len(xyz)} points)"
            break
    else:
        xyz, rem = synthetic_sweep(REAL_N)
        note = f"synthetic 64-beam sweep ({REAL_N} points; no scan file found)"
    if n_tiny:
        keep = np.random.default_rng(0).choice(len(xyz), n_tiny, replace=False)
        xyz, rem = xyz[keep], rem[keep]
        note += f", random subset of {n_tiny} (--tiny)"
    return xyz, rem, note


# --------------------------------------------------------------------------- timing


class Timer:
    """Median time (ms) and peak extra memory (MiB) of a callable on one device."""

    def __init__(self, device: torch.device, repeat: int, warmup: int = 2) -> None:
        self.device, self.repeat, self.warmup = device, repeat, warmup
        self.cuda = device.type == "cuda"

    def _once(self, fn: Callable[[], Any]) -> tuple[float, float]:
        if not self.cuda:
            t0 = time.perf_counter()
            fn()
            return (time.perf_counter() - t0) * 1e3, float("nan")
        torch.cuda.synchronize(self.device)
        base = torch.cuda.memory_allocated(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize(self.device)
        peak = (torch.cuda.max_memory_allocated(self.device) - base) / 2**20
        return start.elapsed_time(end), peak

    def __call__(self, fn: Callable[[], Any]) -> dict[str, float]:
        first, _ = self._once(fn)  # compile + autotune on a new shape
        for _ in range(self.warmup - 1):
            self._once(fn)
        runs = [self._once(fn) for _ in range(self.repeat)]
        return {
            "first_ms": first,
            "ms": statistics.median(t for t, _ in runs),
            "peak_mib": max(p for _, p in runs),
        }


def autocast(device: torch.device, precision: str):
    """torch.autocast for "bf16", a disabled one for "fp32"."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


# --------------------------------------------------------------------------- sections


def bench_conv(pts: torch.Tensor, args: argparse.Namespace, timer: Timer) -> list[dict]:
    """ContinuousConv full/separable, fwd and fwd+bwd, fp32/bf16, triton/torch/fused paths."""
    device = pts.device
    c, k = (16, 8) if args.tiny else (64, 16)
    idx = knn(pts, pts, k).idx
    paths = ["triton", "torch", "chunked"] if _triton_ok(device) else ["torch", "chunked"]
    rows = []
    for kernel in ("full", "separable"):
        torch.manual_seed(0)
        layer = ContinuousConv(c, c, kernel_hidden=(16, 32), kernel=kernel).to(device)
        feat = torch.randn(len(pts), c, device=device, requires_grad=True)
        for precision in ("fp32", "bf16"):
            for mode in ("fwd", "fwd+bwd"):
                for path in paths:
                    fn = conv_call(layer, feat, pts, idx, precision, mode != "fwd", path)
                    row = {"kernel": kernel, "precision": precision, "mode": mode, "path": path}
                    row.update(_safe(timer, fn))
                    rows.append(row)
                    print(_conv_line(row), flush=True)
    _conv_ratios(rows)
    return rows


def conv_call(
    layer: ContinuousConv,
    feat: torch.Tensor,
    pts: torch.Tensor,
    idx: torch.Tensor,
    precision: str,
    backward: bool,
    path: str = "triton",
) -> Callable[[], None]:
    """One layer call on (feat, pts, pts, idx) by ``path`` ("triton", "chunked": the op's
    backends; "torch": the plain-PyTorch composition): forward only (no_grad), or forward +
    the gradients of feat and every parameter for an all-ones output gradient."""
    from pcseg.ops._conv_reference import continuous_conv_composed

    params = list(layer.parameters())
    layer.impl = path if path != "torch" else "auto"

    def run() -> torch.Tensor:
        if path == "torch":
            args = (feat, pts, pts, idx, layer.kernel_mlp, layer.kernel, layer.weight)
            return continuous_conv_composed(*args)
        return layer(feat, pts, pts, idx)

    def call() -> None:
        with torch.set_grad_enabled(backward), autocast(pts.device, precision):
            out = run()
        if backward:
            torch.autograd.grad(out, [feat, *params], torch.ones_like(out))

    return call


def train_step(
    net: torch.nn.Module, opt: torch.optim.Optimizer, batch: PointBatch, precision: str
) -> Callable[[], None]:
    """One optimiser step: forward and cross-entropy (autocast for bf16), backward, AdamW."""
    loss_fn = torch.nn.CrossEntropyLoss(ignore_index=0)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with autocast(batch.coord.device, precision):
            loss = loss_fn(net(batch), batch.label)
        loss.backward()
        opt.step()

    return step


def _triton_ok(device: torch.device) -> bool:
    try:
        from pcseg.ops.kernels import triton_available
    except ImportError:
        return False
    return device.type == "cuda" and triton_available(device)


def _safe(timer: Timer, fn: Callable[[], Any]) -> dict[str, Any]:
    """Time ``fn``; an exception (e.g. out of memory) becomes an "error" entry."""
    try:
        return timer(fn)
    except Exception as exc:  # keep the other rows
        if timer.cuda:
            torch.cuda.empty_cache()
        return {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}


def _conv_ratios(rows: list[dict]) -> None:
    """Add to every row: its time / the triton row's time of the same case."""
    by_case: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        by_case.setdefault((r["kernel"], r["precision"], r["mode"]), {})[r["path"]] = r
    for case in by_case.values():
        tri = case.get("triton", {}).get("ms")
        for r in case.values():
            r["vs_triton"] = r["ms"] / tri if tri and "ms" in r else None


def _conv_line(r: dict) -> str:
    if "error" in r:
        return f"conv {r['kernel']:9s} {r['precision']} {r['mode']:7s} {r['path']:6s} {r['error']}"
    return (
        f"conv {r['kernel']:9s} {r['precision']} {r['mode']:7s} {r['path']:6s} "
        f"{r['ms']:9.2f} ms  peak {r['peak_mib']:8.1f} MiB  first {r['first_ms']:9.1f} ms"
    )


def bench_knn(pts: torch.Tensor, args: argparse.Namespace, timer: Timer) -> list[dict]:
    """k=16 self-KNN of the cloud with every backend for its device (+ pykdtree on the CPU)."""
    del timer  # its own repeats: a brute-force search can take a second
    rows = []
    cases = [(b, pts.device) for b in available_backends(pts.device)]
    if pts.device.type == "cuda":
        cases += [(b, torch.device("cpu")) for b in available_backends("cpu") if b == "pykdtree"]
    for backend, device in cases:
        p = pts.to(device)
        use = Timer(device, max(1, min(args.repeat, 5)), warmup=1)
        if backend == "bruteforce" and device.type == "cpu" and len(p) > 20_000:
            continue  # minutes on a CPU
        row = {"backend": backend, "device": device.type, "n": len(p), "k": 16}
        row.update(_safe(use, lambda p=p, b=backend: knn(p, p, 16, backend=b)))
        rows.append(row)
        shown = f"{row['ms']:9.2f} ms" if "ms" in row else row["error"]
        print(f"knn  {backend:10s} {device.type:4s} n={len(p)} k=16 {shown}", flush=True)
    return rows


def _net_configs() -> dict[str, dict[str, Any]]:
    """Constructor arguments of the networks from configs/model/pccn*.yaml (those present)."""
    import yaml

    base = yaml.safe_load((ROOT / "configs/model/pccn.yaml").read_text())["net"]
    nets = {"PCCN": base}
    unet_file = ROOT / "configs/model/pccn_unet.yaml"
    if unet_file.is_file():
        unet = yaml.safe_load(unet_file.read_text()).get("net", {})
        target = str(unet.get("_target_", "pcseg.nn.pccn.PCCNEncoderDecoder"))
        nets[target.rsplit(".", 1)[-1]] = {**base, **unet}
    skip = ("_target_", "in_channels", "num_classes")
    return {name: {k: v for k, v in node.items() if k not in skip} for name, node in nets.items()}


def _kitti_net_config() -> dict[str, Any]:
    """PCCN constructor arguments of experiment=pccn_kitti (model/pccn.yaml + its overrides)."""
    import yaml

    base = yaml.safe_load((ROOT / "configs/model/pccn.yaml").read_text())["net"]
    exp = yaml.safe_load((ROOT / "configs/experiment/pccn_kitti.yaml").read_text())
    node = {**base, **exp["model"]["net"]}
    return {k: v for k, v in node.items() if k not in ("_target_", "in_channels", "num_classes")}


def bench_kitti(
    xyz: np.ndarray, rem: np.ndarray, args: argparse.Namespace, timer: Timer
) -> list[dict]:
    """experiment=pccn_kitti at batch 4: one fp32 training step and inference with KNN."""
    from pcseg.nn import pccn

    device = timer.device
    timer = Timer(device, min(timer.repeat, 3), warmup=1)
    vox = voxelize(xyz, 0.05)
    rem_v = np.bincount(vox.inverse, weights=rem, minlength=len(vox.counts)) / vox.counts
    feat_np = compute_features(vox.coord, rem_v.astype(np.float32), ["xyz", "remission", "range"])
    n, scans = len(vox.coord), 4
    coord = torch.from_numpy(vox.coord).to(device)
    feat = torch.from_numpy(feat_np).to(device)
    gen = torch.Generator().manual_seed(0)
    batch = PointBatch(
        coord=coord.repeat(scans, 1), feat=feat.repeat(scans, 1),
        label=torch.randint(1, 20, (n * scans,), generator=gen).to(device),
        offset=torch.arange(1, scans + 1, device=device) * n,
    )  # fmt: skip
    one = PointBatch(coord=coord, feat=feat, offset=torch.tensor([n], device=device))
    kw = _kitti_net_config()
    if args.tiny:
        kw = {**kw, "width": 8, "depth": 2, "head_hidden": [16]}
    torch.manual_seed(0)
    net = pccn.PCCN(in_channels=feat_np.shape[1], num_classes=20, **kw).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    rows = [{"case": "train step, batch 4, fp32", "points": n * scans}]
    rows[0].update(_safe(timer, train_step(net, opt, batch, "fp32")))
    net.eval()

    def infer() -> None:
        with torch.no_grad():
            net(one)

    rows.append({"case": "inference, 1 scan, fp32, KNN included", "points": n})
    rows[1].update(_safe(timer, infer))
    if "ms" in rows[1]:
        rows[1]["scans_per_s"] = 1e3 / rows[1]["ms"]
    for r in rows:
        shown = f"{r['ms']:9.1f} ms peak {r['peak_mib']:9.1f} MiB" if "ms" in r else r["error"]
        print(f"kitti {r['case']:40s} {shown}", flush=True)
    return rows


class KNNCache:
    """Wraps pcseg.ops.knn for the network module: the first call of each (M, N, k) computes,
    later calls replay its result (the step without neighbour search). The key is sizes only:
    right for ONE fixed batch, where every search of a step has its own (M, N) pair."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn, self.store = fn, {}

    def __call__(self, query, support, k, *rest, **kw):
        key = (query.shape[0], support.shape[0], k)
        if key not in self.store:
            self.store[key] = self.fn(query, support, k, *rest, **kw)
        return self.store[key]


def bench_train(
    xyz: np.ndarray, rem: np.ndarray, args: argparse.Namespace, timer: Timer, compiled: bool
) -> list[dict]:
    """One optimiser step of each network on the voxelised scan; fp32 vs bf16 autocast."""
    from pcseg.nn import pccn

    device = timer.device
    timer = Timer(device, min(timer.repeat, 3), warmup=1)  # a step with KNN can take seconds
    vox = voxelize(xyz, 0.05)
    rem_v = np.bincount(vox.inverse, weights=rem, minlength=len(vox.counts)) / vox.counts
    feat_np = compute_features(vox.coord, rem_v.astype(np.float32), ["xyz", "remission", "range"])
    n = len(vox.coord)
    gen = torch.Generator().manual_seed(0)
    batch = PointBatch(
        coord=torch.from_numpy(vox.coord).to(device),
        feat=torch.from_numpy(feat_np).to(device),
        label=torch.randint(1, 20, (n,), generator=gen).to(device),
        offset=torch.tensor([n], device=device),
    )
    rows = []
    for name, kw in _net_configs().items():
        if args.tiny:
            kw = {**kw, "width": 8, "head_hidden": [16]}
        torch.manual_seed(0)
        net = getattr(pccn, name)(in_channels=feat_np.shape[1], num_classes=20, **kw).to(device)
        if compiled:
            compile_network(net)
        opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
        for cached in (False, True):
            for precision in ("fp32", "bf16"):
                step = train_step(net, opt, batch, precision)
                original = pccn.knn
                pccn.knn = KNNCache(original) if cached else original
                try:
                    row = {
                        "net": name,
                        "precision": precision,
                        "knn": "cached" if cached else "run",
                    }
                    row.update({"points": n, "compiled": compiled})
                    row.update(_safe(timer, step))
                finally:
                    pccn.knn = original
                if "ms" in row:
                    row["points_per_s"] = n / (row["ms"] / 1e3)
                rows.append(row)
                shown = (
                    f"{row['ms']:9.1f} ms {row['points_per_s']:12,.0f} pts/s "
                    f"peak {row['peak_mib']:8.1f} MiB first {row['first_ms']:9.1f} ms"
                    if "ms" in row
                    else row["error"]
                )
                tag = "compiled " if compiled else ""
                print(f"train {tag}{name:18s} {precision} knn={row['knn']:6s} {shown}", flush=True)
        del net, opt
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


# --------------------------------------------------------------------------- report


def _fmt(v: Any, spec: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return format(v, spec)


def table(result: dict) -> str:
    """The human-readable report."""
    lines = [
        f"device: {result['device_name']}   torch {result['torch']}   triton {result['triton']}",
        f"points: {result['points_note']}",
        "",
    ]
    conv = result.get("conv", [])
    if conv:
        lines += [
            f"ContinuousConv (C={result['conv_c']}, K={result['conv_k']}, kernel_hidden "
            "(16, 32)); x = time / triton time",
            f"{'kernel':10s} {'prec':4s} {'mode':8s} {'path':7s} {'median ms':>10s} "
            f"{'peak MiB':>9s} {'first ms':>9s} {'x':>6s}",
        ]
        for r in conv:
            if "error" in r:
                lines.append(
                    f"{r['kernel']:10s} {r['precision']:4s} {r['mode']:8s} {r['path']:7s} {r['error']}"
                )
                continue
            lines.append(
                f"{r['kernel']:10s} {r['precision']:4s} {r['mode']:8s} {r['path']:7s} "
                f"{r['ms']:10.2f} {_fmt(r['peak_mib'], '9.1f')} {r['first_ms']:9.1f} "
                f"{_fmt(r.get('vs_triton'), '6.2f')}"
            )
        lines += ["", _conv_verdict(conv), ""]
    if result.get("knn"):
        lines.append("KNN k=16 (target < 5 ms per scan on the GPU)")
        for r in result["knn"]:
            shown = f"{r['ms']:10.2f} ms" if "ms" in r else r["error"]
            lines.append(f"  {r['backend']:11s} {r['device']:5s} n={r['n']} {shown}")
        lines.append("")
    if result.get("kitti"):
        lines.append(
            "experiment=pccn_kitti (targets: step <= 0.6 s and peak <= 12 GiB fp32 at batch 4; "
            "inference >= 30 scans/s with KNN)"
        )
        for r in result["kitti"]:
            if "error" in r:
                lines.append(f"  {r['case']:40s} {r['error']}")
                continue
            extra = f"  {r['scans_per_s']:.1f} scans/s" if "scans_per_s" in r else ""
            lines.append(
                f"  {r['case']:40s} {r['ms']:9.1f} ms  peak {r['peak_mib'] / 1024:6.2f} GiB{extra}"
            )
        lines.append("")
    for key, title in (("train", "Training step"), ("compile", "Training step, compile_network")):
        rows = result.get(key, [])
        if not rows:
            continue
        lines.append(f"{title} (forward + CE + backward + AdamW), scan voxelised at 0.05 m")
        for r in rows:
            head = f"  {r['net']:19s} {r['precision']:4s} knn={r['knn']:6s}"
            if "error" in r:
                lines.append(f"{head} {r['error']}")
                continue
            lines.append(
                f"{head} {r['ms']:9.1f} ms {r['points_per_s']:12,.0f} pts/s "
                f"peak {_fmt(r['peak_mib'], '8.1f')} MiB (first {r['first_ms']:.0f} ms)"
            )
        lines.append("")
    for name, err in result.get("errors", {}).items():
        lines.append(f"section {name} FAILED: {err}")
    return "\n".join(lines)


def _conv_verdict(rows: list[dict]) -> str:
    """Smallest speed-up of triton over the torch path (fwd+bwd), against the 3x target."""
    ratios = [r["vs_triton"] for r in rows if r["path"] == "torch" and r.get("vs_triton")]
    if not ratios:
        return "triton vs torch: no triton rows (no CUDA device or triton missing)"
    worst = min(ratios)
    verdict = "meets" if worst >= 3 else "MISSES"
    return f"triton vs torch: {worst:.2f}x at worst ({verdict} the >= 3x target)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "gpu_out"))
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--tiny", action="store_true", help="3000 points, small widths (smoke)")
    parser.add_argument("--sections", default="conv,knn,kitti,train")
    parser.add_argument("--compile", action="store_true", help="add the compile section")
    parser.add_argument("--scan", default=None)
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench_gpu: no CUDA device; nothing to measure (use --device cpu --tiny to smoke)")
        return 0
    device = torch.device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    xyz, rem, note = load_points(args.scan, 3000 if args.tiny else None)
    pts = torch.from_numpy(xyz).to(device)
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "absent"
    result: dict[str, Any] = {
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "triton": triton_version,
        "points_note": note,
        "conv_c": 16 if args.tiny else 64,
        "conv_k": 8 if args.tiny else 16,
        "errors": {},
    }
    timer = Timer(device, 2 if args.tiny else args.repeat, warmup=1 if args.tiny else 2)
    sections = [s for s in args.sections.split(",") if s] + (["compile"] if args.compile else [])
    for name in sections:
        t0 = time.perf_counter()
        try:
            if name == "conv":
                result["conv"] = bench_conv(pts, args, timer)
            elif name == "knn":
                result["knn"] = bench_knn(pts, args, timer)
            elif name == "train":
                result["train"] = bench_train(xyz, rem, args, timer, compiled=False)
            elif name == "kitti":
                result["kitti"] = bench_kitti(xyz, rem, args, timer)
            elif name == "compile":
                result["compile"] = bench_train(xyz, rem, args, timer, compiled=True)
            else:
                raise ValueError(f"unknown section {name!r}")
        except Exception as exc:
            traceback.print_exc()
            result["errors"][name] = f"{type(exc).__name__}: {exc}"
        print(f"section {name}: {time.perf_counter() - t0:.1f} s", flush=True)
        # after every section, so a run cut short by a timeout keeps what it measured
        (out / "bench_gpu.json").write_text(json.dumps(result, indent=1, default=str))
        (out / "bench_gpu.txt").write_text(table(result) + "\n")
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
