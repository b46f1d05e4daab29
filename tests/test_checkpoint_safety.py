"""Checkpoints from elsewhere run nothing: weights_only unpickling, allow-listed ``_target_``s,
and the ``ckpt_path`` forms evaluate.py accepts (file, run folder, last)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from pcseg import PROJECT_ROOT
from pcseg.checkpoint_loading import (
    TRUSTED_PREFIXES,
    TRUSTED_TARGETS,
    UnsafeCheckpointError,
    UntrustedCheckpointError,
    build_datamodule,
    build_model,
    check_targets,
    iter_targets,
    load_checkpoint,
)
from pcseg.checkpointing import AtomicCheckpointIO, CheckpointNotFoundError
from pcseg.evaluate import evaluate
from pcseg.train import train
from tests.cli import run_cli
from tests.helpers import write_toy_dataset
from tests.test_train import SMALL_MODEL, compose_train, data_overrides


class CreatesFile:
    """Unpickling this calls ``builtins.open(path, 'w')``: a file appears if the pickle runs."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory) -> Path:
    return write_toy_dataset(tmp_path_factory.mktemp("toy"), {0: 2, 1: 1}, points=1500)


def run_config(root: Path, out: Path, extra: list[str] = ()) -> DictConfig:
    return compose_train([*data_overrides(root), *SMALL_MODEL, *extra], out)


def save_checkpoint(cfg: DictConfig, path: Path, **extra) -> Path:
    """A checkpoint as train() writes it (weights + the resolved run config), untrained."""
    model = instantiate(cfg.model)
    path.parent.mkdir(parents=True, exist_ok=True)
    container = OmegaConf.to_container(cfg, resolve=True)
    torch.save({"state_dict": model.state_dict(), "pcseg_config": container, **extra}, path)
    return path


def compose_evaluate(overrides: list[str], out: Path) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "configs"), version_base="1.3"):
        cfg = compose(config_name="evaluate", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
        cfg.paths.log_dir = str(out / "logs")
    return cfg


# --- unpickling ---------------------------------------------------------------------------------


def test_the_payload_is_real(tmp_path):
    """Without weights_only the test pickle does create its file (so the tests below mean it)."""
    marker = tmp_path / "pwned"
    torch.save({"x": CreatesFile(marker)}, tmp_path / "evil.ckpt")
    torch.load(tmp_path / "evil.ckpt", weights_only=False)
    assert marker.exists()


def test_a_pickle_that_runs_code_is_refused_by_evaluate_and_lightning(toy_root, tmp_path):
    marker = tmp_path / "pwned"
    cfg = run_config(toy_root, tmp_path / "run")
    evil = save_checkpoint(cfg, tmp_path / "evil.ckpt", hook=CreatesFile(marker))
    pattern = re.escape(str(evil)) + r".*refused.*it names io\.open"
    with pytest.raises(UnsafeCheckpointError, match=pattern):
        evaluate(compose_evaluate([f"ckpt_path={evil}"], tmp_path / "eval"))
    with pytest.raises(UnsafeCheckpointError, match=pattern):  # Lightning's resume reads here
        AtomicCheckpointIO().load_checkpoint(evil, weights_only=False)
    assert not marker.exists()


def test_train_refuses_to_resume_from_a_pickle_that_runs_code(toy_root, tmp_path):
    marker = tmp_path / "pwned"
    evil = save_checkpoint(
        run_config(toy_root, tmp_path / "a"), tmp_path / "evil.ckpt", hook=CreatesFile(marker)
    )
    cfg = run_config(toy_root, tmp_path / "run", ["debug=fdr", f"ckpt_path={evil}"])
    with pytest.raises(UnsafeCheckpointError, match=re.escape(str(evil))):
        train(cfg)
    assert not marker.exists()
    assert not (tmp_path / "run" / "checkpoints").exists()  # refused before anything ran


def test_a_truncated_checkpoint_names_the_file(tmp_path):
    bad = tmp_path / "half.ckpt"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ValueError, match=re.escape(str(bad)) + ": not a readable checkpoint"):
        load_checkpoint(bad)


# --- the stored config's targets ----------------------------------------------------------------


def test_a_config_naming_builtins_open_is_refused_before_anything_is_built(toy_root, tmp_path):
    victim = tmp_path / "victim.txt"
    cfg = run_config(toy_root, tmp_path / "run")
    with open_dict(cfg):
        cfg.model.net = {"_target_": "builtins.open", "file": str(victim), "mode": "w"}
    ckpt = save_checkpoint(run_config(toy_root, tmp_path / "run"), tmp_path / "x.ckpt")
    bad = torch.load(ckpt, weights_only=True)
    bad["pcseg_config"] = OmegaConf.to_container(cfg, resolve=True)
    torch.save(bad, ckpt)
    torch.load(ckpt, weights_only=True)  # the file itself is "safe"
    with pytest.raises(UntrustedCheckpointError, match=r"model\.net\._target_ = 'builtins\.open'"):
        evaluate(compose_evaluate([f"ckpt_path={ckpt}"], tmp_path / "eval"))
    assert not victim.exists()


@pytest.mark.parametrize(
    "target",
    [
        "builtins.open",
        "os.system",
        "pcseg.checkpointing.os.system",  # a trusted prefix walking out of the package
        "torch.optim.torch.load",
        "pcseg.nonexistent.Thing",
        "pcseg",
        "not a name",
    ],
)
def test_untrusted_targets_are_refused_anywhere_in_the_tree(tmp_path, target):
    tree = {
        "_target_": "pcseg.lit_module.SegmentationModule",
        "optimizer": {"_target_": "torch.optim.AdamW", "_partial_": True},
        "augment": {"transforms": [{"_target_": "pcseg.data.transforms.RandomFlip"}, {}]},
    }
    check_targets(OmegaConf.create(tree), tmp_path / "a.ckpt", "model")
    tree["augment"]["transforms"][1] = {"_target_": target, "_partial_": True}
    with pytest.raises(UntrustedCheckpointError, match=re.escape(str(tmp_path / "a.ckpt"))) as e:
        check_targets(OmegaConf.create(tree), tmp_path / "a.ckpt", "model")
    assert e.value.key == "model.augment.transforms[1]" and e.value.target == target
    if target in ("builtins.open", "os.system"):  # a user can opt in to their own callables
        check_targets(OmegaConf.create(tree), "x", "model", trusted_targets=[target])


def shipped_compositions() -> list[tuple[str, list[str]]]:
    """train.yaml with every option of every group, and evaluate.yaml."""
    out: list[tuple[str, list[str]]] = [("train", []), ("evaluate", ["ckpt_path=x"])]
    for group in ("model", "data", "trainer", "callbacks", "logger", "experiment", "debug"):
        for option in sorted((PROJECT_ROOT / "configs" / group).glob("*.yaml")):
            out.append(("train", [f"{group}={option.stem}", "data.root=/x"]))
    return out


@pytest.mark.slow
def test_every_target_in_the_shipped_configs_is_allowed(tmp_path):
    """Keeps TRUSTED_TARGETS in step with the configs: a new non-pcseg target fails here."""
    seen: set[str] = set()
    for name, overrides in shipped_compositions():
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(PROJECT_ROOT / "configs"), version_base="1.3"):
            cfg = compose(config_name=name, overrides=overrides)
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path)
        check_targets(cfg, f"configs/{name}.yaml {' '.join(overrides)}")
        seen |= {str(t) for _, t in iter_targets(cfg)}
    untrusted = {t for t in seen if not t.startswith(TRUSTED_PREFIXES)}
    assert untrusted <= TRUSTED_TARGETS
    assert untrusted == TRUSTED_TARGETS, f"unused allow-list entries: {TRUSTED_TARGETS - untrusted}"


# --- the API predict.py and evaluate.py share ---------------------------------------------------


def test_load_build_round_trip(toy_root, tmp_path):
    cfg = run_config(toy_root, tmp_path / "run")
    ckpt = save_checkpoint(cfg, tmp_path / "run" / "checkpoints" / "last.ckpt")
    for value in (ckpt, tmp_path / "run"):  # a file or its run folder
        run = load_checkpoint(value)
        assert run.path == ckpt
    assert load_checkpoint("last", runs_dir=tmp_path).path == ckpt
    model = build_model(run)
    assert not model.training
    for k, v in run.state_dict.items():
        assert torch.equal(model.state_dict()[k], v), k
    dm = build_datamodule(run.config, {"batch_size": 1, "root": str(toy_root)}, run.path)
    assert dm.batch_size == 1 and dm.on_bad_scan == "raise"


@pytest.mark.slow
def test_evaluate_accepts_last_and_a_run_folder_and_explains_a_plain_folder(toy_root, tmp_path):
    logs = tmp_path / "eval" / "logs"
    run_dir = logs / "train" / "runs" / "2026-01-01_00-00-00"
    ckpt = save_checkpoint(
        run_config(toy_root, tmp_path / "run"), run_dir / "checkpoints" / "last.ckpt"
    )
    for value in ("last", str(run_dir)):
        metrics = evaluate(compose_evaluate([f"ckpt_path={value}"], tmp_path / "eval"))
        assert 0.0 <= metrics["miou"] <= 1.0
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(CheckpointNotFoundError, match="a folder, but not a run folder"):
        evaluate(compose_evaluate([f"ckpt_path={plain}"], tmp_path / "eval2"))
    (plain / "epoch_001.ckpt").write_bytes(ckpt.read_bytes())
    with pytest.raises(CheckpointNotFoundError, match=r"it holds epoch_001\.ckpt"):
        evaluate(compose_evaluate([f"ckpt_path={plain}"], tmp_path / "eval3"))


@pytest.mark.slow
def test_evaluate_help_lists_only_what_evaluate_accepts(tmp_path):
    proc = run_cli("evaluate.py", "--help", cwd=tmp_path)
    assert "ckpt_path=<file.ckpt | run folder | last>" in proc.stdout
    assert "export_allow_skipped" in proc.stdout and "trusted_targets" in proc.stdout
    for refused in ("trainer: cpu", "gpu", "model: pccn", "Configuration groups"):
        assert refused not in proc.stdout, refused
