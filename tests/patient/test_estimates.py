"""Posterior summary of the identifiable parameters (gliomatch.patient.estimates)."""

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gliomatch.errors import GliomatchError
from gliomatch.patient.estimates import (
    NOT_IDENTIFIABLE,
    estimate,
    posterior_weights,
    weighted_quantile,
)


def _matches(n=20, seed=0):
    rng = np.random.default_rng(seed)
    dwr = rng.uniform(1, 60, n)
    return pd.DataFrame(
        {
            "x_mm": rng.normal(10, 3, n),
            "y_mm": rng.normal(-20, 3, n),
            "z_mm": rng.normal(30, 3, n),
            "dw_over_rho": dwr,
            "infiltration_mm": np.sqrt(dwr),
            "rho_t": rng.uniform(5, 30, n),
        }
    )


def test_weights_normalized_and_limits():
    s = np.array([1.6, 1.5, 1.2, 0.9])
    w = posterior_weights(s, 0.05)
    assert w.sum() == pytest.approx(1) and np.all(np.diff(w) < 0)
    assert np.allclose(posterior_weights(s, 1e9), 0.25)
    assert posterior_weights(s, 1e-6)[0] == pytest.approx(1)
    for bad in (0, -1, np.nan):
        with pytest.raises(GliomatchError, match="temperature"):
            posterior_weights(s, bad)
    with pytest.raises(GliomatchError, match="finite"):
        posterior_weights([1.0, np.nan])


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(-100, 100), min_size=1, max_size=40),
    st.floats(0.01, 0.99),
)
def test_weighted_quantile_equal_weights_is_inverted_cdf(values, q):
    v = np.asarray(values)
    got = weighted_quantile(v, np.ones(len(v)), q)
    assert got == pytest.approx(float(np.quantile(v, q, method="inverted_cdf")))


def test_weighted_quantile_concentrated_weight():
    v = np.array([3.0, 1.0, 2.0])
    assert weighted_quantile(v, [0, 1, 0], 0.05) == 1.0
    assert weighted_quantile(v, [0, 1, 0], 0.95) == 1.0


def test_estimate_reports_identifiable_quantities_with_intervals():
    m = _matches()
    scores = np.linspace(1.6, 1.2, len(m))
    est = estimate(m, scores)
    e = est["estimates"]
    assert set(e) == {"infiltration_mm", "rho_t", "dw_over_rho", "seed_mm"}
    for col in ("infiltration_mm", "rho_t"):
        lo, hi = e[col]["interval"]
        assert lo <= e[col]["median"] <= hi
        assert e[col]["best"] == m[col].iloc[0]
        assert m[col].min() <= lo and hi <= m[col].max()
    assert e["seed_mm"]["radius"] > 0
    assert est["not_identifiable"] == NOT_IDENTIFIABLE and est["given_age"] is None
    assert "dw" not in e and "rho" not in e and "t_end" not in e
    # a hotter posterior is wider
    wide = estimate(m, scores, temperature=10)["estimates"]["rho_t"]["interval"]
    narrow = estimate(m, scores, temperature=0.01)["estimates"]["rho_t"]["interval"]
    assert wide[1] - wide[0] >= narrow[1] - narrow[0]


def test_age_gives_rho_and_dw():
    m = _matches()
    scores = np.full(len(m), 1.5)
    est = estimate(m, scores, age_days=200, prior_ranges={"rho": (0.001, 0.2), "dw": (0.02, 1.5)})
    g = est["given_age"]
    rho = m.rho_t / 200
    assert g["rho"]["mean"] == pytest.approx(rho.mean())
    assert g["dw"]["mean"] == pytest.approx((m.dw_over_rho * rho).mean())
    old = estimate(m, scores, age_days=1e6, prior_ranges={"rho": (0.001, 0.2)})
    assert any("implausible" in w for w in old["given_age"]["warnings"])
    for bad in (0, -3, float("nan")):
        with pytest.raises(GliomatchError, match="age-days"):
            estimate(m, scores, age_days=bad)


def test_estimate_refuses_mismatched_scores():
    with pytest.raises(GliomatchError, match="one score per match"):
        estimate(_matches(5), [1.0, 0.9])
