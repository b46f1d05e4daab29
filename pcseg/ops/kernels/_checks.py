"""Input validation shared by the Triton gather-reduce primitives (plain torch, no triton).

Errors name the argument and the expected shape so a caller sees which tensor is wrong; the
kernels themselves do no bounds checking, so everything unsafe is caught here, before a launch.
"""

from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
INDEX_DTYPES = (torch.int32, torch.int64)


def check_float(name: str, t: object, ndim: int, shape_doc: str) -> torch.Tensor:
    """``t`` must be a floating tensor of ``ndim`` dimensions (``shape_doc`` names them)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor {shape_doc}, got {type(t).__name__}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must have shape {shape_doc}, got {tuple(t.shape)}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name} must be float16, bfloat16, float32 or float64, got {t.dtype} {shape_doc}"
        )
    return t


def check_index(idx: object, rows: int, n_support: int, check_bounds: bool) -> torch.Tensor:
    """``idx`` (M, K) int32/int64; with ``check_bounds`` every entry is -1 or in [0, N).

    The bounds check costs one reduction (and a device sync on CUDA); it is what keeps an
    out-of-range neighbour from becoming an out-of-bounds read or atomic write in a kernel.
    """
    if not isinstance(idx, torch.Tensor):
        raise TypeError(f"idx must be a torch.Tensor (M, K), got {type(idx).__name__}")
    if idx.dtype not in INDEX_DTYPES:
        raise TypeError(f"idx must be int64 (or int32), got {idx.dtype}")
    if idx.dim() != 2 or idx.shape[0] != rows:
        raise ValueError(f"idx must have shape (M, K) = ({rows}, K), got {tuple(idx.shape)}")
    if check_bounds and idx.numel() > 0:
        lo, hi = torch.aminmax(idx)
        lo, hi = int(lo), int(hi)
        if lo < -1 or hi >= n_support:
            raise IndexError(
                f"idx entries must be -1 (padding) or in [0, N={n_support}), "
                f"found values in [{lo}, {hi}]"
            )
    return idx


def check_same_device(interpreted: bool, **tensors: torch.Tensor) -> torch.device:
    """All tensors on one device: CUDA, or CPU when Triton runs in interpreter mode."""
    devices = {name: t.device for name, t in tensors.items()}
    first = next(iter(devices.values()))
    if any(d != first for d in devices.values()):
        listing = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise ValueError(f"all tensors must be on the same device, got {listing}")
    if first.type == "cuda":
        return first
    if first.type == "cpu":
        if interpreted:
            return first
        raise RuntimeError(
            "the Triton kernels need CUDA tensors; CPU tensors run only in Triton's interpreter, "
            "which must be enabled (TRITON_INTERPRET=1) before pcseg.ops.kernels first launches "
            "a kernel. Use the PyTorch path of pcseg.ops for CPU tensors."
        )
    raise RuntimeError(f"the Triton kernels support CUDA (or interpreted CPU) tensors, not {first}")


def acc_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """Accumulation dtype: float64 if any input is float64 (gradcheck), else float32."""
    return torch.float64 if torch.float64 in dtypes else torch.float32
