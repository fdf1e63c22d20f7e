"""Radiotherapy plans: standard CTV, same-volume personalized CTV, recurrence coverage."""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gliomatch.errors import GliomatchError
from gliomatch.patient.inputs import recurrence_masks
from gliomatch.patient.plans import (
    TOP_V,
    check_rule,
    gtv_region,
    make_plans,
    plan_figures,
    recurrence_coverage,
    standard_ctv,
    top_volume,
)


def _ball_count(radius, zooms):
    """Lattice points within ``radius`` mm of the origin: the slow, obvious reference."""
    r = [int(radius // z) + 1 for z in zooms]
    n = 0
    for i, j, k in itertools.product(*(range(-a, a + 1) for a in r)):
        if (i * zooms[0]) ** 2 + (j * zooms[1]) ** 2 + (k * zooms[2]) ** 2 <= radius**2:
            n += 1
    return n


@pytest.mark.parametrize("zooms", [(1.0, 1.0, 1.0), (1.0, 1.0, 2.5), (0.8, 1.2, 5.5)])
def test_standard_ctv_is_a_ball_in_mm(zooms):
    core = np.zeros((41, 41, 41), bool)
    core[20, 20, 20] = True
    brain = np.ones_like(core)
    ctv = standard_ctv(core, brain, zooms, margin_mm=7.0)
    assert ctv.sum() == _ball_count(7.0, zooms)
    # anisotropic voxels: the margin reaches fewer voxels along the coarse axis
    assert ctv[20, 20, :].sum() == 2 * int(7.0 // zooms[2]) + 1


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), margin=st.floats(0.5, 12.0))
def test_standard_ctv_on_the_core_box_equals_the_whole_grid_distance(seed, margin):
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    shape, zooms = (20, 17, 12), (1.0, 1.3, 2.2)
    core = rng.random(shape) < 0.01
    core[rng.integers(0, 20), rng.integers(0, 17), rng.integers(0, 12)] = True
    brain = rng.random(shape) < 0.95
    full = (ndimage.distance_transform_edt(~core, sampling=zooms) <= margin) & brain
    np.testing.assert_array_equal(standard_ctv(core, brain, zooms, margin), full)


def test_standard_ctv_is_clipped_to_the_brain():
    core = np.zeros((30, 30, 30), bool)
    core[15, 15, 15] = True
    brain = np.zeros_like(core)
    brain[:, :, 15:] = True
    ctv = standard_ctv(core, brain, (1, 1, 1), 5.0)
    assert not ctv[:, :, :15].any() and ctv[15, 15, 20]


@pytest.mark.parametrize("margin", [0.0, -3.0, float("nan")])
def test_standard_ctv_refuses_a_margin_that_is_not_positive(margin):
    core = np.zeros((8, 8, 8), bool)
    core[4, 4, 4] = True
    with pytest.raises(GliomatchError, match="margin_mm"):
        standard_ctv(core, np.ones_like(core), (1, 1, 1), margin)


def test_plans_refuse_no_core_empty_brain_and_other_grids():
    core = np.zeros((8, 8, 8), bool)
    with pytest.raises(GliomatchError, match="no tumor core"):
        standard_ctv(core, np.ones_like(core), (1, 1, 1))
    core[4, 4, 4] = True
    with pytest.raises(GliomatchError, match="brain mask is empty"):
        standard_ctv(core, np.zeros_like(core), (1, 1, 1))
    with pytest.raises(GliomatchError, match="another grid"):
        standard_ctv(core, np.ones((8, 8, 9), bool), (1, 1, 1))
    with pytest.raises(GliomatchError, match="another grid"):
        make_plans(np.zeros((8, 8, 9)), core, np.ones_like(core), (1, 1, 1))


def _reference_top(u, brain, n, core, zooms):
    """Slow, obvious top-n: sort (-u, distance to the support, distance to the core, index)."""
    pts = np.argwhere(np.ones(u.shape, bool)).astype(float) * np.asarray(zooms)
    flat_u = u.ravel()
    sup = pts[flat_u > 0]
    cor = pts[core.ravel()]

    def dist(p, s):
        return 0.0 if len(s) == 0 else float(np.sqrt(((s - p) ** 2).sum(axis=1)).min())

    keys = []
    for idx in np.flatnonzero(brain.ravel()):
        keys.append((-flat_u[idx], dist(pts[idx], sup), dist(pts[idx], cor), idx))
    keys.sort()
    out = np.zeros(u.size, bool)
    out[[k[3] for k in keys[:n]]] = True
    return out.reshape(u.shape)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    levels=st.integers(1, 4),
    frac=st.floats(0.05, 0.95),
    n=st.integers(1, 120),
)
def test_top_volume_matches_the_slow_reference_and_is_exactly_n(seed, levels, frac, n):
    rng = np.random.default_rng(seed)
    shape, zooms = (6, 5, 5), (1.0, 1.5, 2.0)
    # few distinct values and many zeros: ties everywhere
    u = rng.integers(0, levels + 1, size=shape) / levels * (rng.random(shape) < frac)
    brain = rng.random(shape) < 0.9
    core = np.zeros(shape, bool)
    core[2, 2, 2] = True
    n = min(n, int(brain.sum()))
    if n == 0:
        return
    plan = top_volume(u, brain, n, core=core, zooms=zooms)
    assert plan.sum() == n and not (plan & ~brain).any()
    np.testing.assert_array_equal(plan, _reference_top(u, brain, n, core, zooms))


def _top_volume_whole_grid(u, brain, n, core, zooms):
    """The first implementation: both distance transforms on the whole grid."""
    from scipy import ndimage

    cand = np.flatnonzero(brain)
    support = u > 0
    d_s = (
        ndimage.distance_transform_edt(~support, sampling=zooms)
        if support.any() and not support.all()
        else np.zeros(u.shape)
    )
    d_c = ndimage.distance_transform_edt(~core, sampling=zooms) if core.any() else np.zeros(u.shape)
    order = np.lexsort((cand, d_c.flat[cand], d_s.flat[cand], -u.flat[cand]))
    out = np.zeros(u.shape, bool)
    out.flat[cand[order[:n]]] = True
    return out


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 20_000), with_core=st.booleans())
def test_top_volume_on_growing_boxes_equals_the_whole_grid(seed, n, with_core):
    """A small density and core in a large brain: the tie group (zero density) is ordered on
    growing boxes; the plan equals the whole-grid ordering for any volume."""
    rng = np.random.default_rng(seed)
    shape, zooms = (48, 40, 30), (1.0, 1.2, 2.5)
    u = np.zeros(shape)
    c = rng.integers(8, 22, size=3)
    u[c[0] : c[0] + 4, c[1] : c[1] + 3, c[2] : c[2] + 2] = rng.integers(1, 4, size=(4, 3, 2)) / 4
    core = np.zeros(shape, bool)
    if with_core:
        core[c[0] + 5, c[1], c[2]] = True  # partly outside the support
    brain = rng.random(shape) < 0.97
    n = min(n, int(brain.sum()))
    np.testing.assert_array_equal(
        top_volume(u, brain, n, core=core, zooms=zooms),
        _top_volume_whole_grid(u, brain, n, core, zooms),
    )


def test_top_volume_beyond_a_zero_density_grows_from_the_support():
    u = np.zeros((21, 21, 21))
    u[10, 10, 10] = 1.0
    plan = top_volume(u, np.ones(u.shape, bool), 7, zooms=(1, 1, 1))
    assert plan[10, 10, 10] and plan.sum() == 7
    assert plan[9, 10, 10] and plan[10, 10, 11]  # the six face neighbours


def test_top_volume_refuses_too_large_or_empty_plans_and_nan():
    u = np.ones((4, 4, 4))
    brain = np.ones_like(u, bool)
    with pytest.raises(GliomatchError, match="exceeds the brain"):
        top_volume(u, brain, 65)
    with pytest.raises(GliomatchError, match="positive"):
        top_volume(u, brain, 0)
    u[0, 0, 0] = np.nan
    with pytest.raises(GliomatchError, match="NaN"):
        top_volume(u, brain, 3)


def _sphere(shape, center, radius, zooms=(1, 1, 1)):
    g = np.indices(shape).astype(float)
    d2 = sum(((g[i] - center[i]) * zooms[i]) ** 2 for i in range(3))
    return d2 <= radius**2


def test_make_plans_same_volume_other_volume_and_isodensity():
    shape = (40, 40, 40)
    brain = _sphere(shape, (20, 20, 20), 18)
    core = _sphere(shape, (20, 20, 20), 3)
    g = np.indices(shape).astype(float)
    # an elongated density: the personalized plan follows it, the standard does not
    u = np.exp(-(((g[0] - 20) / 10) ** 2) - ((g[1] - 20) / 3) ** 2 - ((g[2] - 20) / 3) ** 2)
    p = make_plans(u, core, brain, (1, 1, 1), margin_mm=6)
    assert p.personalized.sum() == p.standard.sum()
    assert p.personalized[32, 20, 20] and not p.standard[32, 20, 20]
    p2 = make_plans(u, core, brain, (1, 1, 1), margin_mm=6, volume_cm3=0.5)
    assert p2.personalized.sum() == 500
    p3 = make_plans(u, core, brain, (1, 1, 1), margin_mm=6, level=0.5)
    np.testing.assert_array_equal(p3.personalized, ((u >= 0.5) & brain) | core)  # + the GTV
    with pytest.raises(GliomatchError, match="not both"):
        make_plans(u, core, brain, (1, 1, 1), volume_cm3=1.0, level=0.5)
    with pytest.raises(GliomatchError, match="isodensity level"):
        make_plans(u, core, brain, (1, 1, 1), level=1.5)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), levels=st.integers(1, 4), extra=st.integers(0, 60))
def test_the_gtv_rule_holds_the_core_and_fills_the_rest_by_density(seed, levels, extra):
    """contain="core": the plan is the core plus the top (V - |core|) of the rest of the brain,
    ordered as the slow reference orders them; exactly V voxels."""
    rng = np.random.default_rng(seed)
    shape, zooms = (6, 5, 5), (1.0, 1.5, 2.0)
    u = rng.integers(0, levels + 1, size=shape) / levels * (rng.random(shape) < 0.5)
    brain = rng.random(shape) < 0.9
    core = rng.random(shape) < 0.08
    core[2, 2, 2] = True
    n = min(int(core.sum()) + extra, int((brain | core).sum()))
    plan = top_volume(u, brain | core, n, core=core, zooms=zooms, include=core)
    assert plan.sum() == n and plan[core].all()
    rest = _reference_top(u, brain & ~core, n - int(core.sum()), core, zooms)
    np.testing.assert_array_equal(plan, core | rest)


def _aimed_away():
    """A density whose prediction lies beside the core, not on it (a poor match)."""
    shape = (40, 40, 40)
    brain = _sphere(shape, (20, 20, 20), 18)
    core = _sphere(shape, (20, 20, 20), 4)
    whole = _sphere(shape, (20, 20, 20), 7)
    u = 0.9 * _sphere(shape, (20, 31, 20), 6)  # 11 mm off
    return u, core, whole, brain


def test_the_default_ctv_contains_the_gtv_where_top_v_leaves_it_out():
    u, core, whole, brain = _aimed_away()
    top = make_plans(u, core, brain, (1, 1, 1), margin_mm=6, contain=TOP_V)
    assert top.personalized[core].mean() < 0.9  # PREDICT-GBM's rule leaves core out
    assert "may leave out visible tumor" in top.rule
    safe = make_plans(u, core, brain, (1, 1, 1), margin_mm=6)
    assert safe.personalized[core].all() and safe.personalized.sum() == safe.standard.sum()
    assert "contains the tumor core" in safe.rule
    # the rest of the volume still follows the density
    assert safe.personalized[20, 33, 20] and not safe.standard[20, 33, 20]
    whole_plan = make_plans(u, core, brain, (1, 1, 1), margin_mm=6, contain="whole",
                            whole_tumor=whole)  # fmt: skip
    assert whole_plan.personalized[whole].all()
    assert whole_plan.personalized.sum() == whole_plan.standard.sum()
    # a minimum margin: the core grown by 3 mm is held, whatever the density
    grown = make_plans(u, core, brain, (1, 1, 1), margin_mm=6, min_margin_mm=3)
    from scipy import ndimage

    near = ndimage.distance_transform_edt(~core) <= 3
    assert grown.personalized[near & brain].all()
    assert not safe.personalized[near & brain].all()
    assert "grown by 3 mm" in grown.rule
    # isodensity plans hold the GTV too
    iso = make_plans(u, core, brain, (1, 1, 1), margin_mm=6, level=0.5)
    assert iso.personalized[core].all()


def test_a_gtv_larger_than_the_volume_asked_for_is_kept_whole_and_said():
    u, core, whole, brain = _aimed_away()
    p = make_plans(u, core, brain, (1, 1, 1), margin_mm=6, volume_cm3=0.1)  # 100 voxels
    np.testing.assert_array_equal(p.personalized, core)
    assert len(p.notes) == 1 and "larger than the plan volume" in p.notes[0]


def test_gtv_region_and_rule_checks():
    u, core, whole, brain = _aimed_away()
    assert not gtv_region(core, whole, brain, (1, 1, 1), contain="none").any()
    np.testing.assert_array_equal(gtv_region(core, whole, brain, (1, 1, 1)), core)
    np.testing.assert_array_equal(
        gtv_region(core, whole, brain, (1, 1, 1), contain="whole"), core | whole
    )
    with pytest.raises(GliomatchError, match="must be one of core, whole, none"):
        check_rule(contain="gtv")
    with pytest.raises(GliomatchError, match="minimum margin must be >= 0"):
        check_rule(min_margin_mm=-1)
    with pytest.raises(GliomatchError, match="not with the top-V rule"):
        check_rule(contain="none", min_margin_mm=2)
    with pytest.raises(GliomatchError, match="needs the whole-tumor mask"):
        make_plans(u, core, brain, (1, 1, 1), contain="whole")


def test_recurrence_coverage_follows_predict_gbm():
    rec = np.zeros((5, 5, 5), bool)
    plan = np.zeros_like(rec)
    assert recurrence_coverage(rec, plan) == 1.0  # no recurrence
    rec[0, 0, :4] = True
    plan[0, 0, :3] = True
    assert recurrence_coverage(rec, plan) == 0.75


def test_recurrence_coverage_equals_predict_gbms_own_function():
    metrics = pytest.importorskip("predict_gbm.evaluation.metrics")
    rng = np.random.default_rng(0)
    for _ in range(20):
        rec, plan = rng.random((9, 9, 9)) < 0.2, rng.random((9, 9, 9)) < 0.5
        assert recurrence_coverage(rec, plan) == pytest.approx(
            float(metrics.recurrence_coverage(rec, plan))
        )


def test_plan_figures():
    plan = np.zeros((10, 10, 10), bool)
    plan[:5] = True
    wt = np.zeros_like(plan)
    wt[3:7] = True
    core = np.zeros_like(plan)
    core[4] = True
    f = plan_figures(plan, (2, 2, 2), whole_tumor=wt, core=core)
    assert f["volume_cm3"] == pytest.approx(500 * 8 / 1000)
    assert f["outside_visible_tumor_cm3"] == pytest.approx(300 * 8 / 1000)
    assert f["covers_whole_tumor"] == 0.5 and f["covers_core"] == 1.0


def test_recurrence_masks_enhancing_any_and_cavity():
    lab = np.array([0, 1, 2, 3, 4])
    enh, anyt, scheme = recurrence_masks(lab, "predictgbm")
    assert enh.tolist() == [False, False, False, True, False]
    assert anyt.tolist() == [False, True, True, True, False]
    enh, anyt, _ = recurrence_masks(np.array([0, 1, 2, 4]), "brats2021")
    assert enh.tolist() == [False, False, False, True]
    # no recurrence at all, or only a cavity: empty masks, not an error
    enh, anyt, _ = recurrence_masks(np.array([0, 4, 4]), "predictgbm")
    assert not enh.any() and not anyt.any()
    enh, anyt, _ = recurrence_masks(np.zeros(4, int), "auto")
    assert not enh.any() and not anyt.any()
