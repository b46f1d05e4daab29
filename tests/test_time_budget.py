"""The wall-clock budget: the schedule follows it, training stops inside it, and without a
binding budget the run is the fixed schedule bit for bit."""

from __future__ import annotations

import itertools
import math
import re
import time
from pathlib import Path

import pytest
import torch
from omegaconf import open_dict

from pcseg.callbacks.time_budget import TimeBudget, plan_epochs, process_start_time
from pcseg.optim import WarmupCosineFactor, retarget_schedule, warmup_cosine
from pcseg.train import train
from tests.helpers import write_toy_dataset
from tests.test_train import SMALL_MODEL, _run, compose_train


def reference_warmup_cosine(total_steps: int, warmup_fraction: float, final_ratio: float):
    """The schedule as it was before budgets (a closure): the plain reference."""
    total_steps = max(int(total_steps), 1)
    warmup = max(round(warmup_fraction * total_steps), 1)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min((step - warmup) / max(total_steps - warmup, 1), 1.0)
        return final_ratio + (1 - final_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


@pytest.mark.parametrize("total", [1, 2, 7, 100, 700, 1234])
def test_factor_equals_the_reference_until_retargeted(total):
    ref = reference_warmup_cosine(total, 0.05, 0.01)
    new = WarmupCosineFactor(total, 0.05, 0.01)
    assert [new(s) for s in range(total + 3)] == [ref(s) for s in range(total + 3)]


def test_retarget_past_warmup_is_continuous_and_lands_on_the_minimum():
    f = WarmupCosineFactor(700, 0.05, 0.01)
    before = [f(s) for s in range(201)]
    f.retarget(500, 200)
    after = [f(s) for s in range(201, 520)]
    assert f(200) == before[200]  # no jump where it was moved
    assert all(a >= b for a, b in itertools.pairwise(after))  # still decaying
    assert f(500) == pytest.approx(0.01) and f(519) == pytest.approx(0.01)
    assert f(499) > 0.01


def test_retarget_in_warmup_rebuilds_the_schedule():
    f = WarmupCosineFactor(700, 0.05, 0.01)  # warm-up 35 steps
    f.retarget(200, 10)
    ref = reference_warmup_cosine(200, 0.05, 0.01)
    assert [f(s) for s in range(10, 210)] == [ref(s) for s in range(10, 210)]


def test_retarget_schedule_sets_the_current_lr_and_survives_a_state_dict_round_trip():
    p = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.AdamW([p], lr=0.01)
    sched = warmup_cosine(opt, 100)
    for _ in range(50):
        opt.step()
        sched.step()
    lr = opt.param_groups[0]["lr"]
    assert retarget_schedule(sched, 60)
    assert opt.param_groups[0]["lr"] == pytest.approx(lr)
    state = sched.state_dict()
    # a fresh schedule of the original length, loaded: continues the moved one
    opt2 = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=0.01)
    sched2 = warmup_cosine(opt2, 100)
    sched2.load_state_dict(state)
    assert sched2.lr_lambdas[0].total_steps == 60
    for _ in range(10):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01 * 0.01)
    # a OneCycleLR cannot move: reported, nothing changed
    from pcseg.optim import one_cycle

    cyc = one_cycle(torch.optim.SGD([p], lr=0.1), 100)
    assert not retarget_schedule(cyc, 10)


def test_plan_epochs():
    kw = {"budget_s": 540.0, "reserve_s": 60.0, "current_left_s": 0.0, "max_epochs": 7}
    # 40 s spent, 68 s epochs: (540 - 60 - 40) / 68 = 6.5 -> 6 more
    assert plan_epochs(elapsed_s=40, epoch_s=68, epochs_started=0, **kw) == 6
    assert plan_epochs(elapsed_s=40, epoch_s=50, epochs_started=0, **kw) == 7  # capped
    assert plan_epochs(elapsed_s=470, epoch_s=68, epochs_started=5, **kw) == 5  # stop now
    assert plan_epochs(elapsed_s=900, epoch_s=68, epochs_started=0, **kw) == 1  # at least one
    # mid-epoch: the epoch under way needs 30 s more and counts as started:
    # 1 + floor((540 - 60 - 100 - 30) / 68) = 1 + 5
    kw["current_left_s"] = 30.0
    assert plan_epochs(elapsed_s=100, epoch_s=68, epochs_started=1, **kw) == 6


def test_process_start_time_is_before_now():
    start = process_start_time()
    assert start <= time.time() and time.time() - start < 24 * 3600


def test_budget_must_be_positive():
    with pytest.raises(ValueError, match="positive"):
        TimeBudget(minutes=0)


@pytest.fixture(scope="module")
def budget_root(tmp_path_factory) -> Path:
    return write_toy_dataset(tmp_path_factory.mktemp("budget"), {0: 4, 1: 1}, points=1500)


def _overrides(root: Path) -> list[str]:
    return [
        "data=semantickitti",
        f"data.root={root}",
        "data.sequences={train:[0],valid:[1],test:[1]}",
        "data.num_workers=0",
        "data.voxel_size=0.1",
        "data.batch_size=1",
        *SMALL_MODEL,
        "callbacks.tensorboard_3d.every_n_epochs=0",
        "~logger",
    ]


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


def test_budget_null_or_not_binding_is_the_fixed_schedule_bit_for_bit(budget_root, tmp_path):
    """Reference: the callbacks of before (no budget, no epoch log) and the closure schedule."""
    runs = {}
    for name, extra in {
        "reference": [
            "~callbacks.time_budget",
            "~callbacks.epoch_log",
            "~callbacks.tensorboard_3d",
            "model.scheduler._target_=tests.test_time_budget.reference_scheduler",
        ],
        "null": [],
        "loose": ["time_budget_min=600"],  # 10 hours: every epoch fits, nothing moves
    }.items():
        out = tmp_path / name
        cfg = compose_train([*_overrides(budget_root), "trainer.max_epochs=2", *extra], out)
        with open_dict(cfg):
            cfg.validate_best = False
        train(cfg)
        runs[name] = _weights(out)
    for name in ("null", "loose"):
        assert runs[name].keys() == runs["reference"].keys()
        for key, value in runs["reference"].items():
            assert torch.equal(runs[name][key], value), (name, key)


def reference_scheduler(optimizer, total_steps, warmup_fraction=0.05, final_ratio=0.01):
    """The pre-budget ``warmup_cosine`` (a closure in a LambdaLR), for the bit-for-bit test."""
    factor = reference_warmup_cosine(total_steps, warmup_fraction, final_ratio)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@pytest.mark.slow
def test_a_short_budget_stops_in_time_with_the_schedule_at_its_minimum(budget_root, tmp_path):
    """Through the CLI (the budget counts from the process start: imports included): 200
    fixed epochs would take minutes; a 25 s budget must end the process within 25 s plus a
    tolerance, after whole epochs, with the LR at its minimum and the epochs reported."""
    budget_s = 25.0
    run_dir = tmp_path / "run"
    start = time.time()
    proc = _run(
        "train.py",
        [
            *_overrides(budget_root),
            "trainer.max_epochs=200",
            f"time_budget_min={budget_s / 60}",
            "callbacks.time_budget.measure_steps=2",
            "callbacks.time_budget.overhead_s=3",
            f"hydra.run.dir={run_dir}",
        ],
        tmp_path,
    )
    wall = time.time() - start
    assert wall < budget_s + 8, f"{wall:.1f} s for a {budget_s} s budget"
    text = proc.stdout + (run_dir / "train.log").read_text()
    match = re.search(r"trained (\d+) epoch\(s\) \(limited by the time budget", text)
    assert match, text[-3000:]
    epochs = int(match.group(1))
    assert 2 <= epochs < 200
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["epoch"] == epochs - 1
    factor = ckpt["lr_schedulers"][0]["lr_lambdas"][0]
    assert factor["total_steps"] == epochs * 4  # 4 training scans, batch 1
    lr = ckpt["optimizer_states"][0]["param_groups"][0]["lr"]
    assert lr == pytest.approx(0.01 * 0.01)  # the cosine reached its minimum
