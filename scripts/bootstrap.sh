#!/usr/bin/env bash
# Create or refresh .venv for pcseg. Called by the Makefile when .venv is missing or
# pyproject.toml changed. Chooses the Open3D wheel by the machine: `open3d` (CUDA build)
# where nvidia-smi works, `open3d-cpu` otherwise. Both need the system library libusb-1.0.
set -euo pipefail
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"

have_libusb() { ldconfig -p 2>/dev/null | grep -q 'libusb-1.0.so.0'; }

if ! have_libusb; then
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
        echo "[bootstrap] installing system library libusb-1.0 (needed by Open3D)"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libusb-1.0-0 >/dev/null
    else
        echo "[bootstrap] Open3D needs the system library libusb-1.0, which is missing." >&2
        echo "[bootstrap] Install it, then run make again:  sudo apt-get install -y libusb-1.0-0" >&2
        exit 1
    fi
fi

if nvidia-smi >/dev/null 2>&1; then O3D_EXTRA=cuda; else O3D_EXTRA=cpu; fi

if [ ! -x "$VENV/bin/python" ]; then
    echo "[bootstrap] creating $VENV with $($PYTHON --version)"
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
# torch first and pinned: an unpinned resolve can pull a multi-GB CUDA build.
"$VENV/bin/python" -m pip install -q "torch==2.13.0"
echo "[bootstrap] installing pcseg with extras dev,bench,$O3D_EXTRA"
"$VENV/bin/python" -m pip install -q -e ".[dev,bench,$O3D_EXTRA]"
"$VENV/bin/python" -c "import open3d, torch; print(f'[bootstrap] ok: torch {torch.__version__}, open3d {open3d.__version__}')"
