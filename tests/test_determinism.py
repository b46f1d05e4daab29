"""``seed=`` makes CPU training reproducible to the bit: losses, metrics, weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from pcseg import PROJECT_ROOT
from pcseg.ops._conv_chunked import chunk_size
from pcseg.ops.continuous_conv import continuous_conv
from pcseg.train import train
from tests.helpers import write_toy_dataset
from tests.test_resume import csv_logger, load, read_metrics
from tests.test_train import SMALL_MODEL, compose_train, data_overrides


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory) -> Path:
    return write_toy_dataset(tmp_path_factory.mktemp("toy"), {0: 4, 1: 2}, points=2000)


def is_timing(column: str) -> bool:
    """Wall-clock columns (throughput) differ run to run by nature."""
    return column.endswith("_per_s") or "time" in column


def run(root: Path, out: Path, seed: int) -> tuple[list[dict[str, str]], dict[str, torch.Tensor]]:
    """train(cfg) with augmentation, dropout, shuffling and one loader worker; returns the
    logged rows (timing columns dropped) and the final weights."""
    cfg = compose_train(
        [
            *data_overrides(root),
            "data.num_workers=1",
            *SMALL_MODEL,
            "model.net.dropout=0.2",
            f"seed={seed}",
            "trainer.max_epochs=2",
            "trainer.log_every_n_steps=1",
            "validate_best=false",
            "~logger.tensorboard",
            "~callbacks.rich_progress_bar",
            "+trainer.enable_progress_bar=false",
            *csv_logger(out),
        ],
        out,
    )
    train(cfg)
    rows = [{k: v for k, v in r.items() if not is_timing(k)} for r in read_metrics(out / "csv")]
    return rows, load(out / "checkpoints" / "last.ckpt")["state_dict"]


@pytest.mark.slow
def test_same_seed_gives_identical_losses_metrics_and_weights(toy_root, tmp_path):
    rows_a, weights_a = run(toy_root, tmp_path / "a", seed=7)
    rows_b, weights_b = run(toy_root, tmp_path / "b", seed=7)
    assert any(r.get("train/loss") for r in rows_a) and any(r.get("val/miou") for r in rows_a)
    assert rows_a == rows_b  # every logged loss, learning rate and val metric, as text
    assert weights_a.keys() == weights_b.keys()
    for name in weights_a:
        assert torch.equal(weights_a[name], weights_b[name]), name

    rows_c, _ = run(toy_root, tmp_path / "c", seed=8)  # the seed is what fixes them
    losses = [[r["train/loss"] for r in rows if r.get("train/loss")] for rows in (rows_a, rows_c)]
    assert losses[0] != losses[1]


@pytest.mark.parametrize("kernel", ["full", "separable"])
def test_fused_conv_gradients_are_bit_exact_with_worker_threads(kernel):
    """The fused op's chunks run on worker threads, each summing its chunks' gradients into its
    own accumulators. Which thread gets which chunk must not depend on timing, or float
    rounding differs run to run (it did: a chunk -> first free thread queue)."""
    gen = torch.Generator().manual_seed(0)
    k, c = 32, 48
    n = 7 * chunk_size(k, c + 9)  # 7 chunks: 2-3 per worker
    pts = torch.randn(n, 3, generator=gen)
    idx = torch.randint(-1, n, (n, k), generator=gen)
    feat = torch.randn(n, c, generator=gen)
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, c * c if kernel == "full" else c))
    weight = torch.randn(c, c) if kernel == "separable" else None
    grads = []
    for _ in range(4):
        f, p = feat.clone().requires_grad_(), pts.clone().requires_grad_()
        mlp.zero_grad()
        out = continuous_conv(
            f, p, p, idx, mlp, kernel=kernel, weight=weight, impl="chunked", workers=3
        )
        out.pow(2).sum().backward()
        grads.append([f.grad, p.grad, *(q.grad.clone() for q in mlp.parameters())])
    for other in grads[1:]:
        for g0, g1 in zip(grads[0], other, strict=True):
            assert torch.equal(g0, g1)


NETWORK_GRADIENTS = """
import json
import torch
from pcseg.nn.pccn import PCCN, PCCNEncoderDecoder
from pcseg.structures import PointBatch

n = 4000
gen = torch.Generator().manual_seed(0)
coord = torch.rand(n, 3, generator=gen) * torch.tensor([40.0, 40.0, 4.0])
feat = torch.cat([coord, torch.rand(n, 2, generator=gen)], 1)
batch = PointBatch(coord=coord, feat=feat, offset=torch.tensor([n]))
target = torch.randint(0, 20, (n,), generator=gen)
size = dict(in_channels=5, num_classes=20, width=32, depth=1, k=12, kernel_hidden=[16],
            head_hidden=[64], dropout=0.0)  # configs/model/pccn.yaml, shallower
result = {"threads": torch.get_num_threads()}
for name, net in (("pccn", PCCN(**size)), ("unet", PCCNEncoderDecoder(**size, coarse_depth=1))):
    grads = []
    for _ in range(3):
        net.zero_grad()
        torch.nn.functional.cross_entropy(net(batch), target).backward()
        grads.append({k: p.grad.clone() for k, p in net.named_parameters()})
    result[name] = sorted({k for g in grads[1:] for k in g if not torch.equal(g[k], grads[0][k])})
print(json.dumps(result))
"""


@pytest.mark.slow
def test_network_gradients_are_bit_exact_with_two_threads():
    """PCCN and the encoder-decoder at default width (shallower) on one 4k-point cloud, in a
    process with two intra-op threads (a plain `python train.py` on a 2-core machine; with one
    thread nothing can race): every parameter gradient identical over 3 repeated steps.

    It was not: the per-cloud max-pool was broadcast back with ``pooled[batch]``, whose CPU
    backward sums the 4k rows into one with racing threads. A race shows only when the threads
    interleave, so this catches a regression often (measured: 8 times in 10), not always; it
    never fails a correct build.
    """
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "OMP_NUM_THREADS": "2"}
    proc = subprocess.run(
        [sys.executable, "-c", NETWORK_GRADIENTS],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"threads": 2, "pccn": [], "unet": []}
