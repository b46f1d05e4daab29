#!/usr/bin/env python
"""Build the embedded synthetic LiDAR dataset (SemanticKITTI layout).

    python scripts/make_synthetic_dataset.py                         # data/synthetic_kitti
    python scripts/make_synthetic_dataset.py --frames 10 --sequences 40 --force
    python scripts/make_synthetic_dataset.py --sensor vlp16          # data/synthetic_kitti_vlp16
    python scripts/make_synthetic_dataset.py --sensor my_lidar.yaml  # your own beam layout

Reuses a complete dataset with the same arguments unless --force. ``--frames`` sets the frames
per training sequence (validation and test get 3/5 as many, as in the default layout);
``--sequences`` the number of training sequences, then ``--eval-sequences`` validation and as
many test sequences (default 12: three per street layout). ``--sensor``: a preset of
configs/sensors (hdl64e, hdl32e, vlp16, vlp32c, os1-64, os1-128) or a sensor YAML file in the
same format; the default root then depends on the sensor, so datasets never mix.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from pcseg import PROJECT_ROOT
from pcseg.data.synthetic import (
    DEFAULT_SEQUENCES,
    DEFAULT_SPLIT,
    SensorConfigError,
    ensure_dataset,
    generate_dataset,
    load_sensor,
    preset_names,
    sensor_root,
)


def sequences_for(n_train: int, frames: int, n_eval: int) -> dict[int, int]:
    """Sequence id -> frames: ``n_train`` training sequences of ``frames`` frames, then
    ``n_eval`` validation and ``n_eval`` test sequences scaled like the defaults (3/5 of
    ``frames``, at least 1)."""
    if n_train < 1:
        raise ValueError(f"--sequences must be >= 1, got {n_train}")
    if frames < 1:
        raise ValueError(f"--frames must be >= 1, got {frames}")
    if n_eval < 1:
        raise ValueError(f"--eval-sequences must be >= 1, got {n_eval}")
    train_frames = DEFAULT_SEQUENCES[DEFAULT_SPLIT["train"][0]]
    other = max(1, round(frames * DEFAULT_SEQUENCES[DEFAULT_SPLIT["valid"][0]] / train_frames))
    seqs = dict.fromkeys(range(n_train), frames)
    seqs.update(dict.fromkeys(range(n_train, n_train + 2 * n_eval), other))
    return seqs


def _span(first: int, n: int) -> str:
    """Sequence ids first..first+n-1 as text: ``[50]`` or ``50-61``."""
    return f"[{first}]" if n == 1 else f"{first}-{first + n - 1}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--root",
        type=Path,
        default=None,
        help="output folder; relative paths are taken from the repository root "
        "(default: data/synthetic_kitti, or data/synthetic_kitti_<sensor> for another sensor)",
    )
    p.add_argument(
        "--sensor",
        default="hdl64e",
        help=f"sensor preset ({', '.join(preset_names())}) or a sensor YAML file",
    )
    p.add_argument("--seed", type=int, default=0)
    default_frames = DEFAULT_SEQUENCES[DEFAULT_SPLIT["train"][0]]
    p.add_argument(
        "--frames",
        type=int,
        default=default_frames,
        help=f"frames per training sequence (default {default_frames})",
    )
    p.add_argument(
        "--sequences",
        type=int,
        default=len(DEFAULT_SPLIT["train"]),
        help="number of training sequences",
    )
    n_eval = len(DEFAULT_SPLIT["valid"])
    p.add_argument(
        "--eval-sequences",
        type=int,
        default=n_eval,
        help=f"validation sequences, and as many test sequences, after the training ones (default {n_eval})",
    )
    p.add_argument("--force", action="store_true", help="regenerate even if complete")
    p.add_argument("--workers", type=int, default=None, help="processes (default: CPU count)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    try:
        seqs = sequences_for(args.sequences, args.frames, args.eval_sequences)
    except ValueError as e:
        p.error(str(e))
    if args.workers is not None and args.workers < 1:
        p.error(f"--workers must be >= 1, got {args.workers}")
    try:
        lidar = load_sensor(args.sensor)
    except SensorConfigError as e:
        p.error(str(e))
    if args.root is None:
        root = sensor_root(lidar)
    else:
        root = args.root if args.root.is_absolute() else PROJECT_ROOT / args.root
    start = time.perf_counter()
    make = generate_dataset if args.force else ensure_dataset
    make(root, seqs, seed=args.seed, progress=not args.quiet, workers=args.workers, lidar=lidar)
    n_train, n_eval = args.sequences, args.eval_sequences
    print(
        f"synthetic dataset at {root} ({lidar.name}): {sum(seqs.values())} scans in "
        f"{len(seqs)} sequences (train {_span(0, n_train)}, valid {_span(n_train, n_eval)}, "
        f"test {_span(n_train + n_eval, n_eval)}), {time.perf_counter() - start:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
