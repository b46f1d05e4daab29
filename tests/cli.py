"""Run a command-line entry point (``train.py``, ``evaluate.py``, ``predict.py``, a script under
``scripts/``) the way a user does, inside the test process.

Why in-process: a fresh interpreter pays ~7 s importing torch, Lightning and torchmetrics before
the first line of ours runs, and the CLI tests start dozens of them. In-process, the same
``__main__`` block runs with the same ``sys.argv``, so Hydra parses the same command line, composes
the same configs and exits with the same status; what it prints to ``sys.stdout``/``sys.stderr``
is captured. What a process leaves behind in the interpreter (the environment, the root logger's
handlers, signal handlers, torch's global switches, the random generators, the Hydra singleton,
run-folder locks) is restored afterwards, so one test's run cannot change the next.

Tests that are about processes themselves (a kill mid-epoch, two processes holding one run
folder, DDP workers, the exit of a fresh interpreter) keep ``subprocess``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import random
import runpy
import signal
import sys
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pcseg import PROJECT_ROOT

_SIGNALS = [s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGUSR1", None)) if s]


@dataclass(frozen=True)
class CliResult:
    """What a user sees: the exit status and the two output streams."""

    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        """stdout then stderr, as a terminal shows them (roughly)."""
        return self.stdout + self.stderr


def _exit_code(exc: SystemExit) -> int:
    """The status ``sys.exit(code)`` gives the shell: None -> 0, an int as is, else 1."""
    if exc.code is None:
        return 0
    return exc.code if isinstance(exc.code, int) else 1


@contextlib.contextmanager
def _restored_process_state(cwd: Path | None):
    """Undo what an entry point may change in the interpreter (see the module docstring)."""
    from hydra.core.global_hydra import GlobalHydra

    from pcseg import run_lock

    environ = dict(os.environ)
    argv = list(sys.argv)
    old_cwd = Path.cwd()
    root = logging.getLogger()
    root_handlers, root_level = list(root.handlers), root.level
    handlers = {s: signal.getsignal(s) for s in _SIGNALS}
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    matmul = torch.get_float32_matmul_precision()
    locks = set(run_lock._held)
    # the global generators pl.seed_everything seeds (numpy's legacy one included)
    rng = random.getstate(), np.random.get_state(), torch.get_rng_state()  # noqa: NPY002
    GlobalHydra.instance().clear()
    try:
        with warnings.catch_warnings():
            if cwd is not None:
                os.chdir(cwd)
            yield
    finally:
        os.chdir(old_cwd)
        GlobalHydra.instance().clear()
        for folder in set(run_lock._held) - locks:  # the run folders a process exit would free
            run_lock._held.pop(folder)[0].close()
        for handler in list(root.handlers):
            if handler not in root_handlers:
                root.removeHandler(handler)
                handler.close()
        for handler in root_handlers:
            if handler not in root.handlers:
                root.addHandler(handler)
        root.setLevel(root_level)
        for s, h in handlers.items():
            signal.signal(s, h)
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
        torch.set_float32_matmul_precision(matmul)
        random.setstate(rng[0])
        np.random.set_state(rng[1])  # noqa: NPY002
        torch.set_rng_state(rng[2])
        sys.argv = argv
        os.environ.clear()
        os.environ.update(environ)


def run_cli(
    script: str,
    *args: str,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    expect: int | None = 0,
) -> CliResult:
    """Run ``python <script> <args...>`` in this process.

    script: a path relative to the project root (``"train.py"``, ``"scripts/x.py"``).
    env: variables set for the run only (e.g. ``COLUMNS`` for a wide table).
    expect: the exit status the test requires (None: do not check); a mismatch fails with the
    tail of the output.
    """
    path = PROJECT_ROOT / script
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with _restored_process_state(cwd):
        sys.argv = [str(path), *args]
        os.environ["HYDRA_FULL_ERROR"] = "1"
        os.environ.update(env or {})
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                runpy.run_path(str(path), run_name="__main__")
            except SystemExit as exc:
                code = _exit_code(exc)
            except Exception:  # an uncaught error: the interpreter prints it and exits 1
                traceback.print_exc()
                code = 1
    result = CliResult(code, out.getvalue(), err.getvalue())
    if expect is not None:
        assert code == expect, (
            f"{script} {' '.join(args)}: exit {code}, expected {expect}\n{result.output[-6000:]}"
        )
    return result
