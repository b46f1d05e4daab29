"""Triton kernels of the continuous convolution (optional ``triton`` extra): ``conv.py``.

Importing this package never imports triton; :mod:`pcseg.ops._conv_triton` imports the kernel
module on first use. Devices: CUDA tensors, or CPU tensors when Triton runs in interpreter mode
(``TRITON_INTERPRET=1`` set before the kernel module is first imported: Triton fixes the mode
when ``@triton.jit`` decorates the kernels).
"""

from __future__ import annotations

import importlib.util
import os
import sys

import torch

__all__ = ["triton_available"]


def _interpreter_requested() -> bool:
    """Interpreter mode: frozen once the kernels are defined, else read from the environment."""
    utils = sys.modules.get(f"{__name__}._triton_utils")
    if utils is not None:
        return bool(utils.INTERPRETED)
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def triton_available(device: torch.device | str | None = None) -> bool:
    """Whether the kernels can run: triton installed and a device that can execute them.

    Without ``device``: triton importable and (a CUDA device present, or TRITON_INTERPRET=1).
    With ``device``: CUDA -> CUDA available; CPU -> the interpreter on. Does not import triton.
    """
    if importlib.util.find_spec("triton") is None:
        return False
    if device is None:
        return torch.cuda.is_available() or _interpreter_requested()
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.is_available()
    return dev.type == "cpu" and _interpreter_requested()
