"""Point-cloud operators: neighbour search and parametric continuous convolution.

Every op: a public function (validates, documents) -> a private ``torch.autograd.Function``
-> a backend chosen by the tensor's device (Triton on CUDA where installed, PyTorch elsewhere).
Names are resolved lazily so importing one op never pulls in the others' dependencies.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "knn": "pcseg.ops.knn",
    "KNNResult": "pcseg.ops.knn",
    "continuous_conv": "pcseg.ops.continuous_conv",
    "continuous_conv_reference": "pcseg.ops.continuous_conv",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'pcseg.ops' has no attribute {name!r}")
