"""Canonical intensities: the same brain mask and the same registration input for a scan in
any intensity convention (rescaled, offset, z-scored with a zero or a negative background)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gliomatch.intensity import background_value, canonical, foreground, lattice_levels
from gliomatch.patient.registration import _has_skull, brain_support
from scans import in_convention, z_brain


def _scan(seed=0, shape=(40, 44, 36)):
    """A skull-stripped int16 'scan': an ellipsoid brain of noisy tissue intensities (some of
    them negative, as BraTS' resampling leaves), dark ventricles inside, a faint rim of signal
    left by a loose mask, zero background."""
    rng = np.random.default_rng(seed)
    idx = np.indices(shape).astype(float)
    c = (np.asarray(shape) - 1) / 2
    r = np.sqrt(sum(((idx[i] - c[i]) / (0.42 * shape[i])) ** 2 for i in range(3)))
    data = np.zeros(shape)
    brain = r < 1
    data[brain] = rng.normal(600, 150, brain.sum())
    data[r < 0.25] = rng.normal(80, 20, (r < 0.25).sum())  # ventricles
    rim = (r >= 1) & (r < 1.08)
    data[rim] = rng.uniform(1, 12, rim.sum())  # faint signal outside the brain
    data[brain & (rng.random(shape) < 0.002)] = -40  # a few negative voxels
    return np.round(data).astype(np.int16)


def test_background_is_the_most_frequent_edge_value():
    x = np.full((5, 5, 5), -0.8, np.float32)
    x[1:4, 1:4, 1:4] = 3.0
    assert background_value(x) == np.float32(-0.8)
    assert background_value(_scan()) == 0


def test_brain_support_drops_faint_rim_and_fills_ventricles():
    x = _scan()
    brain = brain_support(x)
    idx = np.indices(x.shape).astype(float)
    c = (np.asarray(x.shape) - 1) / 2
    r = np.sqrt(sum(((idx[i] - c[i]) / (0.42 * x.shape[i])) ** 2 for i in range(3)))
    assert brain[r < 0.25].all()  # ventricles inside
    assert not brain[(r >= 1.01) & (r < 1.08)].any()  # faint rim out
    assert brain[r < 0.97].mean() > 0.999


@settings(max_examples=60, deadline=None)
@given(
    scale=st.floats(1e-4, 1e20),
    offset=st.floats(-1e4, 1e4),
    convention=st.sampled_from(["affine", "z_zero", "z_negative", "z_whole", "float64"]),
)
def test_canonical_and_brain_mask_do_not_depend_on_the_intensity_convention(
    scale, offset, convention
):
    x = _scan()
    ref_c, ref_b = canonical(x), brain_support(x)
    if convention == "float64":
        y = x.astype(np.float64) * scale
    elif convention == "z_negative":  # any constant background
        y = z_brain(x, background=-abs(offset) / 1e3 - 0.5)
    else:
        y = in_convention(x, convention, scale, offset * scale)
    assert np.array_equal(canonical(y), ref_c)  # bit for bit: the lattice is recovered
    assert np.array_equal(brain_support(y), ref_b)
    fx, fy = foreground(x), foreground(y)
    assert _has_skull(canonical(y), fy, (1, 1, 1)) == _has_skull(ref_c, fx, (1, 1, 1))


def test_off_lattice_scans_are_invariant_up_to_rounding():
    rng = np.random.default_rng(1)
    x = _scan().astype(np.float64) + rng.uniform(0, 1, _scan().shape) * (_scan() != 0)
    assert lattice_levels(x[x != 0]) is None
    y = (x * 37.5 - 4.0).astype(np.float64)
    assert np.abs(canonical(y) - canonical(x)).max() < 1e-5
    assert np.array_equal(brain_support(y), brain_support(x))


@pytest.mark.parametrize(
    "values, expected",
    [([2.0, 4.0, 10.0], [0, 1, 4]), ([-1.5, -1.0, 0.5], [0, 1, 4]), ([7.0, 7.0], [0, 0])],
)
def test_lattice_levels(values, expected):
    assert lattice_levels(np.array(values)).tolist() == expected


def test_constant_and_empty_scans():
    assert not canonical(np.zeros((4, 4, 4))).any()
    x = np.zeros((6, 6, 6))
    x[2:4, 2:4, 2:4] = 5
    assert canonical(x)[3, 3, 3] == 1.0 and not brain_support(np.zeros((4, 4, 4))).any()
