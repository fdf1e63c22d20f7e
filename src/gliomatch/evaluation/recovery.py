"""Parameter recovery on synthetic queries: identifiable quantities, raw ones, and the
coverage of the posterior intervals (:mod:`gliomatch.patient.estimates`).

For each held-out tumor the truth is known. The best match and the top-k median estimate
every quantity; the posterior (weights over the exact top ``POSTERIOR_K``) gives the 90 %
intervals whose coverage, the fraction of queries whose true value falls inside, is reported
at the shipped temperature and, to show how it was chosen, at a few others.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from gliomatch.patient.estimates import IDENTIFIABLE, TEMPERATURE, estimate

__all__ = ["COVERAGE_TEMPERATURES", "RAW", "recovery"]

#: The parameters each simulation was run with (not identifiable from one scan).
RAW = ("dw", "rho", "t_end")
SEED = ("x_mm", "y_mm", "z_mm")
#: Temperatures at which the interval coverage is also reported (the calibration sweep).
COVERAGE_TEMPERATURES = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5)


def _errors(rec: pd.DataFrame, p: str, est: str) -> dict:
    e = rec[f"{p}_{est}"] - rec[f"{p}_true"]
    corr = (
        float(np.corrcoef(rec[f"{p}_{est}"], rec[f"{p}_true"])[0, 1])
        if len(rec) > 2
        else float("nan")
    )
    return {"mae": float(e.abs().mean()), "median_abs": float(e.abs().median()), "corr": corr}


def _coverage(est: dict, truth: dict) -> dict:
    out = {}
    for col in IDENTIFIABLE:
        lo, hi = est["estimates"][col]["interval"]
        out[col] = bool(lo <= truth[col] <= hi)
    s = est["estimates"]["seed_mm"]
    d = np.linalg.norm(np.asarray(s["mean"]) - np.asarray([truth[a] for a in SEED]))
    out["seed_mm"] = bool(d <= s["radius"])
    return out


def recovery(queries, truth_rows: dict, params: pd.DataFrame, k: int) -> dict:
    """``{"rows", "errors", "coverage", "coverage_sweep", ...}`` over the synthetic queries.

    ``truth_rows[qid]`` holds the exact ranking's ``top`` ids and ``scores`` (at least
    ``POSTERIOR_K`` of them when the database has that many)."""
    rows, covers, sweep = [], [], {t: [] for t in COVERAGE_TEMPERATURES}
    widths = {c: [] for c in IDENTIFIABLE} | {"seed_mm": []}
    for q in queries:
        if q.truth is None:
            continue
        top = np.asarray(truth_rows[q.qid]["top"])
        scores = np.asarray(truth_rows[q.qid]["scores"])
        matches = params.iloc[top].reset_index(drop=True)
        post = estimate(matches, scores)
        row = {"qid": q.qid}
        for p in (*RAW, *SEED, *IDENTIFIABLE):
            row[f"{p}_true"] = q.truth[p]
            row[f"{p}_best"] = float(matches[p].iloc[0])
            row[f"{p}_topk_median"] = float(matches[p].iloc[:k].median())
        for col in IDENTIFIABLE:
            e = post["estimates"][col]
            row[f"{col}_posterior_median"] = e["median"]
            row[f"{col}_lo"], row[f"{col}_hi"] = e["interval"]
            widths[col].append(e["interval"][1] - e["interval"][0])
        widths["seed_mm"].append(post["estimates"]["seed_mm"]["radius"])
        c = _coverage(post, q.truth)
        row.update({f"{key}_covered": v for key, v in c.items()})
        covers.append(c)
        for t in COVERAGE_TEMPERATURES:
            sweep[t].append(_coverage(estimate(matches, scores, temperature=t), q.truth))
        rows.append(row)
    if not rows:
        return {"rows": [], "errors": {}, "coverage": {}, "coverage_sweep": {}}
    rec = pd.DataFrame(rows)
    errors = {}
    for p in (*RAW, *SEED, *IDENTIFIABLE):
        for est in ("best", "topk_median"):
            errors[f"{p}_{est}"] = _errors(rec, p, est)
    for col in IDENTIFIABLE:
        errors[f"{col}_posterior_median"] = _errors(rec, col, "posterior_median")
    pos = np.sqrt(sum((rec[f"{a}_best"] - rec[f"{a}_true"]) ** 2 for a in SEED))
    errors["seed_distance_mm_best"] = {"mean": float(pos.mean()), "median": float(pos.median())}

    def rate(cs):
        return {key: float(np.mean([c[key] for c in cs])) for key in cs[0]}

    return {
        "rows": rows,
        "errors": errors,
        "coverage": {
            "temperature": TEMPERATURE,
            "level": post["level"],
            "posterior_k": post["posterior_k"],
            "n": len(rows),
            **rate(covers),
            "median_width": {key: float(np.median(v)) for key, v in widths.items()},
        },
        "coverage_sweep": {str(t): rate(cs) for t, cs in sweep.items()},
    }
