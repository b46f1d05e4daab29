"""Neural-network layers: continuous convolution and the networks built from it."""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {"ContinuousConv": "pcseg.nn.continuous_conv"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'pcseg.nn' has no attribute {name!r}")
