#!/usr/bin/env bash
# Create or refresh .venv for pcseg. Called by the Makefile when .venv is missing or
# pyproject.toml changed. Chooses the Open3D wheel by the machine: `open3d` (CUDA build)
# where nvidia-smi works, `open3d-cpu` otherwise. Both need the system library libusb-1.0
# (and EGL/Mesa to render PNGs without a display).
set -euo pipefail
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"

# Shared libraries Open3D loads (libusb for import; EGL/GL/Mesa for headless PNG rendering)
# and the Debian packages that provide them.
declare -A SYSTEM_LIBS=(
    [libusb-1.0.so.0]=libusb-1.0-0
    [libgomp.so.1]=libgomp1
    [libEGL.so.1]=libegl1
    [libGL.so.1]=libgl1
    [libEGL_mesa.so.0]=libegl-mesa0
    [libgbm.so.1]=libgbm1
)
missing=()
for lib in "${!SYSTEM_LIBS[@]}"; do
    ldconfig -p 2>/dev/null | grep -q "$lib" || missing+=("${SYSTEM_LIBS[$lib]}")
done
if ! ls /usr/lib/*/dri/swrast_dri.so >/dev/null 2>&1; then missing+=(libgl1-mesa-dri); fi
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
        echo "[bootstrap] installing system libraries for Open3D: ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        echo "[bootstrap] Open3D needs system libraries that are missing: ${missing[*]}" >&2
        echo "[bootstrap] Install them, then run make again:" >&2
        echo "    sudo apt-get install -y ${missing[*]}" >&2
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
"$VENV/bin/python" -m pip install -q --no-compile "torch==2.13.0"
echo "[bootstrap] installing pcseg with extras dev,bench,$O3D_EXTRA"
"$VENV/bin/python" -m pip install -q --no-compile -e ".[dev,bench,$O3D_EXTRA]"
"$VENV/bin/python" -c "import open3d, torch; print(f'[bootstrap] ok: torch {torch.__version__}, open3d {open3d.__version__}')"
# Bytecode for what pcseg imports (installed with --no-compile; PYTHONDONTWRITEBYTECODE may
# forbid writing it later): saves ~12 s in every later Python process on a 2-core VM.
"$VENV/bin/python" scripts/write_bytecode.py
