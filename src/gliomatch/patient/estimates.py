"""What one scan can tell: the identifiable parameters with a calibrated posterior summary.

With t' = rho t the model reads du/dt' = div((D/rho) grad u) + u(1 - u): a tumor's shape fixes
at most the seed, the ratio D_w/rho (reported as the infiltration length sqrt(D_w/rho), mm) and
the stage rho*T (dimensionless). D_w, rho and T_end are not determined separately by one scan;
they are given here only conditional on a tumor age the user supplies (``--age-days``), or by
two scans (:mod:`gliomatch.patient.twoscan`).

The posterior. The database is a sample of the prior (rejection sampling from the published
ranges), so weighting its best matches by a pseudo-likelihood turns them into a posterior
sample (approximate Bayesian computation). Match i of the top ``POSTERIOR_K`` gets the weight

    w_i  ∝  exp((s_i - s_1) / TEMPERATURE),   s = Dice_T1Gd + Dice_FLAIR at full resolution,

and every summary (mean, median, 90 % interval = weighted 5th-95th percentiles; for the seed a
radius around the weighted mean holding 90 % of the weight) is taken over those weights.

Calibration. Weighted percentiles of a finite, discrete neighbourhood are not calibrated by
themselves (how close the neighbours are depends on the database's size), so each database is
calibrated once (``gliomatch db calibrate``) by conformalized quantile regression (Romano et al.
2019) on held-out synthetic tumors: for each quantity the margin c is the
ceil((n+1)·0.9)/n empirical quantile of max(log lo - log y, log y - log hi) (in log space, the
quantities being positive), and the reported interval is [lo·e^-c, hi·e^c]; for the seed, the
radius grows (or shrinks) by the same quantile of (distance - radius) in mm. With the
calibration set exchangeable with the patients (same database, same prior), the intervals
cover with probability >= 90 %; ``gliomatch evaluate`` measures the coverage on other
held-out tumors. Without a calibration file the raw intervals are reported and marked
uncalibrated.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from gliomatch.database.sampling import NOT_IDENTIFIABLE
from gliomatch.errors import GliomatchError
from gliomatch.files import write_text_atomic
from gliomatch.masks import dice
from gliomatch.patient.inputs import positive_days
from gliomatch.search.base import Query

__all__ = [
    "CALIBRATION_FILE",
    "QUANTITIES",
    "NOT_IDENTIFIABLE",
    "POSTERIOR_K",
    "TEMPERATURE",
    "conformal_margins",
    "UNITS",
    "ensemble_density",
    "estimate",
    "full_resolution_scores",
    "load_calibration",
    "nonconformity",
    "parameter_summary",
    "prior_ranges",
    "save_calibration",
    "posterior_weights",
    "weighted_quantile",
]

#: Pseudo-likelihood temperature, in units of the combined Dice score (0..2); see the notes.
TEMPERATURE = 0.1
#: Matches the posterior is taken over (the search returns at least this many).
POSTERIOR_K = 100
#: Central interval level reported.
LEVEL = 0.9

#: The quantities one scan determines (``database.sampling.IDENTIFIABLE``): column -> (label,
#: unit), in the order they are reported.
QUANTITIES = {
    "infiltration_mm": ("sqrt(D_w/rho)", "mm"),
    "rho_t": ("rho*T", "1"),
    "dw_over_rho": ("D_w/rho", "mm^2"),
}
SEED = ("x_mm", "y_mm", "z_mm")


def posterior_weights(scores, temperature: float = TEMPERATURE) -> np.ndarray:
    """Normalized weights exp((s_i - max s) / temperature) of combined Dice scores."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1 or len(s) == 0 or not np.all(np.isfinite(s)):
        raise GliomatchError("posterior: need a non-empty vector of finite scores")
    if not (temperature > 0 and np.isfinite(temperature)):
        raise GliomatchError(f"posterior temperature must be > 0, got {temperature!r}")
    w = np.exp((s - s.max()) / temperature)
    return w / w.sum()


#: Ensemble members lighter than this fraction of the best match's weight are left out (their
#: total weight is reported; at most 100 x 1e-4 = 1 % of the best's).
ENSEMBLE_MIN_WEIGHT = 1e-4


def ensemble_density(db, ids, scores, temperature: float = TEMPERATURE) -> tuple:
    """The posterior mean density: sum_i w_i u_i over the matches ``ids`` with the posterior
    weights of their full-resolution ``scores`` (module notes). Returns ``(density, info)``,
    ``info`` stating the weighting, the members used and the weight left out."""
    ids = np.asarray(ids, dtype=np.int64)
    w = posterior_weights(scores, temperature)
    if len(w) != len(ids):
        raise GliomatchError(f"ensemble: {len(ids)} matches but {len(w)} scores")
    keep = w >= ENSEMBLE_MIN_WEIGHT * w.max()
    acc = None
    for i, wi in zip(ids[keep], w[keep], strict=True):
        u = db.density(int(i))
        acc = wi * u.astype(np.float64) if acc is None else acc + wi * u
    acc /= w[keep].sum()
    info = {
        "weighting": f"w_i ∝ exp((s_i - s_1) / {temperature:g}), s = Dice_T1Gd + Dice_FLAIR",
        "temperature": temperature,
        "matches": int(len(ids)),
        "members": int(keep.sum()),
        "weight_left_out": float(w[~keep].sum()),
        "effective_members": float(1.0 / np.sum(w**2)),
    }
    return acc.astype(np.float32), info


def weighted_quantile(values, weights, q: float) -> float:
    """The smallest value whose cumulative weight reaches ``q`` (an order statistic, so a
    weight concentrated on one match gives that match's value for every ``q``)."""
    v = np.asarray(values, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    order = np.argsort(v, kind="stable")
    c = np.cumsum(w[order])
    i = int(np.searchsorted(c, q * c[-1] - 1e-12 * c[-1]))
    return float(v[order][min(i, len(v) - 1)])


def _summary(values: np.ndarray, w: np.ndarray, level: float) -> dict:
    a = (1 - level) / 2
    mean = float(np.sum(w * values))
    return {
        "best": float(values[0]),
        "mean": mean,
        "median": weighted_quantile(values, w, 0.5),
        "std": float(np.sqrt(np.sum(w * (values - mean) ** 2))),
        "interval": [weighted_quantile(values, w, a), weighted_quantile(values, w, 1 - a)],
    }


def estimate(
    params: pd.DataFrame,
    scores,
    *,
    temperature: float = TEMPERATURE,
    level: float = LEVEL,
    age_days: float | None = None,
    prior_ranges: dict | None = None,
    calibration: dict | None = None,
) -> dict:
    """Posterior summary of the identifiable parameters over ranked matches.

    ``params`` holds the matches' database rows in rank order (columns ``x_mm, y_mm, z_mm,
    infiltration_mm, rho_t, dw_over_rho``); ``scores`` their full-resolution combined Dice.
    With ``age_days`` (the tumor's age T_end, days) rho = rho*T / age and D_w = (D_w/rho) * rho
    are added, each with its interval; ``prior_ranges`` (``{"rho": (lo, hi), "dw": ...}``)
    flags estimates outside the database's ranges; ``calibration`` (see
    :func:`load_calibration`) widens or narrows the intervals to their calibrated coverage.
    """
    if len(params) != len(np.asarray(scores)):
        raise GliomatchError("posterior: one score per match needed")
    if not 0 < level < 1:
        raise GliomatchError(f"interval level must lie in (0, 1), got {level!r}")
    w = posterior_weights(scores, temperature)
    out = {
        "weighting": (
            "w_i ∝ exp((s_i - s_1) / T) over the top-K matches, s = Dice_T1Gd + Dice_FLAIR "
            "(full resolution); intervals are weighted percentiles"
        ),
        "temperature": float(temperature),
        "posterior_k": int(len(w)),
        "effective_matches": float(1.0 / np.sum(w**2)),
        "level": float(level),
    }
    est = {}
    for col, (label, unit) in QUANTITIES.items():
        est[col] = {"label": label, "unit": unit, **_summary(params[col].to_numpy(float), w, level)}
    xyz = params[list(SEED)].to_numpy(float)
    centre = (w[:, None] * xyz).sum(0)
    dist = np.linalg.norm(xyz - centre, axis=1)
    est["seed_mm"] = {
        "label": "seed (atlas space)",
        "unit": "mm",
        "best": xyz[0].tolist(),
        "mean": centre.tolist(),
        "interval": [_summary(xyz[:, a], w, level)["interval"] for a in range(3)],
        "radius": weighted_quantile(dist, w, level),
    }
    if calibration is not None:
        for col in QUANTITIES:
            c = calibration["log_margin"][col]
            lo, hi = est[col]["interval"]
            est[col]["raw_interval"] = [lo, hi]
            est[col]["interval"] = [lo * math.exp(-c), hi * math.exp(c)]
        r = est["seed_mm"]["radius"]
        est["seed_mm"]["raw_radius"] = r
        est["seed_mm"]["radius"] = max(0.0, r + calibration["seed_margin_mm"])
    out["calibrated"] = calibration is not None
    out["calibration"] = (
        {k: calibration.get(k) for k in ("queries", "raw_coverage", "created")}
        if calibration is not None
        else "not calibrated for this database (run `gliomatch db calibrate DB`): the "
        "intervals are the raw weighted percentiles, which undercover on small databases"
    )
    out["estimates"] = est
    out["not_identifiable"] = NOT_IDENTIFIABLE
    out["given_age"] = None
    if age_days is not None:
        age_days = positive_days(age_days, "age_days")
        rho = params["rho_t"].to_numpy(float) / age_days
        dw = params["dw_over_rho"].to_numpy(float) * rho
        given = {
            "age_days": float(age_days),
            "note": "conditional on the given tumor age: rho = rho*T / age, D_w = (D_w/rho)*rho",
            "rho": {"unit": "1/day", **_summary(rho, w, level)},
            "dw": {"unit": "mm^2/day", **_summary(dw, w, level)},
        }
        # rho's interval is rho*T's over the age; D_w's takes both margins (conservative)
        given["rho"]["interval"] = [v / age_days for v in est["rho_t"]["interval"]]
        if calibration is not None:
            c = calibration["log_margin"]["rho_t"] + calibration["log_margin"]["dw_over_rho"]
            lo, hi = given["dw"]["interval"]
            given["dw"]["interval"] = [lo * math.exp(-c), hi * math.exp(c)]
        outside = []
        for p in ("rho", "dw"):
            if prior_ranges and p in prior_ranges:
                lo, hi = prior_ranges[p]
                m = given[p]["median"]
                if not lo <= m <= hi:
                    outside.append(f"{p} = {m:.4g} outside the database's range [{lo:g}, {hi:g}]")
        given["warnings"] = [
            f"{x}: the given age is implausible for this tumor's stage" for x in outside
        ]
        out["given_age"] = given
    return out


# ---- calibration (conformalized quantile regression on held-out synthetic tumors)

#: Where a database's calibration lives (beside its manifest).
CALIBRATION_FILE = "calibration.json"


def nonconformity(est: dict, truth: dict) -> dict:
    """How far the truth lies outside each raw interval: max(log lo - log y, log y - log hi)
    for the positive quantities, distance - radius (mm) for the seed (negative: inside)."""
    out = {}
    for col in QUANTITIES:
        e = est["estimates"][col]
        lo, hi = e.get("raw_interval", e["interval"])
        y = float(truth[col])
        out[col] = max(math.log(lo) - math.log(y), math.log(y) - math.log(hi))
    s = est["estimates"]["seed_mm"]
    d = float(np.linalg.norm(np.asarray(s["mean"]) - np.asarray([truth[a] for a in SEED])))
    out["seed_mm"] = d - s.get("raw_radius", s["radius"])
    return out


def conformal_margins(scores: list[dict], level: float = LEVEL) -> dict:
    """The split-conformal margins: for each quantity the ceil((n+1)·level)/n empirical
    quantile of its nonconformity scores (see :func:`nonconformity`)."""
    n = len(scores)
    if n < 20:
        raise GliomatchError(f"calibration needs at least 20 held-out tumors, got {n}")
    q = min(1.0, math.ceil((n + 1) * level) / n)

    def margin(key):
        return float(np.quantile([s[key] for s in scores], q, method="higher"))

    return {
        "log_margin": {col: margin(col) for col in QUANTITIES},
        "seed_margin_mm": margin("seed_mm"),
    }


def _calibration_key() -> dict:
    return {"temperature": TEMPERATURE, "posterior_k": POSTERIOR_K, "level": LEVEL}


def save_calibration(folder, fingerprint: str, margins: dict, **info) -> Path:
    """Write ``calibration.json`` into the database folder (atomically)."""
    path = Path(folder) / CALIBRATION_FILE
    record = {"db": fingerprint, **_calibration_key(), **margins, **info}
    write_text_atomic(path, json.dumps(record, indent=2))
    return path


def load_calibration(folder, fingerprint: str) -> tuple[dict | None, str | None]:
    """``(calibration, None)`` for a valid file made for this database and these posterior
    settings; ``(None, why)`` when it is missing, stale or malformed (never an exception: the
    raw intervals are then reported, marked uncalibrated)."""
    path = Path(folder) / CALIBRATION_FILE
    if not path.is_file():
        return None, None
    try:
        rec = json.loads(path.read_text())
        margins = [float(rec["log_margin"][c]) for c in QUANTITIES]
        margins.append(float(rec["seed_margin_mm"]))
        ok = all(math.isfinite(m) and abs(m) < 1e3 for m in margins)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return None, f"{path}: unreadable ({type(exc).__name__}); intervals left uncalibrated"
    if not ok:
        return None, f"{path}: margins out of range; intervals left uncalibrated"
    if rec.get("db") != fingerprint:
        return None, f"{path}: made for another database; run `gliomatch db calibrate` again"
    if any(rec.get(k) != v for k, v in _calibration_key().items()):
        return None, f"{path}: made with other posterior settings; run `gliomatch db calibrate`"
    return rec, None


#: Units of the quantities summarized over the top k (``parameters.json``).
UNITS = {
    "x_mm": "mm",
    "y_mm": "mm",
    "z_mm": "mm",
    "infiltration_mm": "mm",
    "dw_over_rho": "mm^2",
    "rho_t": "1",
}


def full_resolution_scores(db, query: Query, strat, scores, ids) -> np.ndarray:
    """Dice_T1Gd + Dice_FLAIR at full resolution of each match: the posterior's scores. The
    exact searches return them already; other strategies' matches are re-scored from the
    stored masks."""
    if strat.exact_scores and strat.w_t1gd == 1 and strat.w_flair == 1:
        return np.asarray(scores, dtype=np.float64)
    out = []
    for i in ids:
        mf, mt = db.masks(int(i))
        out.append(dice(mt, query.t1gd) + dice(mf, query.flair))
    return np.asarray(out)


def prior_ranges(db) -> dict:
    """The database's sampling ranges of D_w and rho (to flag an implausible given age)."""
    sampling = db.build_config.sampling
    return {"dw": tuple(sampling.dw), "rho": tuple(sampling.rho)}


def parameter_summary(
    db, query: Query, strat, scores, ids, matches: list[dict], *, age_days=None, full_scores=None
) -> dict:
    """``parameters.json``: the posterior summary of what one scan determines (seed,
    sqrt(D_w/rho), rho*T; :mod:`gliomatch.patient.estimates`) over the search's matches, the
    spread of those quantities over the top-k shown, and D_w, rho, T_end only given an age.
    ``full_scores``: the matches' full-resolution scores, when already computed."""
    calibration, why = load_calibration(db.path, db.fingerprint)
    if full_scores is None:
        full_scores = full_resolution_scores(db, query, strat, scores, ids)
    post = estimate(
        db.params.iloc[np.asarray(ids, dtype=np.int64)].reset_index(drop=True),
        full_scores,
        age_days=age_days,
        prior_ranges=prior_ranges(db),
        calibration=calibration,
    )
    if why:
        post["calibration"] = why
    spread = {}
    for group in ("seed_mm", "identifiable"):
        for p in matches[0][group]:
            vals = np.array([m[group][p] for m in matches])
            spread[p] = {
                "best": float(vals[0]),
                "mean": float(vals.mean()),
                "std": float(vals.std()),
                "min": float(vals.min()),
                "max": float(vals.max()),
                "unit": UNITS[p],
            }
    return {
        "best_id": matches[0]["id"],
        "top_k": len(matches),
        **post,
        "spread_over_top_k": spread,
    }
