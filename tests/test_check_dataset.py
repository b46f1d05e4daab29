"""scripts/check_dataset.py as a user runs it: a subprocess over a root with every kind of
planted bad file (exit 1, each problem in the table) and over a clean root (exit 0)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.bad_data import BAD_CASES, plant
from tests.cli import CliResult, run_cli
from tests.helpers import write_toy_dataset

CASES = sorted(BAD_CASES)


def run_check(*args: str) -> CliResult:
    """``python scripts/check_dataset.py <args>`` (in this process: tests/cli.py), a wide table."""
    return run_cli("scripts/check_dataset.py", *args, env={"COLUMNS": "400"}, expect=None)


def toy_root(root: Path) -> Path:
    """Sequence 00 (a training sequence: labels required) with one frame per bad case and two
    good frames; sequence 11 (test split) without any labels, which is fine."""
    write_toy_dataset(root, {0: len(CASES) + 2, 11: 1}, points=200)
    shutil.rmtree(root / "sequences" / "11" / "labels")
    return root


@pytest.fixture(scope="module")
def bad_root(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    root = toy_root(tmp_path_factory.mktemp("bad"))
    return root, {case: plant(root, 0, i, case) for i, case in enumerate(CASES)}


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_every_problem_is_in_the_table_and_exit_is_1(bad_root, jobs):
    root, planted = bad_root
    proc = run_check("--root", str(root), "--jobs", jobs)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    out = proc.stdout
    for case, path in planted.items():
        kind = BAD_CASES[case].kind
        row = next((line for line in out.splitlines() if f" {kind} " in line), None)
        assert row is not None, f"{kind} not in the table:\n{out}"
        assert str(path.relative_to(root)) in out, f"{path} not listed:\n{out}"
    # scan_corrupt holds two files (truncated, garbage coordinates), scan_degenerate two
    # (identical points, a 1 m cube), every other kind one.
    counts = {
        line.split("│")[1].strip(): int(line.split("│")[2])
        for line in out.splitlines()
        if line.count("│") >= 4 and line.split("│")[2].strip().isdigit()
    }
    doubles = {"scan_corrupt", "scan_degenerate"}
    assert counts == {
        **{BAD_CASES[c].kind: 1 for c in CASES if BAD_CASES[c].kind not in doubles},
        **dict.fromkeys(doubles, 2),
    }
    assert f"{len(CASES)} problem(s) in {len(CASES)} of {len(CASES) + 3} scans" in out


def test_clean_root_exits_0(tmp_path):
    root = toy_root(tmp_path / "clean")
    proc = run_check("--root", str(root), "--sequences", "0", "11")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{len(CASES) + 3} scans checked: no problems" in proc.stdout


def test_missing_sequence_and_stricter_min_points(tmp_path):
    root = write_toy_dataset(tmp_path / "r", {0: 1}, points=200)
    proc = run_check("--root", str(root), "--sequences", "8")
    assert proc.returncode == 1
    assert "sequence 08 is missing (present: 00)" in proc.stdout
    shutil.rmtree(root / "sequences" / "00" / "velodyne")  # the folder is there, its scans not
    proc = run_check("--root", str(root), "--sequences", "0")
    assert proc.returncode == 1
    assert "sequence 00 has no velodyne/ folder (it holds: labels)" in proc.stdout
    write_toy_dataset(root, {0: 1}, points=200)
    proc = run_check("--root", str(root), "--min-points", "201")
    assert proc.returncode == 1
    assert "scan_too_few_points" in proc.stdout and "fewer than min_points=201" in proc.stdout
    # degenerate at the voxel size asked for, fine at make train's 0.3 m (~190 voxels)
    proc = run_check("--root", str(root), "--voxel-size", "20")
    assert proc.returncode == 1 and "scan_degenerate" in proc.stdout
    assert "voxels at data.voxel_size=20 m, fewer than min_voxels=100" in proc.stdout
    proc = run_check("--root", str(root), "--voxel-size", "0")
    assert proc.returncode == 2 and "data.voxel_size must be > 0 metres" in proc.stderr
