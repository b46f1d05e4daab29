"""Compile every kernel for a GPU target without a GPU: ``python -m pcseg.ops.kernels.compile_check``.

The interpreter tests check the kernels' arithmetic but not that they compile: Triton's
compiled mode is stricter (constexpr scoping, dtypes of atomics, layouts). Triton ships its
own ptxas, so the whole pipeline (TTIR -> TTGIR -> LLVM IR -> PTX -> cubin) runs on a CPU-only
machine. Must run with TRITON_INTERPRET unset (in interpreter mode there is nothing to compile).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

_DTYPES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16", "float64": "fp64"}


def _signature(fn: Any, dtype: str, meta: dict[str, Any]) -> dict[str, str]:
    """Triton type strings for ``fn``'s arguments: data pointers in ``dtype``, idx int64,
    sizes int32, block sizes and flags constexpr."""
    sig = {}
    for name in fn.arg_names:
        if name in meta:
            sig[name] = "constexpr"
        elif name == "idx_ptr":
            sig[name] = "*i64"
        elif name.endswith("_ptr"):
            sig[name] = f"*{dtype}"
        else:
            sig[name] = "i32"
    return sig


def compile_all(arch: int = 90, dtypes: tuple[str, ...] = ("fp32",)) -> list[str]:
    """Compile the three kernels (one and two hidden layers, both backward modes) for
    ``sm_<arch>`` at the shipped widths (kernel_hidden [16] and [16, 32], 64 channels).

    Returns one line per compiled kernel; raises the compiler's error on the first failure.
    """
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from . import _triton_utils, conv

    if _triton_utils.INTERPRETED:
        raise RuntimeError("unset TRITON_INTERPRET: the interpreter compiles nothing")
    target = GPUTarget("cuda", arch, 32)
    jobs = []
    for dtype in dtypes:
        acc = tl.float64 if dtype == "fp64" else tl.float32
        for depth, block_ha, block_h in ((1, 16, 16), (2, 16, 32)):
            base = {"BLOCK_M": 16, "BLOCK_C": 32, "BLOCK_HA": block_ha, "BLOCK_H": block_h}
            base |= {"DEPTH": depth, "ACC": acc}
            jobs += [(conv._outer_fwd_kernel, dtype, base), (conv._mul_fwd_kernel, dtype, base)]
            for separable in (False, True):
                jobs += [(conv._conv_bwd_kernel, dtype, {**base, "SEPARABLE": separable})]
    lines = []
    for fn, dtype, meta in jobs:
        src = ASTSource(fn=fn, signature=_signature(fn, dtype, meta), constexprs=meta)
        compiled = triton.compile(src, target=target)
        flags = {k: v for k, v in meta.items() if k in ("DEPTH", "SEPARABLE")}
        lines.append(
            f"ok sm_{arch} {fn.__name__} {dtype} {flags} cubin={len(compiled.asm['cubin'])}B"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="SM version, e.g. 80 or 90")
    parser.add_argument("--dtypes", nargs="+", default=["float32"], choices=sorted(_DTYPES))
    args = parser.parse_args(argv)
    for line in compile_all(args.arch, tuple(_DTYPES[d] for d in args.dtypes)):
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
