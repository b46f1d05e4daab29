"""The wall-clock budget: the schedule follows it, training stops inside it, and without a
binding budget the run is the fixed schedule bit for bit."""

from __future__ import annotations

import importlib
import itertools
import logging
import math
import subprocess
import time
from pathlib import Path

import hydra
import pytest
import pytorch_lightning as pl
import torch
from omegaconf import open_dict

from pcseg import PROJECT_ROOT
from pcseg.callbacks.time_budget import TimeBudget, plan_epochs, process_start_time
from pcseg.optim import WarmupCosineFactor, retarget_schedule, warmup_cosine
from pcseg.train import train
from tests.helpers import write_toy_dataset
from tests.test_train import SMALL_MODEL, compose_train


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


def test_budget_counts_from_a_given_start_and_refuses_a_future_one():
    """`make train` passes the moment make started (time_budget_start), so a fresh clone's
    bootstrap counts: the budget's elapsed time is measured from there, not from this process."""
    started = time.time() - 150.0
    budget = TimeBudget(minutes=9.5, start_time=started)
    assert 150.0 <= budget.elapsed() < 150.0 + 60.0
    with pytest.raises(ValueError, match="future"):
        TimeBudget(minutes=9.5, start_time=time.time() + 3600.0)


def test_make_train_passes_its_start_time_to_the_budget(tmp_path):
    """The Makefile's train recipe hands train.py the time make started, and the default
    callbacks config routes time_budget_start to TimeBudget(start_time=...)."""
    dry = subprocess.run(
        ["make", "-n", "train", "STAMP=/dev/null"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    line = next(ln for ln in dry.splitlines() if "train.py" in ln)
    start = float(line.split("time_budget_start=")[1].split()[0])
    assert abs(time.time() - start) < 60.0
    cfg = compose_train([f"time_budget_start={start}"], tmp_path)
    assert float(hydra.utils.instantiate(cfg.callbacks.time_budget).start_time) == start


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


class FinalState(pl.Callback):
    """Keeps the weights, optimiser steps, schedule end and LR where fitting ended (the newest
    instance is ``FinalState.last``)."""

    last: FinalState | None = None

    def __init__(self) -> None:
        FinalState.last = self

    def on_fit_end(self, trainer, pl_module) -> None:
        self.weights = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        self.steps = trainer.global_step
        factor = trainer.lr_scheduler_configs[0].scheduler.lr_lambdas[0]
        self.schedule_steps = getattr(factor, "total_steps", None)
        self.lr = trainer.optimizers[0].param_groups[0]["lr"]


class SimulatedTime(FinalState):
    """A clock for the budget that advances ``step_s`` per training step and ``val_step_s``
    per validation batch: the real training runs, but its timing is known exactly, so the
    plan can be checked on a machine whose speed (and load) the test cannot know."""

    def __init__(self, step_s: float, val_step_s: float) -> None:
        super().__init__()
        self.now = 0.0
        self.step_s = step_s
        self.val_step_s = val_step_s

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.now += self.step_s

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, *args) -> None:
        self.now += self.val_step_s


def simulated_clock():
    """TimeBudget's ``clock`` from the config: the time of the newest SimulatedTime."""
    return lambda: FinalState.last.now


def _run_in_process(overrides: list[str], out: Path) -> FinalState:
    cfg = compose_train(
        [*overrides, "+callbacks.final_state._target_=tests.test_time_budget.FinalState"], out
    )
    with open_dict(cfg):
        cfg.validate_best = False
    train(cfg)
    return _final_state()


def _final_state():
    """The newest FinalState that Hydra built: Hydra imports this file as
    ``tests.test_time_budget``, which may be another module object than pytest's."""
    return importlib.import_module("tests.test_time_budget").FinalState.last


@pytest.mark.slow
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
        overrides = [*_overrides(budget_root), "trainer.max_epochs=2", *extra]
        runs[name] = _run_in_process(overrides, tmp_path / name).weights
    for name in ("null", "loose"):
        assert runs[name].keys() == runs["reference"].keys()
        for key, value in runs["reference"].items():
            assert torch.equal(runs[name][key], value), (name, key)


def reference_scheduler(optimizer, total_steps, warmup_fraction=0.05, final_ratio=0.01):
    """The pre-budget ``warmup_cosine`` (a closure in a LambdaLR), for the bit-for-bit test."""
    factor = reference_warmup_cosine(total_steps, warmup_fraction, final_ratio)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _simulated_run(overrides: list[str], out: Path, caplog) -> tuple[SimulatedTime, str]:
    """train() with the budget on a simulated clock of 1 s per step and 0.5 s per validation
    batch, counted from 0; returns the clock (with the final state) and the log text."""
    caplog.set_level(logging.INFO)
    cfg = compose_train(
        [
            *overrides,
            "+callbacks.sim_time._target_=tests.test_time_budget.SimulatedTime",
            "+callbacks.sim_time.step_s=1.0",
            "+callbacks.sim_time.val_step_s=0.5",
            "+callbacks.time_budget.clock._target_=tests.test_time_budget.simulated_clock",
            "callbacks.time_budget.start_time=0.0",
        ],
        out,
    )
    with open_dict(cfg):
        cfg.validate_best = False
    train(cfg)
    return _final_state(), caplog.text


@pytest.mark.slow
def test_a_short_budget_ends_on_an_epoch_boundary_with_the_schedule_at_its_minimum(
    budget_root, tmp_path, caplog
):
    """4 steps of 1 s + 0.5 s validation per epoch, 200 epochs fixed, a 30 s budget with
    1 s reserved at the end (validate_best=false: no closing scoring): after 2 timed steps,
    the epoch under way and 5 more fit (27 s). Training ends after epoch 6, inside the budget,
    with the cosine at its minimum on the last step, and the run says how many epochs it got."""
    overrides = [
        *_overrides(budget_root),
        "trainer.max_epochs=200",
        "time_budget_min=0.5",
        "callbacks.time_budget.measure_steps=2",
        "callbacks.time_budget.overhead_s=1",
    ]
    clock, text = _simulated_run(overrides, tmp_path / "run", caplog)
    summary = "trained 6 epoch(s) (limited by the time budget; at most 200; 24 optimiser steps)"
    assert summary in text, text[-2000:]
    assert clock.now == pytest.approx(6 * 4.5) and clock.now + 1 <= 30
    assert clock.steps == clock.schedule_steps == 24
    assert clock.lr == pytest.approx(0.01 * 0.01)  # the cosine reached its minimum


@pytest.mark.slow
def test_when_not_even_one_epoch_fits_it_stops_mid_epoch_on_the_schedule_end(tmp_path, caplog):
    """A 40-step epoch of 1 s steps and a 20 s budget: after 4 steps (4 s), with 0.5 s for
    the validation and 1 s reserved at the end, 14 more steps fit, 13 with one step of
    margin; training stops after step 17, validates, and the LR schedule ends on that step."""
    root = write_toy_dataset(tmp_path / "toy", {0: 40, 1: 1}, points=600)
    overrides = [
        *_overrides(root),
        "trainer.max_epochs=3",
        "time_budget_min=0.3333333333",
        "callbacks.time_budget.measure_steps=3",
        "callbacks.time_budget.overhead_s=1",
    ]
    clock, text = _simulated_run(overrides, tmp_path / "run", caplog)
    assert "not even epoch 1 fits; training stops after optimiser step 17" in text, text[-2000:]
    assert "stopping after step 17, as planned" in text
    assert clock.now == pytest.approx(17.5) and clock.now + 1 <= 20
    assert clock.steps == clock.schedule_steps == 17
    assert clock.lr == pytest.approx(0.01 * 0.01)
