"""Fine-tuning (``init_from``): a new run from a checkpoint's weights, across label sets."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from pcseg.finetune import HEAD_PREFIX, FineTuneError, init_from_checkpoint
from pcseg.train import train
from tests.helpers import write_toy_dataset
from tests.test_checkpoint_safety import save_checkpoint
from tests.test_train import SMALL_MODEL, compose_train, data_overrides

#: A made-up 5-class label set over the toy dataset's raw ids (road, sidewalk, building,
#: vegetation, car, pole).
FIVE_CLASSES = """\
labels: {0: unlabeled, 40: road, 48: sidewalk, 50: building, 70: vegetation, 10: car, 80: pole}
color_map: {0: [0, 0, 0], 40: [255, 0, 255], 48: [75, 0, 75], 50: [0, 200, 255],
            70: [0, 175, 0], 10: [245, 150, 100], 80: [150, 240, 255]}
learning_map: {0: 0, 40: 1, 48: 1, 50: 2, 70: 3, 10: 4, 80: 4}
learning_map_inv: {0: 0, 1: 40, 2: 50, 3: 70, 4: 10}
learning_ignore: {0: true, 1: false, 2: false, 3: false, 4: false}
"""

QUIET = [
    "~callbacks.rich_progress_bar",
    "~callbacks.model_summary",
    "+trainer.enable_progress_bar=false",
    "+trainer.enable_model_summary=false",
    "~logger.tensorboard",
    "validate_best=false",
    "model.log_images=0",
]


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory) -> Path:
    return write_toy_dataset(tmp_path_factory.mktemp("toy"), {0: 2, 1: 1}, points=1500)


@pytest.fixture(scope="module")
def kitti_ckpt(toy_root, tmp_path_factory) -> Path:
    """A 19-class (SemanticKITTI) checkpoint of the small network."""
    out = tmp_path_factory.mktemp("kitti")
    torch.manual_seed(1)
    cfg = compose_train([*data_overrides(toy_root), *SMALL_MODEL], out)
    return save_checkpoint(cfg, out / "checkpoints" / "last.ckpt")


def five_class_yaml(folder: Path) -> Path:
    path = folder / "five.yaml"
    path.write_text(FIVE_CLASSES)
    return path


def test_init_from_a_19_class_checkpoint_trains_a_5_class_model(
    toy_root, kitti_ckpt, tmp_path, caplog
):
    labels = five_class_yaml(tmp_path)
    out = tmp_path / "run"
    cfg = compose_train(
        [
            *data_overrides(toy_root),
            *SMALL_MODEL,
            *QUIET,
            "debug=default",
            f"data.label_config={labels}",
            f"init_from={kitti_ckpt.parent.parent}",  # a run folder
            "model.optimizer.lr=0",  # so the copied weights are still the checkpoint's at the end
        ],
        out,
    )
    with caplog.at_level(logging.WARNING, logger="pcseg.finetune"):
        train(cfg)
    warning = next(r.getMessage() for r in caplog.records if "label set differs" in r.getMessage())
    source = torch.load(kitti_ckpt, weights_only=True)["state_dict"]
    done = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    head = [k for k in done["state_dict"] if k.startswith(HEAD_PREFIX)]
    assert head and all(k in warning for k in head)  # every re-initialised tensor is named
    assert done["state_dict"]["net.head.rest.2.weight"].shape[0] == 5
    assert source["net.head.rest.2.weight"].shape[0] == 20
    assert torch.equal(done["state_dict"]["net.stem.0.weight"], source["net.stem.0.weight"])
    # a new run: epoch 0, its own optimiser steps only, the new classes in its config
    assert done["epoch"] == 0 and done["global_step"] == 1  # 2 scans, batch 2
    steps = {float(s["step"]) for s in done["optimizer_states"][0]["state"].values()}
    assert steps == {1.0}
    assert done["pcseg_config"]["init_from"] == str(kitti_ckpt.parent.parent)


def test_same_label_set_copies_the_head_too(toy_root, kitti_ckpt, tmp_path, caplog):
    cfg = compose_train([*data_overrides(toy_root), *SMALL_MODEL], tmp_path)
    model = instantiate(cfg.model)
    with caplog.at_level(logging.WARNING, logger="pcseg.finetune"):
        report = init_from_checkpoint(model, kitti_ckpt)
    assert not report.reinitialised and not report.label_set_changed and not caplog.records
    source = torch.load(kitti_ckpt, weights_only=True)["state_dict"]
    for k, v in model.state_dict().items():
        if k.startswith("net."):
            assert torch.equal(v, source[k]), k


def test_another_network_outside_the_head_is_an_error(toy_root, kitti_ckpt, tmp_path):
    cfg = compose_train([*data_overrides(toy_root), *SMALL_MODEL, "model.net.width=16"], tmp_path)
    with pytest.raises(FineTuneError, match=r"last\.ckpt: init_from needs the same network.*stem"):
        init_from_checkpoint(instantiate(cfg.model), kitti_ckpt)


def test_init_from_and_ckpt_path_together_are_refused(toy_root, kitti_ckpt, tmp_path):
    cfg = compose_train(
        [*data_overrides(toy_root), f"init_from={kitti_ckpt}", f"ckpt_path={kitti_ckpt}"],
        tmp_path,
    )
    with pytest.raises(ValueError, match="both given"):
        train(cfg)
