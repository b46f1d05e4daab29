"""Write the bytecode (``__pycache__/*.pyc``) of every module pcseg's entry points and tests
import, once, at bootstrap (scripts/bootstrap.sh runs this).

Why: the bootstrap installs with ``pip --no-compile`` (compiling all of torch, scipy, sympy...
would cost minutes for modules nobody imports), and where ``PYTHONDONTWRITEBYTECODE`` is set
(as on our CI machines) Python never writes a ``.pyc`` afterwards either, so every process
would compile torch, Lightning and friends from source again: measured on a 2-core VM,
``import pcseg.train`` took 18.7 s that way instead of 6.9 s. Reading ``.pyc`` files still
happens under that variable; only writing is off, so this script switches it back on for
itself. Importing is what selects the modules: exactly those that pcseg reaches.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import time

#: Imported besides pcseg's own modules: what the tests and torch.compile load on top.
EXTRA = ("torch._inductor.compile_fx", "pytest", "xdist", "triton", "scipy.spatial")


def main() -> None:
    sys.dont_write_bytecode = False
    start = time.perf_counter()
    import pcseg

    names = [m.name for m in pkgutil.walk_packages(pcseg.__path__, "pcseg.")]
    failed = []
    for name in [*names, *EXTRA]:
        try:
            importlib.import_module(name)
        except Exception as exc:  # an optional backend missing here: skip it, say so
            failed.append(f"{name} ({type(exc).__name__})")
    seconds = time.perf_counter() - start
    print(f"[bootstrap] bytecode written for {len(sys.modules)} modules in {seconds:.0f} s")
    if failed:
        print(f"[bootstrap] not importable here (skipped): {', '.join(failed)}")


if __name__ == "__main__":
    main()
