"""Domain-gap statistics (pcseg/data/synthetic/gap.py, scripts/domain_gap.py): each statistic
against a plain reference on shapes whose answer is known, and bounds on the gaps the
simulator closed (generators 3 and 4), measured on freshly simulated scans against the real ones, so
they fail if the gap comes back."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import wasserstein_distance

from pcseg.data.labels import load_label_map
from pcseg.data.synthetic import LidarConfig, generate_dataset, simulate_sequence
from pcseg.data.synthetic.gap import (
    POINT_STATS,
    GapInputError,
    ScanSet,
    add_scan,
    compare,
    content_shares,
    load_scan_set,
    local_ground,
    lookup,
    point_features,
    shape_features,
    wasserstein1,
)
from tests.cli import run_cli

REAL = os.environ.get("PCSEG_REAL_DATA")
needs_real = pytest.mark.skipif(not REAL, reason="PCSEG_REAL_DATA is unset")


def _reference_shape(xyz: np.ndarray, query: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """Plain loop: brute-force neighbours and one eigen-decomposition per point."""
    out = {name: np.zeros(len(query)) for name in ("linearity", "planarity", "scattering")}
    out["verticality"] = np.zeros(len(query))
    for i, q in enumerate(query):
        nb = xyz[np.argsort(((xyz - q) ** 2).sum(1), kind="stable")[:k]]
        w, v = np.linalg.eigh(np.cov(nb.T, bias=True))
        w = np.maximum(w, 0)
        out["linearity"][i] = (w[2] - w[1]) / w[2]
        out["planarity"][i] = (w[1] - w[0]) / w[2]
        out["scattering"][i] = w[0] / w[2]
        out["verticality"][i] = 1 - abs(v[2, 0])
    return out


def test_shape_features_match_reference_and_known_shapes():
    rng = np.random.default_rng(0)
    gx, gy = np.meshgrid(np.arange(20) * 0.25, np.arange(20) * 0.25)
    plane = np.c_[gx.ravel(), gy.ravel(), rng.normal(0, 1e-3, 400)]
    wall = plane[:, [0, 2, 1]]
    line = np.c_[np.linspace(0, 5, 400), rng.normal(0, 1e-3, (400, 2))]
    blob = rng.normal(0, 1, (400, 3))
    for cloud in (plane, wall, line, blob):
        got = shape_features(cloud, cloud[:40], k=16)
        ref = _reference_shape(cloud, cloud[:40], 16)
        for name in ref:
            np.testing.assert_allclose(got[name], ref[name], atol=1e-6)
    assert np.median(shape_features(plane, plane, 16)["planarity"]) > 0.5
    assert np.median(shape_features(plane, plane, 16)["scattering"]) < 0.01
    assert np.median(shape_features(plane, plane, 16)["verticality"]) < 0.01
    assert np.median(shape_features(wall, wall, 16)["verticality"]) > 0.99
    assert np.median(shape_features(line, line, 16)["linearity"]) > 0.95
    assert np.median(shape_features(blob, blob, 16)["scattering"]) > 0.2


def test_texture_is_the_remission_spread_of_the_neighbours():
    """point_features' texture against a plain loop (brute-force neighbours, np.std), and on
    a plane whose two halves differ only in remission speckle: the speckled half reads rough."""
    rng = np.random.default_rng(1)
    xyz = np.c_[rng.uniform(0, 4, 800), rng.uniform(0, 2, 800), np.zeros(800)]  # no ties
    speckled = xyz[:, 0] >= 2.0
    rem = np.where(speckled, rng.uniform(0.1, 0.5, 800), 0.3)
    sel, feats = point_features(xyz, rem, rng, max_points=100, k=8)
    for j, q in enumerate(xyz[sel]):
        nb = np.argsort(((xyz - q) ** 2).sum(1), kind="stable")[:8]
        assert feats["texture"][j] == pytest.approx(rem[nb].std(), abs=1e-9)
    inner = np.abs(xyz[sel, 0] - 2.0) > 0.4  # neighbourhoods within one half
    assert np.all(feats["texture"][inner & ~speckled[sel]] == 0)
    assert np.median(feats["texture"][inner & speckled[sel]]) > 0.05


def test_local_ground_ignores_a_multipath_point_and_sees_walls_above_it():
    rng = np.random.default_rng(1)
    ground = np.c_[rng.uniform(0, 10, (2000, 2)), np.full(2000, -1.7)]
    wall = np.c_[np.full(300, 5.0), rng.uniform(0, 10, 300), rng.uniform(-1.7, 2.0, 300)]
    outlier = np.array([[3.0, 3.0, -9.0]])
    xyz = np.concatenate([ground, wall, outlier])
    h = xyz[:, 2] - local_ground(xyz)
    np.testing.assert_allclose(h[:2000], 0.0, atol=1e-9)  # the outlier does not pull the ground
    np.testing.assert_allclose(h[2000:2300], wall[:, 2] + 1.7, atol=0.05)


def test_wasserstein_matches_scipy_and_compare_ranks_a_shift():
    rng = np.random.default_rng(2)
    a, b = rng.normal(0, 1, 5000), rng.normal(0.5, 2, 5000)
    assert wasserstein1(a, b) == pytest.approx(wasserstein_distance(a, b), rel=0.03)
    xyz = np.c_[rng.uniform(-20, 20, (3000, 2)), rng.normal(-1.7, 0.01, 3000)]
    rem = rng.uniform(0.2, 0.4, 3000)
    labels = np.full(3000, 9)  # road
    one, same, shifted = ScanSet("a"), ScanSet("b"), ScanSet("c")
    for s, r in ((one, rem), (same, rem), (shifted, rem + 0.2)):
        add_scan(s, xyz, r, labels, None, np.random.default_rng(0))
    names = load_label_map().class_names
    assert all(g.distance < 1e-9 for g in compare(one, same, names))
    gap = lookup(compare(shifted, one, names), "road", "remission")
    assert gap is not None and gap.distance == pytest.approx(0.2 / 0.1, rel=0.1)  # W1 / IQR
    with pytest.raises(GapInputError, match="labels"):
        add_scan(ScanSet("x"), xyz, rem, labels[:10], None, rng)
    with pytest.raises(GapInputError, match="remissions"):
        point_features(xyz, rem[:5], rng)


def test_content_shares_are_semantickitti_proportions():
    lm = load_label_map()
    shares = content_shares(lm)
    assert sum(shares.values()) == pytest.approx(1.0)
    names = lm.class_names
    assert 0.15 < shares[names.index("road")] < 0.25
    assert 0.2 < shares[names.index("vegetation")] < 0.35


@pytest.fixture(scope="module")
def fresh_sim() -> ScanSet:
    """Two freshly simulated full-resolution scans (urban and suburban), not the dataset's."""
    lm = load_label_map()
    out, rng = ScanSet("sim"), np.random.default_rng(0)
    for seq in (0, 2):
        for _, scan, _ in simulate_sequence(seq, 1, seed=11):
            add_scan(out, scan.xyz, scan.remission, lm.to_train(scan.semantic), scan.instance, rng)
    return out


@needs_real
@pytest.mark.slow
def test_closed_gaps_stay_closed(fresh_sim):
    """Generator 2 had road linearity/planarity 1.82, terrain scattering 2.35, car linearity
    0.39, sidewalk planarity 0.36 (W1 / real IQR, scripts/domain_gap.py); generator 3 measures
    0.56-0.76, 0.12-0.61, 0.04, 0.08-0.13 on fresh scenes. Generator 3 had vegetation
    scattering 0.57 (foliage returns spread 0.5 m into the crowns) and building scattering /
    verticality 0.58 / 0.48 (smooth facades) on these two scenes; generator 4 measures 0.14
    and 0.14 / 0.29."""
    lm = load_label_map()
    real_root = Path(REAL) / "sequences/00/velodyne"
    real = load_scan_set("real", sorted(real_root.glob("*.bin")), lm)
    gaps = compare(fresh_sim, real, lm.class_names)
    bounds = {
        ("road", "linearity"): 1.2,
        ("road", "planarity"): 1.2,
        ("terrain", "scattering"): 1.2,
        ("car", "linearity"): 0.25,
        ("car", "planarity"): 0.25,
        ("sidewalk", "planarity"): 0.25,
        ("vegetation", "scattering"): 0.35,
        ("building", "scattering"): 0.35,
        ("building", "verticality"): 0.4,
    }
    for (cls, stat), bound in bounds.items():
        g = lookup(gaps, cls, stat)
        assert g is not None and g.distance < bound, (cls, stat, g)


@needs_real
@pytest.mark.slow
def test_class_agnostic_statistics_near_unlabelled_kitti(fresh_sim):
    """Every class-agnostic statistic of fresh scans within 0.3 (W1 / IQR) of the five
    unlabelled KITTI scans. A broad bound: real scenes differ among themselves by up to 0.2
    here (the first three scans alone put linearity 0.15 from all five), so this guards
    against gross regressions (a wrong sensor height, lost remission, a noisy range), not
    against the fine shape gaps that test_closed_gaps_stay_closed bounds per class."""
    unl = sorted((Path(REAL).parent / "kitti_unlabeled").glob("*.bin"))
    if not unl:
        pytest.skip("no kitti_unlabeled beside PCSEG_REAL_DATA")
    ref = load_scan_set("unlabeled", unl, None, max_points=10000)
    gaps = [
        g for g in compare(fresh_sim, ref, load_label_map().class_names) if g.cls == "all points"
    ]
    assert {g.stat for g in gaps} == set(POINT_STATS)
    for g in gaps:
        # remission texture is the one open class-agnostic gap (generators 5-6: 0.5, one
        # noise for every surface; docs/simulator.md "A texture-and-trees candidate": closing
        # it per material cost real sidewalk twice): bounded so it does not grow
        assert g.distance < (0.7 if g.stat == "texture" else 0.3), g


@needs_real
@pytest.mark.slow
def test_domain_gap_script_writes_table_and_png(tmp_path):
    root = generate_dataset(
        tmp_path / "syn",
        {0: 1, 1: 1},
        progress=False,
        workers=1,
        lidar=LidarConfig(n_beams=32, n_azimuth=1024),
    )
    out = tmp_path / "gap"
    args = ["--synthetic", str(root), "--sequences", "0", "1", "--max-points", "3000"]
    res = run_cli("scripts/domain_gap.py", *args, "--out", str(out))
    md = (tmp_path / "gap.md").read_text()
    assert "largest gaps" in md and "| road |" in md and "Class-agnostic" in md
    assert (tmp_path / "gap.png").stat().st_size > 10_000
    assert "wrote" in res.stdout


def _far_ground_remission(scans: ScanSet) -> np.ndarray:
    """Remission of the sampled points within 0.15 m of the local ground at 25-50 m range (the
    statistics of one scan set are aligned point by point)."""
    height, rng, rem = (scans.get(-1, s) for s in ("height", "range", "remission"))
    return rem[(height < 0.15) & (rng >= 25) & (rng < 50)]


@needs_real
@pytest.mark.slow
def test_far_ground_reads_as_dark_as_in_unlabelled_kitti(fresh_sim):
    """KITTI's ground beyond 25 m (grazing incidence) reads 0 for about a third of its points
    and has a median remission of ~0.17 in the unlabelled scans; generator 3 gave 7 % and 0.29
    (no fading of faint echoes). Label-free: every point near the local ground counts."""
    unl = sorted((Path(REAL).parent / "kitti_unlabeled").glob("*.bin"))
    if not unl:
        pytest.skip("no kitti_unlabeled beside PCSEG_REAL_DATA")
    ref = _far_ground_remission(load_scan_set("unlabeled", unl, None, max_points=10000))
    sim = _far_ground_remission(fresh_sim)
    assert len(sim) > 200 and len(ref) > 200
    assert abs(np.mean(sim == 0) - np.mean(ref == 0)) < 0.12, (np.mean(sim == 0), np.mean(ref == 0))
    assert abs(np.median(sim) - np.median(ref)) < 0.07, (np.median(sim), np.median(ref))


def _above_ground_remission(scans: ScanSet, near: float, far: float) -> np.ndarray:
    """Remission of the sampled points more than 0.7 m above the local ground at ``near`` to
    ``far`` m range (vegetation, facades, trunks, poles: surfaces that face the sensor)."""
    height, rng, rem = (scans.get(-1, s) for s in ("height", "range", "remission"))
    return rem[(height > 0.7) & (rng >= near) & (rng < far)]


@needs_real
@pytest.mark.slow
def test_far_objects_read_as_dark_as_in_unlabelled_kitti(fresh_sim):
    """KITTI's remission falls with range for every surface, not only for grazing ground: points
    well above the ground read about 0.6 and 0.4 of their near value at 30-40 and 40-60 m in
    the unlabelled scans. Generator 5 kept them as bright as near ones, so far, dark things
    were only cars there, and a model called far real vegetation car (71 % of it beyond 30 m
    on one 30-minute model; 11 % with generator 6's range fade). Label-free."""
    unl = sorted((Path(REAL).parent / "kitti_unlabeled").glob("*.bin"))
    if not unl:
        pytest.skip("no kitti_unlabeled beside PCSEG_REAL_DATA")
    ref_set = load_scan_set("unlabeled", unl, None, max_points=10000)
    for near, far in ((30.0, 40.0), (40.0, 60.0)):
        sim = _above_ground_remission(fresh_sim, near, far)
        ref = _above_ground_remission(ref_set, near, far)
        assert len(sim) > 100 and len(ref) > 100, (near, len(sim), len(ref))
        sim_ratio = np.median(sim) / np.median(_above_ground_remission(fresh_sim, 5.0, 20.0))
        ref_ratio = np.median(ref) / np.median(_above_ground_remission(ref_set, 5.0, 20.0))
        assert abs(sim_ratio - ref_ratio) < 0.2, (near, sim_ratio, ref_ratio)


@needs_real
@pytest.mark.slow
def test_cars_have_the_bright_tail_of_real_cars(fresh_sim):
    """Real cars read 0.37 at the 90th percentile of their remission (white and silver paint,
    plates) in the labelled scans; generator 4's one dark paint gave 0.14 on these two scenes,
    generator 5's drawn paints 0.24. A network that learnt 'dark means car' called dark far
    vegetation car."""
    lm = load_label_map()
    real_root = Path(REAL) / "sequences/00/velodyne"
    real = load_scan_set("real", sorted(real_root.glob("*.bin")), lm)
    car = lm.class_names.index("car")
    sim_q, real_q = (np.percentile(s.get(car, "remission"), [50, 90]) for s in (fresh_sim, real))
    assert abs(sim_q[1] - real_q[1]) < 0.17, (sim_q, real_q)
    assert abs(sim_q[0] - real_q[0]) < 0.05, (sim_q, real_q)  # most cars stay dark
