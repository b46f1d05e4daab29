"""Degenerate batches (issue 13): a one-point cloud, a cloud whose coarse levels keep one
point, must train and evaluate with every shipped network config instead of stopping the run
with BatchNorm's "Expected more than 1 value per channel when training"."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

import pcseg.config  # noqa: F401  (registers the config resolvers)
from pcseg.structures import PointBatch, lengths_to_offset

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
#: every shipped network: each model option, and each experiment (with its own model)
NETWORKS = [f"model={p.stem}" for p in sorted((CONFIGS / "model").glob("*.yaml"))] + [
    f"experiment={p.stem}" for p in sorted((CONFIGS / "experiment").glob("*.yaml"))
]
#: (point count, extent in metres): one point; 3 points in a 10 cm cube (every coarse level
#: holds 1 point, whether strided or gridded); 40 points in 2 m (the coarsest level holds 1)
BATCHES = {"one_point": (1, 1.0), "three_close_points": (3, 0.1), "coarsest_level_1": (40, 2.0)}


@pytest.fixture(scope="module", params=NETWORKS)
def module(request):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[request.param])
    torch.manual_seed(0)
    return instantiate(cfg.model)


def tiny_batch(n: int, extent: float, channels: int) -> PointBatch:
    g = torch.Generator().manual_seed(n)
    return PointBatch(
        coord=torch.rand(n, 3, generator=g) * extent,
        feat=torch.randn(n, channels, generator=g),
        offset=lengths_to_offset(torch.tensor([n])),
        label=torch.randint(1, 20, (n,), generator=g),
    )


@pytest.mark.parametrize("case", BATCHES)
def test_a_training_step_and_an_eval_forward_on_a_tiny_cloud(module, case):
    n, extent = BATCHES[case]
    channels = module.net.input_norm.num_features
    batch = tiny_batch(n, extent, channels)
    optimizer = module.optimizer_factory(params=module.parameters())
    module.train()
    loss = module.criterion(module(batch), batch.label)
    assert torch.isfinite(loss)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    assert all(torch.isfinite(p).all() for p in module.parameters())
    module.eval()
    with torch.no_grad():
        logits = module(batch)
    assert logits.shape == (n, 20) and torch.isfinite(logits).all()
