"""Runs without a terminal: one plain line per epoch on stdout and in the run's train.log;
no progress bar frames."""

from __future__ import annotations

import logging
import re

import pytest

from pcseg.callbacks.epoch_log import (
    TerminalRichProgressBar,
    console_wanted,
    emit,
    format_duration,
)
from tests.test_train import SMALL_MODEL, _run, data_overrides

LINE = re.compile(
    r"epoch (\d+)/(\d+) \| train loss (\d+\.\d+) \| val mIoU (\d+\.\d) % \| "
    r"[\d.]+ s \| [\d,]+ points/s \| lr [\d.e+-]+ \| ETA [^\n]+"
)


def test_format_duration():
    assert format_duration(8.26) == "8.3 s"
    assert format_duration(75.2) == "1 min 15 s"
    assert format_duration(4000) == "1 h 06 min"


def test_emit_goes_to_file_handlers_and_to_the_console_only_when_asked(tmp_path, capsys):
    path = tmp_path / "train.log"
    handler = logging.FileHandler(path)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        emit("epoch 1/2 | quiet", console=False)
        emit("epoch 2/2 | loud", console=True)  # no console handler: printed
    finally:
        root.removeHandler(handler)
        handler.close()
    assert path.read_text().splitlines() == ["epoch 1/2 | quiet", "epoch 2/2 | loud"]
    assert capsys.readouterr().out == "epoch 2/2 | loud\n"


def test_bar_and_console_follow_the_terminal():
    # pytest captures stdout: not a terminal
    assert console_wanted("auto") and console_wanted("always") and not console_wanted("never")
    assert not TerminalRichProgressBar().is_enabled
    assert TerminalRichProgressBar(enabled="always").is_enabled
    with pytest.raises(ValueError, match="enabled must be"):
        TerminalRichProgressBar(enabled="sometimes")


@pytest.mark.slow
def test_epoch_lines_without_a_terminal_via_cli(tmp_path):
    from tests.helpers import write_toy_dataset

    root = write_toy_dataset(tmp_path / "toy", {0: 2, 1: 1}, points=1500)
    run_dir = tmp_path / "run"
    proc = _run(
        "train.py",
        [
            *data_overrides(root),
            *SMALL_MODEL,
            "trainer.max_epochs=3",
            "validate_best=false",
            f"hydra.run.dir={run_dir}",
        ],
        tmp_path,
    )
    stdout_lines = LINE.findall(proc.stdout)
    log_lines = LINE.findall((run_dir / "train.log").read_text())
    assert [(e, n) for e, n, *_ in stdout_lines] == [("1", "3"), ("2", "3"), ("3", "3")]
    assert log_lines == stdout_lines  # the same lines, fields and all
    assert not re.search(r"Epoch \d+/\d+\s+━", proc.stdout)  # no Rich bar frames in a pipe
