"""Training options around the operator: mixed precision, gradient clipping, torch.compile.

The real configs are composed (as in test_train.py) on a tiny toy SemanticKITTI-layout dataset;
CPU runs use ``bf16-mixed`` (Lightning's CPU autocast); CUDA runs (``gpu`` marker) add
``16-mixed`` with its gradient scaler.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict

import pcseg.config  # noqa: F401  (config resolvers)
from pcseg import PROJECT_ROOT
from pcseg.data.collate import collate_point_clouds
from pcseg.nn.continuous_conv import compile_network, set_conv_options
from pcseg.train import train
from tests.helpers import write_toy_dataset
from tests.test_train import SMALL_MODEL

HAS_CUDA = torch.cuda.is_available()
SMALL_UNET = [*SMALL_MODEL, "model.net.coarse_depth=1"]


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory) -> Path:
    return write_toy_dataset(tmp_path_factory.mktemp("toy_amp"), {0: 2, 1: 1}, points=2000)


def compose_run(root: Path, out: Path, overrides: list[str]) -> DictConfig:
    """The train config on the toy data with a small model, plus ``overrides``."""
    data = [
        "model=pccn_unet",  # SMALL_UNET sets its coarse_depth
        "data=semantickitti",
        f"data.root={root}",
        "data.sequences={train:[0],valid:[1],test:[1]}",
        "data.num_workers=0",
        "data.voxel_size=0.1",
        "data.batch_size=2",
    ]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "configs"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[*data, *SMALL_UNET, *overrides])
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
        cfg.paths.log_dir = str(out / "logs")
    return cfg


class StepProbe(pl.Callback):
    """Records, per training step, the dtype the stem produced (autocast on or off) and the
    total gradient norm left on the parameters after the optimiser step (post-clipping: Lightning
    zeroes gradients only at the start of the next step)."""

    def __init__(self) -> None:
        self.stem_dtypes: list[torch.dtype] = []
        self.grad_norms: list[float] = []
        self.losses: list[float] = []

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        def hook(_module, _inputs, output):
            if _module.training:
                self.stem_dtypes.append(output.dtype)

        pl_module.net.stem.register_forward_hook(hook)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        grads = [p.grad.detach().float() for p in pl_module.parameters() if p.grad is not None]
        self.grad_norms.append(
            float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])))
        )
        self.losses.append(float(outputs["loss"]))


def fit_steps(cfg: DictConfig, steps: int = 2) -> StepProbe:
    """``steps`` optimiser steps of the configured module and trainer, with a StepProbe."""
    probe = StepProbe()
    trainer = instantiate(
        cfg.trainer,
        callbacks=[probe],
        logger=False,
        max_steps=steps,
        limit_val_batches=0,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    pl.seed_everything(0)
    trainer.fit(instantiate(cfg.model), datamodule=instantiate(cfg.data))
    return probe


def test_fast_dev_run_bf16_mixed_on_cpu(toy_root, tmp_path):
    """train(cfg) end to end with trainer.precision=bf16-mixed: finite train and val losses."""
    cfg = compose_run(toy_root, tmp_path, ["debug=fdr", "trainer.precision=bf16-mixed"])
    metrics = train(cfg)
    assert np.isfinite(metrics["train/loss"]) and np.isfinite(metrics["val/loss"])


def test_bf16_mixed_steps_run_under_autocast_with_clipping(toy_root, tmp_path):
    """Two steps with bf16-mixed and gradient_clip_val: the stem really ran in bf16, the
    losses are finite and the gradients the optimiser saw were clipped to the norm."""
    clip = 1e-3  # far below the natural gradient norm (checked by the control run)
    cfg = compose_run(
        toy_root, tmp_path, ["trainer.precision=bf16-mixed", f"trainer.gradient_clip_val={clip}"]
    )
    probe = fit_steps(cfg)
    assert probe.stem_dtypes and all(d == torch.bfloat16 for d in probe.stem_dtypes)
    assert all(np.isfinite(probe.losses)) and len(probe.losses) == 2
    assert all(n <= clip * (1 + 1e-3) for n in probe.grad_norms), probe.grad_norms

    control = fit_steps(compose_run(toy_root, tmp_path, ["trainer.precision=32"]))
    assert all(d == torch.float32 for d in control.stem_dtypes)
    assert all(n > 10 * clip for n in control.grad_norms), control.grad_norms


def test_model_compile_key_composes_and_marks_the_parts(toy_root, tmp_path):
    """model.compile=true: stem and head wrapped by nn.Module.compile (state_dict names kept).
    Nothing is compiled until called."""
    cfg = compose_run(toy_root, tmp_path, ["model.compile=true"])
    model = instantiate(cfg.model)
    plain = instantiate(compose_run(toy_root, tmp_path, []).model)
    assert model.net.head._compiled_call_impl is not None
    assert model.net.stem._compiled_call_impl is not None
    assert plain.net.head._compiled_call_impl is None
    assert set(model.state_dict()) == set(plain.state_dict())


@pytest.mark.slow
@pytest.mark.xdist_group("inductor")  # one worker: the second reuses the first's compiled graphs
@pytest.mark.parametrize("impl", ["fused", "primitives"])
def test_compiled_network_matches_eager(toy_root, tmp_path, impl):
    """torch.compile (inductor, C++ on CPU: ~10 s per graph) gives the eager numbers, forward
    and backward, on the fused path (head/stem compiled) and the primitives path (kernel MLP
    compiled too)."""
    cfg = compose_run(toy_root, tmp_path, ["model.net.dropout=0"])
    torch.manual_seed(0)
    eager = instantiate(cfg.model.net)
    compiled = instantiate(cfg.model.net)
    compiled.load_state_dict(eager.state_dict())
    for net in (eager, compiled):
        set_conv_options(net, impl=impl)
    assert compile_network(compiled) == ["stem", "head"]
    dm = instantiate(cfg.data)
    ds = dm.dataset("train")
    batch = collate_point_clouds([ds[0], ds[1]])
    outs = []
    for net in (eager, compiled):
        logits = net(batch)
        grads = torch.autograd.grad(logits.square().mean(), list(net.parameters()))
        outs.append((logits, grads))
    torch.testing.assert_close(outs[1][0], outs[0][0], rtol=1e-4, atol=1e-5)
    for a, b in zip(outs[1][1], outs[0][1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("precision", ["16-mixed", "bf16-mixed"])
def test_cuda_mixed_precision_steps_with_clipping(toy_root, tmp_path, precision):
    """On the GPU (Triton kernels under autocast): finite losses, clipped gradients, and for
    16-mixed Lightning's gradient scaler unscales before clipping. (A 16-mixed step whose
    scaled gradients overflow is skipped by the scaler and leaves non-finite gradients: only
    finite steps are checked, and at least one of the three must be finite.)"""
    cfg = compose_run(
        toy_root,
        tmp_path,
        ["trainer=gpu", f"trainer.precision={precision}", "trainer.gradient_clip_val=1e-3"],
    )
    probe = fit_steps(cfg, steps=3)
    low = torch.float16 if precision == "16-mixed" else torch.bfloat16
    assert probe.stem_dtypes and all(d == low for d in probe.stem_dtypes)
    assert all(np.isfinite(probe.losses))
    finite = [n for n in probe.grad_norms if np.isfinite(n)]
    assert finite and all(n <= 1e-3 * (1 + 1e-3) for n in finite), probe.grad_norms
