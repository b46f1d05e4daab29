"""Loss weights: from the label yaml's real-data mix, or counted on the training split."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from pcseg.data.datamodule import SemanticKITTIDataModule
from pcseg.data.statistics import class_counts
from pcseg.lit_module import (
    SegmentationModule,
    class_weights_from_content,
    class_weights_from_frequencies,
)
from pcseg.nn.pccn import PCCN
from tests.helpers import write_toy_dataset


def test_weights_are_inverse_sqrt_frequency_normalised_to_mean_one():
    freq = np.array([50.0, 400.0, 100.0, 0.0, 25.0])  # class 0 ignored, class 3 never seen
    w = class_weights_from_frequencies(freq, ignore_index=0).numpy()
    assert w[0] == 0
    assert w[1] / w[2] == pytest.approx(0.5) and w[2] / w[4] == pytest.approx(0.5)
    assert w[3] == pytest.approx(w[4])  # unseen: the largest seen weight, not infinity
    assert w[1:].mean() == pytest.approx(1.0)


def test_content_weights_lift_rare_classes():
    from pcseg.data.labels import load_label_map

    lm = load_label_map()
    w = class_weights_from_content(lm)
    names = lm.class_names
    assert w[names.index("bicyclist")] > w[names.index("car")] > w[names.index("road")] > 0


def test_class_counts_match_the_voxel_labels_the_dataset_yields(tmp_path):
    root = write_toy_dataset(tmp_path, {0: 3}, points=2000)
    dm = SemanticKITTIDataModule(
        root=root,
        sequences={"train": [0], "valid": [0], "test": [0]},
        num_workers=0,
        voxel_size=0.2,
        augment=None,
    )
    ds = dm.dataset("train")
    expected = sum(np.bincount(ds[i]["label"].numpy(), minlength=20) for i in range(len(ds)))
    np.testing.assert_array_equal(class_counts(ds), expected)


@pytest.mark.parametrize("power", [0.5, 0.25])
def test_train_weights_are_counted_when_fitting_starts(tmp_path, power):
    root = write_toy_dataset(tmp_path, {0: 2, 1: 1}, points=1500)
    dm = SemanticKITTIDataModule(
        root=root,
        sequences={"train": [0], "valid": [1], "test": [1]},
        num_workers=0,
        voxel_size=0.2,
        batch_size=2,
        persistent_workers=False,
    )
    net = PCCN(dm.in_channels, 20, width=8, depth=1, k=4, kernel_hidden=(8,), head_hidden=(8,))
    model = SegmentationModule(
        net,
        optimizer=functools.partial(torch.optim.SGD, lr=0.01),
        class_weights="train",
        class_weight_power=power,
        lovasz_weight=0.5,
    )
    assert torch.equal(model.criterion.ce.weight, torch.ones(20))  # placeholder until fit
    trainer = pl.Trainer(
        fast_dev_run=True,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=dm)
    expected = class_weights_from_frequencies(class_counts(dm.dataset("train")), 0, power)
    torch.testing.assert_close(model.criterion.ce.weight, expected)
    # the weights travel in the state dict, so evaluation rebuilds the same loss
    again = SegmentationModule(
        PCCN(dm.in_channels, 20, width=8, depth=1, k=4, kernel_hidden=(8,), head_hidden=(8,)),
        optimizer=functools.partial(torch.optim.SGD, lr=0.01),
        class_weights="train",
    )
    again.load_state_dict(model.state_dict())
    torch.testing.assert_close(again.criterion.ce.weight, expected)


def test_unknown_class_weights_are_rejected():
    net = PCCN(3, 20, width=8, depth=1, k=4, kernel_hidden=(8,), head_hidden=(8,))
    with pytest.raises(ValueError, match="'content' or 'train'"):
        SegmentationModule(net, optimizer=torch.optim.SGD, class_weights="inverse")
