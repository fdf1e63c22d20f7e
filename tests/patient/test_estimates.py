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
        with pytest.raises(GliomatchError, match="age_days"):
            estimate(m, scores, age_days=bad)


def test_estimate_refuses_mismatched_scores():
    with pytest.raises(GliomatchError, match="one score per match"):
        estimate(_matches(5), [1.0, 0.9])


def test_conformal_margins_reach_the_level():
    from gliomatch.patient.estimates import conformal_margins, nonconformity

    rng = np.random.default_rng(1)
    m = _matches(30)
    scores = np.linspace(1.6, 1.2, len(m))
    est = estimate(m, scores)
    # truths scattered around the posterior: the raw interval covers only some of them
    truths = []
    for _ in range(200):
        t = {c: float(m[c].median() * np.exp(rng.normal(0, 0.8))) for c in m.columns}
        t.update({a: float(m[a].mean() + rng.normal(0, 6)) for a in ("x_mm", "y_mm", "z_mm")})
        truths.append(t)
    scores_nc = [nonconformity(est, t) for t in truths]
    cal = conformal_margins(scores_nc)
    est_c = estimate(m, scores, calibration=cal)
    assert est_c["calibrated"] and not est["calibrated"]
    for col in ("rho_t", "infiltration_mm"):
        lo, hi = est_c["estimates"][col]["interval"]
        assert est_c["estimates"][col]["raw_interval"] == est["estimates"][col]["interval"]
        covered = np.mean([lo <= t[col] <= hi for t in truths])
        assert 0.9 <= covered <= 0.93  # split conformal on the same set: >= level, tight
    r = est_c["estimates"]["seed_mm"]["radius"]
    centre = np.asarray(est_c["estimates"]["seed_mm"]["mean"])
    d = [np.linalg.norm(centre - [t["x_mm"], t["y_mm"], t["z_mm"]]) for t in truths]
    assert 0.9 <= np.mean(np.asarray(d) <= r) <= 0.93
    with pytest.raises(GliomatchError, match="at least 20"):
        conformal_margins(scores_nc[:5])


def test_calibration_file_is_checked(tmp_path):
    import json

    from gliomatch.patient.estimates import load_calibration, save_calibration

    margins = {
        "log_margin": {"infiltration_mm": 0.1, "rho_t": 0.2, "dw_over_rho": 0.2},
        "seed_margin_mm": 1.5,
    }
    assert load_calibration(tmp_path, "abc") == (None, None)  # none yet
    path = save_calibration(tmp_path, "abc", margins, queries=50)
    rec, why = load_calibration(tmp_path, "abc")
    assert why is None and rec["log_margin"]["rho_t"] == 0.2
    rec, why = load_calibration(tmp_path, "other")
    assert rec is None and "another database" in why
    bad = json.loads(path.read_text())
    bad["temperature"] = 123.0
    path.write_text(json.dumps(bad))
    assert "other posterior settings" in load_calibration(tmp_path, "abc")[1]
    bad["log_margin"]["rho_t"] = float("nan")
    path.write_text(json.dumps(bad).replace("NaN", "1e999"))
    assert "out of range" in load_calibration(tmp_path, "abc")[1]
    path.write_text("{not json")
    assert "unreadable" in load_calibration(tmp_path, "abc")[1]
