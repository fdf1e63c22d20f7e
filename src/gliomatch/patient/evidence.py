"""Which plan the benchmarks support, for a database of a given size.

``infer`` makes both CTVs, but it must not present the personalized one as the better plan
unless a benchmark outside the model's own world shows it at least matching the standard
margin. The figures are kept here, each with its benchmark, database size, patients and date,
and every ``infer`` result states them (``matches.json``, the report, the CLI):

* ``CIRCULAR``: ``gliomatch bench plans`` (the patient is the database model's own tumor in the
  atlas anatomy, its recurrence the same simulation grown on: the best case);
* ``STRESS``: ``gliomatch bench stress`` with every factor (another anatomy through
  registration, another grey/white ratio, imaging thresholds and noise, resection and cell
  kill before regrowth).

The rule: the personalized CTV is supported for a database of ``n`` tumors only when a stress
benchmark of at least ``MIN_PATIENTS`` patients, on a database of at most ``n`` tumors on the
same grid (``grid``: voxels per side; a coarser grid matches less finely), shows
the mean coverage of the enhancing recurrence by *that kind* of personalized CTV (``PLAN_KINDS``:
the one ``infer`` made — refined best fit by default, refined ensemble with ``--ensemble``,
atlas-only with ``--no-refine``) at least equal to the standard CTV's; otherwise the standard
CTV is. A smaller run is stated, and decides nothing.
A new figure enters here with the command that produced it (docs/results.md).
"""

from __future__ import annotations

__all__ = ["CIRCULAR", "MIN_PATIENTS", "PLAN_KINDS", "STRESS", "plan_evidence"]

#: The kinds of personalized CTV, as the benchmarks name them.
PLAN_KINDS = {
    "best": "best-match CTV (atlas-only)",
    "ensemble": "ensemble CTV (atlas-only)",
    "refined": "refined CTV (best fit in the patient's anatomy)",
    "refined_ensemble": "refined ensemble CTV",
}

#: Patients (every factor) a stress figure needs before it can decide the supported plan.
MIN_PATIENTS = 100

#: bench plans, 200 synthetic patients at 1.5 mm (docs/methods.md, "Synthetic plan
#: benchmark"); the atlas-only ensemble CTV (no registration: nothing to refine). A database on
#: a coarser grid is searched by resampling the same patients (the demo's design study).
CIRCULAR = (
    {"n_db": 1_000, "grid": 128, "diff": -1.8, "se": 1.0, "patients": 200, "date": "2026-11"},
    {"n_db": 5_000, "grid": 128, "diff": 4.7, "se": 0.4, "patients": 200, "date": "2026-11"},
    {"n_db": 50_000, "grid": 128, "diff": 5.5, "se": 0.4, "patients": 200, "date": "2026-11"},
    # the demo database's design (docs/methods.md, "The demo's database, chosen by measurement")
    {"n_db": 10_000, "grid": 64, "diff": 3.2, "se": 0.4, "patients": 200, "date": "2026-12-02"},
)  # fmt: skip
#: bench stress, setting "all" (every factor); a kind of personalized CTV − standard, enhancing
#: recurrence, points ± s.e., over the patients with an enhancing recurrence (docs/methods.md,
#: "Outside the model's own world"). Preliminary runs (fewer than MIN_PATIENTS) are stated.
STRESS: tuple = (
    {"plan": "ensemble", "n_db": 5_000, "grid": 128, "diff": 3.4, "se": 2.0, "patients": 8,
     "date": "2026-12-02"},
    # 50,000 tumors, --combined 100: 100 kept patients, 62 of them with an enhancing
    # recurrence (docs/data/stress-50k: the per-patient records; resumable)
    {"plan": "best", "n_db": 50_000, "grid": 128, "diff": -0.1, "se": 1.4, "patients": 62,
     "date": "2026-12-02"},
    {"plan": "ensemble", "n_db": 50_000, "grid": 128, "diff": 1.0, "se": 1.5, "patients": 62,
     "date": "2026-12-02"},
    {"plan": "refined", "n_db": 50_000, "grid": 128, "diff": 3.6, "se": 0.8, "patients": 62,
     "date": "2026-12-02"},
    {"plan": "refined_ensemble", "n_db": 50_000, "grid": 128, "diff": 3.7, "se": 0.8,
     "patients": 62, "date": "2026-12-02"},
)  # fmt: skip


def _at_most(entries, n: int, grid: int):
    fit = [e for e in entries if e["n_db"] <= n and e["grid"] == grid]
    return max(fit, key=lambda e: e["n_db"]) if fit else None


def _fmt(e) -> str:
    points = f"{e['diff']:+.1f} ± {e['se']:.1f} points"
    where = "" if e["grid"] == 128 else f" on a {e['grid']}³ grid"
    return f"{points} at {e['n_db']:,} tumors{where} ({e['patients']} patients)"


def plan_evidence(n_db: int, plan: str = "refined", grid: int = 128) -> dict:
    """The plan the benchmarks support for a database of ``n_db`` tumors on a ``grid``^3 atlas
    grid when the personalized CTV is of kind ``plan`` (``PLAN_KINDS``), why, and the figures
    (that CTV − the standard CTV, mean coverage of the enhancing recurrence)."""
    if plan not in PLAN_KINDS:
        raise ValueError(f"unknown plan kind {plan!r}; one of {', '.join(PLAN_KINDS)}")
    circ = _at_most(CIRCULAR, n_db, grid)
    stress = _at_most([e for e in STRESS if e["plan"] == plan], n_db, grid)
    decisive = stress is not None and stress["patients"] >= MIN_PATIENTS
    supported = "personalized" if decisive and stress["diff"] >= 0 else "standard"
    if stress is None:
        on = "" if grid == 128 else f" on a {grid}³ grid"
        why = f"no run of this CTV yet with {n_db:,} tumors or fewer{on}"
    else:
        why = _fmt(stress)
        if not decisive:
            why += f"; fewer than {MIN_PATIENTS} patients, so not yet decisive"
    largest = max(CIRCULAR, key=lambda e: e["n_db"])
    own = [_fmt(circ)] if circ is not None else ["no run at this size or smaller"]
    if circ is not largest:
        own.append(f"the largest run: {_fmt(largest)}")
    text = (
        f"Plan the benchmarks support for this {n_db:,}-tumor database: the {supported} CTV. "
        f"Coverage of the enhancing recurrence, {PLAN_KINDS[plan]} − standard CTV: outside the "
        f"model's own world (bench stress, every factor): {why}; ensemble CTV (atlas-only) − "
        f"standard CTV in the model's own world (bench plans, the best case): "
        f"{'; '.join(dict.fromkeys(own))}."
    )
    return {
        "supported_plan": supported,
        "personalized_plan": plan,
        "text": text,
        "stress": stress,
        "circular": circ,
        "rule": f"personalized only when a stress benchmark of at least {MIN_PATIENTS} "
        "patients at this database size or smaller shows it at least matching the standard CTV",
    }
