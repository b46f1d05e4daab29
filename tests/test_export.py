"""Exports are whole or fail: staged in a fresh folder, skipped scans fail the export unless
allowed, a reused export_dir never keeps another run's predictions."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from pcseg.evaluate import evaluate
from pcseg.export import ExportError, SubmissionExport
from pcseg.predict import submission_path
from tests.helpers import write_toy_dataset
from tests.test_checkpoint_safety import compose_evaluate, run_config, save_checkpoint


@pytest.fixture
def setup(tmp_path) -> tuple[Path, Path]:
    root = write_toy_dataset(tmp_path / "toy", {0: 1, 1: 2}, points=1200)
    ckpt = save_checkpoint(run_config(root, tmp_path / "run"), tmp_path / "model.ckpt")
    return root, ckpt


def export(ckpt: Path, export_dir: Path, out: Path, *extra: str) -> dict:
    overrides = [f"ckpt_path={ckpt}", "export=true", f"export_dir={export_dir}", *extra]
    return evaluate(compose_evaluate(overrides, out))


@pytest.mark.slow
def test_a_reused_export_dir_with_a_skipped_scan_fails_and_keeps_no_stale_file(setup, tmp_path):
    root, ckpt = setup
    export_dir = tmp_path / "submission"
    export(ckpt, export_dir, tmp_path / "e1")
    stale = submission_path(export_dir, 1, 1)
    before = {p: p.read_bytes() for p in export_dir.rglob("*.label")}
    assert len(before) == 2 and stale in before

    bad_scan = root / "sequences" / "01" / "velodyne" / "000001.bin"
    bad_scan.write_bytes(b"\0" * 17)  # truncated: skipped under data.on_bad_scan=skip
    with pytest.raises(ExportError, match=re.escape(str(bad_scan))) as err:
        export(ckpt, export_dir, tmp_path / "e2", "data.on_bad_scan=skip")
    assert "export_allow_skipped=true" in str(err.value)
    # the failed export left the previous, complete one as it was, and no staging folder
    assert {p: p.read_bytes() for p in export_dir.rglob("*.label")} == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []

    # allowed: the export holds this run's prediction for the good scan only; the previous
    # run's file for the skipped scan is gone, not "verified"
    export(ckpt, export_dir, tmp_path / "e3", "data.on_bad_scan=skip", "export_allow_skipped=true")
    assert sorted(export_dir.rglob("*.label")) == [submission_path(export_dir, 1, 0)]
    assert not stale.exists()


def test_an_export_dir_with_other_files_is_refused_before_predicting(setup, tmp_path):
    _, ckpt = setup
    export_dir = tmp_path / "mine"
    (export_dir / "notes").mkdir(parents=True)
    (export_dir / "notes" / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match=r"(?s)not a SemanticKITTI export.*notes"):
        export(ckpt, export_dir, tmp_path / "e")
    assert (export_dir / "notes" / "keep.txt").read_text() == "mine"
    assert not list(tmp_path.glob(".mine.*"))


def test_description_is_carried_over_and_staging_is_removed_on_failure(tmp_path):
    target = tmp_path / "sub"
    (target / "sequences" / "00" / "predictions").mkdir(parents=True)
    (target / "description.txt").write_text("method: pcseg")
    np.zeros(3, np.uint32).tofile(target / "sequences" / "00" / "predictions" / "000000.label")
    with SubmissionExport(target) as staged:
        assert staged.staging.is_dir() and staged.staging.parent == tmp_path
    assert not staged.staging.exists()  # left without publishing: gone, target untouched
    assert (target / "sequences" / "00" / "predictions" / "000000.label").is_file()
