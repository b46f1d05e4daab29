"""The weight average (pcseg.callbacks.WeightAverage) through real training runs, against a
plain loop over the weights recorded after every optimiser step."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from pcseg.callbacks.weight_average import WeightAverage, ema_decay
from pcseg.train import train
from tests.helpers import write_toy_dataset
from tests.test_train import SMALL_MODEL, compose_train, data_overrides


class RecordWeights(pl.Callback):
    """Copies of the module's state_dict: at fit start, after every training batch and at the
    start of every validation (placed after WeightAverage, so it sees what validation sees),
    saved to ``path`` when fitting ends (Hydra builds it, so the test reads the file)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.seen: dict[str, list[dict[str, torch.Tensor]]] = {}

    def _keep(self, key: str, pl_module: pl.LightningModule) -> None:
        state = {
            k: v.detach().clone().double() if v.is_floating_point() else v.detach().clone()
            for k, v in pl_module.state_dict().items()
        }
        self.seen.setdefault(key, []).append(state)

    def on_fit_end(self, trainer, pl_module):
        torch.save(self.seen, self.path)

    def on_fit_start(self, trainer, pl_module):
        self._keep("start", pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._keep("step", pl_module)

    def on_validation_start(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self._keep("validation", pl_module)


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory) -> Path:
    return write_toy_dataset(tmp_path_factory.mktemp("toy"), {0: 4, 1: 2}, points=2000)


def plain_average(start: dict, steps: list[dict], horizon: float) -> dict[str, torch.Tensor]:
    """The reference: avg <- d * avg + (1 - d) * w after optimiser step t, float64."""
    avg = {k: v.clone() for k, v in start.items()}
    for t, weights in enumerate(steps, start=1):
        d = min(0.9999, (1.0 + t) / (horizon + t))
        for k, v in weights.items():
            avg[k] = d * avg[k] + (1.0 - d) * v if v.is_floating_point() else v.clone()
    return avg


def test_decay_follows_the_run_length():
    assert ema_decay(1) == pytest.approx(2 / 11)
    # the average always spans about the last tenth of the steps: the weight of the steps older
    # than 90 % of the run is small whatever the run length
    for n in (300, 3000):
        weight_old = 1.0
        for t in range(int(0.9 * n) + 1, n + 1):
            weight_old *= ema_decay(t)
        assert 0.3 < weight_old < 0.5, (n, weight_old)
    assert ema_decay(10**9) == 0.9999
    with pytest.raises(ValueError, match="horizon"):
        WeightAverage(horizon=0.5)


@pytest.mark.slow
def test_checkpoint_and_validation_hold_the_average_of_the_trained_weights(toy_root, tmp_path):
    out = tmp_path / "run"
    record = tmp_path / "weights.pt"
    cfg = compose_train(
        [
            *data_overrides(toy_root),
            *SMALL_MODEL,
            "trainer.max_epochs=2",
            "validate_best=false",
            "callbacks.weight_average.enabled=true",
            "callbacks.weight_average.horizon=3",
            "+callbacks.record._target_=tests.test_weight_average.RecordWeights",
            f"+callbacks.record.path={record}",
            "~logger.tensorboard",
        ],
        out,
    )
    train(cfg)
    seen = torch.load(record, weights_only=True)
    (start,) = seen["start"]
    steps = seen["step"]
    assert len(steps) == 2 * 2  # 4 training scans, batch 2, 2 epochs
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    want = plain_average(start, steps, horizon=3)
    float_keys = [k for k, v in want.items() if v.is_floating_point()]
    assert float_keys
    for k, v in ckpt["state_dict"].items():
        torch.testing.assert_close(v.to(want[k].dtype), want[k], rtol=1e-5, atol=1e-6, msg=k)
    # the raw weights ride along for resume, exactly the last step's
    raw = ckpt["callbacks"]["WeightAverage"]["raw_state_dict"]
    moved = [k for k in float_keys if not torch.allclose(raw[k].double(), want[k])]
    assert moved, "the average equals the raw weights: nothing was averaged"
    for k, v in raw.items():
        assert torch.equal(v.to(steps[-1][k].dtype), steps[-1][k]), k
    # validation after epoch 2 ran on the average, not on the raw weights
    last_validation = seen["validation"][-1]
    for k in float_keys:
        torch.testing.assert_close(last_validation[k], want[k], rtol=1e-5, atol=1e-6, msg=k)
