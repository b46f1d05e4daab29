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
    grad_feat in the accumulation dtype, sizes int32, block sizes and flags constexpr."""
    acc = "fp64" if dtype == "fp64" else "fp32"
    sig = {}
    for name in fn.arg_names:
        if name in meta:
            sig[name] = "constexpr"
        elif name == "idx_ptr":
            sig[name] = "*i64"
        elif name == "grad_feat_ptr":
            sig[name] = f"*{acc}"
        elif name.endswith("_ptr"):
            sig[name] = f"*{dtype}"
        else:
            sig[name] = "i32"
    return sig


def compile_all(arch: int = 90, dtypes: tuple[str, ...] = ("fp32",)) -> list[str]:
    """Compile the four kernels (both flag settings of each backward) for ``sm_<arch>``.

    Returns one line per compiled kernel; raises the compiler's error on the first failure.
    """
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from . import _triton_utils, mul_reduce, outer_reduce

    if _triton_utils.INTERPRETED:
        raise RuntimeError("unset TRITON_INTERPRET: the interpreter compiles nothing")
    target = GPUTarget("cuda", arch, 32)
    jobs = []
    for dtype in dtypes:
        acc = tl.float64 if dtype == "fp64" else tl.float32
        outer = {"BLOCK_M": 8, "BLOCK_C": 64, "BLOCK_H": 32, "ACC": acc}
        mul = {"BLOCK_M": 32, "BLOCK_C": 64, "ACC": acc}
        jobs += [(outer_reduce._outer_fwd_kernel, dtype, outer)]
        jobs += [(mul_reduce._mul_fwd_kernel, dtype, mul)]
        for a, b in ((True, True), (True, False), (False, True)):
            jobs += [
                (outer_reduce._outer_bwd_kernel, dtype, {**outer, "NEED_PHI": a, "NEED_FEAT": b})
            ]
            jobs += [(mul_reduce._mul_bwd_kernel, dtype, {**mul, "NEED_G": a, "NEED_FEAT": b})]
    lines = []
    for fn, dtype, meta in jobs:
        src = ASTSource(fn=fn, signature=_signature(fn, dtype, meta), constexprs=meta)
        compiled = triton.compile(src, target=target)
        flags = {k: v for k, v in meta.items() if k.startswith("NEED")}
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
