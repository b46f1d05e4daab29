"""Label-shift correction (pcseg/prior_shift.py): the bias is Bayes' rule (checked against an
analytic posterior), the stored prior is the network's mean probability per validation point
(checked against a plain recomputation), and evaluate/predict apply it only when asked."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest
import torch
from omegaconf import open_dict

from pcseg.checkpoint_loading import build_datamodule, build_model, load_checkpoint
from pcseg.data.collate import collate_point_clouds
from pcseg.evaluate import evaluate
from pcseg.prior_shift import (
    SOURCE_PRIOR_KEY,
    MeanClassProbability,
    PriorShiftError,
    apply_prior,
    ensure_source_prior,
    points_per_voxel,
    prior_bias,
    target_prior,
)
from pcseg.train import train
from tests.helpers import write_toy_dataset
from tests.test_checkpoint_safety import compose_evaluate, run_config, save_checkpoint
from tests.test_train import SMALL_MODEL, compose_train, data_overrides


def _posterior(x: np.ndarray, means: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """(N, C) exact posterior of 1-D unit Gaussians with ``means`` under class ``prior``."""
    like = np.exp(-0.5 * (x[:, None] - means[None, :]) ** 2)
    joint = like * prior
    return joint / joint.sum(1, keepdims=True)


def test_the_bias_turns_the_source_posterior_into_the_target_one():
    """Class 0 is the ignored one (never predicted); classes 1-4 change their mix."""
    rng = np.random.default_rng(0)
    means = np.array([0.0, -2.0, 0.0, 1.0, 3.0])
    source = np.array([0.0, 0.1, 0.5, 0.3, 0.1])
    target = np.array([0.0, 0.4, 0.1, 0.1, 0.4])
    x = rng.normal(0, 2.5, 500)
    p_source = _posterior(x, means[1:], source[1:])
    logits = np.concatenate([np.full((len(x), 1), -1e9), np.log(p_source)], 1)
    bias = prior_bias(source, target, ignore_index=0).double().numpy()
    assert bias[0] == 0.0
    corrected = torch.softmax(torch.from_numpy(logits + bias), 1).numpy()
    np.testing.assert_allclose(corrected[:, 1:], _posterior(x, means[1:], target[1:]), atol=1e-9)
    # a stored prior need not be normalised, nor exclude the ignored class
    scaled = prior_bias(np.r_[7.0, source[1:] * 3], target, ignore_index=0)
    torch.testing.assert_close(scaled, prior_bias(source, target, 0))


def test_zero_shares_stay_finite_and_mismatches_are_refused():
    bias = prior_bias(np.array([0.2, 0.0, 0.8]), np.array([0.0, 0.5, 0.5]), ignore_index=0)
    assert torch.isfinite(bias).all() and bias[1] > 10  # never predicted: a large, finite lift
    with pytest.raises(PriorShiftError, match="3 classes"):
        prior_bias(np.ones(3), np.ones(4), 0)


def test_content_target_is_the_label_yamls_class_mix():
    from pcseg.data.labels import load_label_map

    lm = load_label_map()
    shares = target_prior("content", lm)
    assert shares[lm.ignore_index] == 0 and shares.sum() == pytest.approx(1.0)
    assert shares[lm.class_names.index("vegetation")] > shares[lm.class_names.index("car")]
    with pytest.raises(PriorShiftError, match="'uniform'"):
        target_prior("uniform", lm)


def test_mean_class_probability_is_the_mean_over_original_points():
    torch.manual_seed(0)
    metric = MeanClassProbability(5)
    reference = []
    for voxels, points in ((40, 90), (25, 60)):
        probs = torch.softmax(torch.randn(voxels, 5), 1)
        inverse = torch.randint(0, voxels, (points,))
        metric.update(probs, points_per_voxel(inverse, voxels))
        reference.append(probs[inverse])
    torch.testing.assert_close(
        metric.compute(), torch.cat(reference).double().mean(0), rtol=1e-12, atol=1e-12
    )
    plain = MeanClassProbability(5)
    probs = torch.softmax(torch.randn(30, 5), 1)
    plain.update(probs)
    torch.testing.assert_close(plain.compute(), probs.double().mean(0))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A one-epoch toy run: its last checkpoint and the run folder."""
    tmp = tmp_path_factory.mktemp("prior")
    root = write_toy_dataset(tmp / "toy", {0: 3, 1: 2}, points=2500)
    cfg = compose_train(
        [*data_overrides(root), *SMALL_MODEL, "trainer.max_epochs=1", "data.num_workers=0"],
        tmp / "run",
    )
    with open_dict(cfg):
        cfg.callbacks.model_checkpoint.dirpath = str(tmp / "run" / "checkpoints")
    train(cfg)
    return tmp / "run" / "checkpoints" / "last.ckpt", tmp


@pytest.mark.slow
def test_training_stores_the_mean_validation_probability(trained):
    ckpt, _ = trained
    run = load_checkpoint(ckpt)
    stored = torch.tensor(run.ckpt[SOURCE_PRIOR_KEY], dtype=torch.float64)
    model = build_model(run)
    assert stored.shape == (model.label_map.num_classes,)
    # plain recomputation: softmax of every validation voxel, repeated for each of its points
    datamodule = build_datamodule(run.config, {"num_workers": 0})
    dataset = datamodule.dataset("val")
    probs = []
    with torch.no_grad():
        for i in range(len(dataset)):
            batch = collate_point_clouds([dataset[i]])
            probs.append(torch.softmax(model(batch), 1)[batch.inverse])
    torch.testing.assert_close(stored, torch.cat(probs).double().mean(0), rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_the_bias_is_added_in_evaluation_only_and_evaluate_records_it(trained):
    ckpt, tmp = trained
    run = load_checkpoint(ckpt)
    model = build_model(run)
    datamodule = build_datamodule(run.config, {"num_workers": 0})
    batch = collate_point_clouds([datamodule.dataset("val")[0]])
    with torch.no_grad():
        plain = model(batch)
        bias = apply_prior(model, "content", ckpt)
        torch.testing.assert_close(model(batch) - plain, bias.expand_as(plain))
        model.train()
        assert model.logit_bias is not None
        torch.manual_seed(0)
        trained_mode = model(batch)
        model.logit_bias = None
        torch.manual_seed(0)
        torch.testing.assert_close(model(batch), trained_mode)  # no bias in training mode
    metrics = evaluate(compose_evaluate([f"ckpt_path={ckpt}", "prior=content"], tmp / "ev"))
    assert metrics["prior"] == "content" and 0.0 <= metrics["miou"] <= 1.0
    assert "prior" not in evaluate(compose_evaluate([f"ckpt_path={ckpt}"], tmp / "ev0"))


@pytest.mark.slow
def test_adaptation_pseudo_labels_under_the_target_prior(trained, tmp_path):
    """adapt.prior=content: the labeller predicts with the bias from the model's stored prior
    (build_model restores it) to the yaml's mix, and leaves the model without it."""
    from pcseg.adapt import PseudoLabeller

    ckpt, _ = trained
    run = load_checkpoint(ckpt)
    model = build_model(run)
    np.testing.assert_allclose(model.source_prior, run.ckpt[SOURCE_PRIOR_KEY])
    dataset = build_datamodule(run.config, {"num_workers": 0}).dataset("val")
    labeller = PseudoLabeller(
        dataset, tmp_path / "pseudo", model.label_map, list(run.config.data.features),
        keep_fraction=1.0, max_threshold=1.0, min_confidence=0.0, tta=1,
        history=tmp_path / "rounds.json", prior="content",
    )  # fmt: skip
    stats = labeller.refresh(model, 0)
    assert model.logit_bias is None
    bias = prior_bias(model.source_prior, target_prior("content", model.label_map), 0)
    counts = np.zeros(model.label_map.num_classes, int)
    with torch.no_grad():
        for i in range(len(dataset)):
            logits = model(collate_point_clouds([dataset[i]])) + bias
            counts += np.bincount(logits.argmax(1).numpy(), minlength=len(counts))
    names = model.label_map.class_names
    assert {names[c]: int(n) for c, n in enumerate(counts) if n} == {
        k: v["predicted"] for k, v in stats["classes"].items()
    }


@pytest.mark.slow
def test_an_older_checkpoint_gets_its_prior_estimated_on_its_validation_split(trained):
    """A checkpoint without a stored prior (written before 2026-12-02): evaluate estimates it
    on the run's own validation split, which gives what training would have stored."""
    ckpt, tmp = trained
    raw = torch.load(ckpt, weights_only=True)
    stored = np.asarray(raw.pop(SOURCE_PRIOR_KEY))
    older = tmp / "older.ckpt"
    torch.save(raw, older)
    run = load_checkpoint(older)
    model = build_model(run)
    assert model.source_prior is None
    ensure_source_prior(model, run)
    np.testing.assert_allclose(model.source_prior, stored, rtol=1e-4, atol=1e-6)
    with_key = evaluate(compose_evaluate([f"ckpt_path={ckpt}", "prior=content"], tmp / "a"))
    estimated = evaluate(compose_evaluate([f"ckpt_path={older}", "prior=content"], tmp / "b"))
    assert estimated["confusion"] == with_key["confusion"]


def test_an_older_checkpoint_without_its_data_is_refused_by_name(tmp_path):
    root = write_toy_dataset(tmp_path / "toy", {0: 1, 1: 1}, points=800)
    ckpt = save_checkpoint(run_config(root, tmp_path / "run"), tmp_path / "old.ckpt")
    other = write_toy_dataset(tmp_path / "other", {1: 1}, points=800)
    shutil.rmtree(root)  # the run's own data is gone; the scans to score are elsewhere
    overrides = [f"ckpt_path={ckpt}", "prior=content", f"data.root={other}"]
    with pytest.raises(PriorShiftError, match=re.escape(str(ckpt))) as err:
        evaluate(compose_evaluate([*overrides, "data.sequences={valid:[1]}"], tmp_path / "ev"))
    assert "validation data" in str(err.value)
    model = build_model(load_checkpoint(ckpt))
    with pytest.raises(PriorShiftError, match=re.escape(str(ckpt))):
        apply_prior(model, "content", ckpt)  # the bias itself needs a prior
    model.source_prior = np.ones(model.label_map.num_classes)
    with pytest.raises(PriorShiftError, match="prior must be one of"):
        apply_prior(model, "x", ckpt)
