"""Triton import, interpreter detection and the launch helper shared by the kernel modules.

Importing this module imports triton (with a clear message when it is missing). Whether Triton
runs kernels compiled for the GPU or in its CPU interpreter is decided when a kernel is
decorated with ``@triton.jit``, i.e. when the kernel modules are first imported, so
``INTERPRETED`` is frozen at that moment.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

import torch

try:
    import triton
    import triton.language as tl
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "pcseg's GPU kernels need Triton, which is an optional extra: "
        "pip install 'pcseg[triton]' (or use the PyTorch path of pcseg.ops)"
    ) from exc

__all__ = ["INTERPRETED", "INTERPRETER_BLOCKS", "next_pow2", "tl", "tl_acc", "triton", "tuned_once"]


def interpret_env() -> bool:
    """True when Triton is (or will be) in interpreter mode (``TRITON_INTERPRET`` truthy)."""
    try:
        from triton import knobs

        return bool(knobs.runtime.interpret)
    except (ImportError, AttributeError):  # older triton without knobs
        return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


INTERPRETED: bool = interpret_env()

# The kernels use only triton *builtins* (tl.full, tl.reduce, ...), never the @jit-decorated
# helpers of triton.language.standard (tl.zeros, tl.sum): those are decorated when triton is
# imported, and if that happened before TRITON_INTERPRET=1 was set (another library imported
# triton first) they are compiled-mode functions the interpreter cannot call. tl.sum(x, axis)
# is exactly tl.reduce(x, axis, _sum_combine); the interpreter maps this combine fn to np.sum.
SUM_COMBINE = tl.standard._sum_combine

# Block sizes used under the interpreter, where every program is a Python loop over numpy
# arrays: few large programs are fastest, and autotuning (benchmarking every config) would take
# minutes. Tests shrink them to exercise masked tails and the channel-chunk loops.
INTERPRETER_BLOCKS: dict[str, int] = {"BLOCK_M": 64, "BLOCK_C": 128}


def next_pow2(n: int, minimum: int = 1) -> int:
    """Smallest power of two >= max(n, minimum) (``tl.arange`` needs power-of-two extents)."""
    return max(minimum, 1 << max(0, int(n) - 1).bit_length())


def tl_acc(dtype: torch.dtype) -> Any:
    """The triton accumulation dtype for a torch compute dtype (float64 stays float64)."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def autotune_enabled() -> bool:
    """False when ``PCSEG_TRITON_AUTOTUNE=0``: each kernel then runs the first config its
    pruning keeps, without benchmarking (one compile per kernel variant instead of ~10;
    for test runs on a GPU, where autotuning every test shape would take minutes)."""
    return os.environ.get("PCSEG_TRITON_AUTOTUNE", "1").lower() not in ("0", "false", "off", "no")


def tuned_once(factory: Callable[[], Any]) -> Callable[[], Any]:
    """Build an autotuned kernel on first use (no autotuner objects under the interpreter);
    with autotuning off (:func:`autotune_enabled`) its pruning keeps one config."""

    @functools.cache
    def build() -> Any:
        tuner = factory()
        prune = getattr(tuner, "early_config_prune", None)
        if not autotune_enabled() and prune is not None:
            tuner.early_config_prune = lambda configs, nargs, **kw: prune(configs, nargs, **kw)[:1]
        return tuner

    return build
