# pcseg on NVIDIA GPUs.
#   docker build -t pcseg .
#   docker run --gpus all --ipc=host -v /path/to/semantickitti:/data -v "$PWD/logs:/workspace/pcseg/logs" \
#       pcseg python train.py data=semantickitti data.root=/data trainer=gpu
#
# Base image: the official PyTorch runtime image whose torch is exactly our pin (pyproject.toml:
# torch==2.13.0; `pip install` below keeps it, since 2.13.0+cu126 satisfies ==2.13.0), so the
# multi-GB CUDA torch is a cached base layer rather than a download of ours. Of its CUDA builds
# (12.6, 13.0, 13.2) 12.6 runs on the widest range of drivers (>= 560; CUDA 13 needs >= 580);
# cuDNN 9 and NCCL for DDP come with it. tests/test_dockerfile.py checks the tag against the pin.
FROM pytorch/pytorch:2.13.0-cuda12.6-cudnn9-runtime

# Shared libraries Open3D loads (scripts/bootstrap.sh keeps the same list): libusb to import it,
# OpenMP, and GL/EGL with Mesa for offscreen PNG rendering without a display. Versions are those
# of the base image's Ubuntu release; pinning them would break each time Ubuntu patches one.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        libusb-1.0-0 \
        libgomp1 \
        libgl1 \
        libegl1 \
        libegl-mesa0 \
        libgbm1 \
        libgl1-mesa-dri \
    && rm -rf /var/lib/apt/lists/*

ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

WORKDIR /workspace/pcseg

# Dependencies first, in their own layer: it is rebuilt only when pyproject.toml changes.
# Editable install: configs/, data/ and logs/ are found next to the package (pcseg.PROJECT_ROOT).
# Extras: `cuda` = the CUDA build of Open3D (GPU KNN), `triton` = the continuous-conv kernels.
COPY pyproject.toml README.md ./
COPY pcseg/__init__.py pcseg/__init__.py
RUN pip install --no-cache-dir -e ".[cuda,triton]"

COPY . .

# `docker run pcseg` prints the options; any command replaces it, e.g. `python train.py ...`,
# `python evaluate.py ckpt_path=...`, `python scripts/visualize.py --png out/ ...`.
CMD ["python", "train.py", "--help"]
