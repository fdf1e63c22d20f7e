"""Synthetic benchmark of the radiotherapy plans (``gliomatch bench plans``).

A patient is a held-out tumor (the database's sampler with another seed, as in ``bench
two-scan``) scanned once, whose "recurrence" is the same hidden simulation ``interval`` days
later (uniform in 90-365 days; untreated growth), thresholded at the T1Gd level (0.6: the
enhancing recurrence) and at the FLAIR level (0.2: any tumor). From the first scan alone, in
atlas space (no registration: ``personalize(..., registration="none")``, the pipeline every
patient goes through), we build the standard CTV (core + 15 mm in the brain), and two
personalized CTVs of the same volume: from the best match's density and from the ensemble
(posterior mean) density of the top 100 matches (:func:`gliomatch.patient.estimates.
ensemble_density`). Each is scored by PREDICT-GBM's recurrence coverage; the "new enhancing"
column scores only the enhancing recurrence outside the first scan's core (the part a plan has
to predict).

What this is not: the recurrence is the model's own continued growth (the best case for any
model-based plan), without resection, treatment or registration error. A follow-up past the
database's size limit is skipped, so the fastest growers are under-represented.
"""

from __future__ import annotations

import time

import numpy as np

from gliomatch.errors import GliomatchError
from gliomatch.evaluation.twoscan import two_scan_patients
from gliomatch.patient.inputs import PatientInputs
from gliomatch.patient.pipeline import personalize, planned_density
from gliomatch.patient.plans import MARGIN_MM, TOP_V, recurrence_coverage
from gliomatch.progress import report
from gliomatch.search import get_strategy

__all__ = [
    "ALL_PLANS",
    "DENSITY_OF",
    "GTV_PLANS",
    "PLANS",
    "RECURRENCES",
    "REFINED_PLANS",
    "atlas_patient",
    "bench_plans",
    "database_labels",
    "paired_coverage",
    "plan_coverage",
]

PLANS = ("standard", "best", "ensemble")
#: The plans of the refinement in the patient's anatomy (``personalize(refine=True)``), scored
#: beside ``PLANS`` where a benchmark refines.
REFINED_PLANS = ("refined", "refined_ensemble")
#: Each personalized plan's density in a Personalization's images.
DENSITY_OF = {
    "best": "density_patient",
    "ensemble": "density_ensemble_patient",
    "refined": "density_refined_patient",
    "refined_ensemble": "density_refined_ensemble_patient",
}
#: The same personalized plans made by the shipped default rule (they contain the tumor core,
#: the GTV, then the highest density: ``contain="core"``), scored where a benchmark asks
#: (``plan_coverage(gtv=True)``) beside PREDICT-GBM's top-V plans.
GTV_PLANS = tuple(f"{p}_gtv" for p in (*PLANS[1:], *REFINED_PLANS))
#: Every plan a benchmark may score, in the order tables show them.
ALL_PLANS = (*PLANS, *REFINED_PLANS, *GTV_PLANS)
RECURRENCES = ("enhancing", "any", "new_enhancing")
#: Patients differ from ``bench two-scan``'s (another seed offset).
PLAN_SEED_OFFSET = 5_000_011


def _registration(db, ref) -> str:
    """How ``ref``'s patients reach ``db``'s atlas: ``"none"`` on the same grid,
    ``"resample"`` on another grid of the same atlas (its world frame); another atlas is
    refused (its patients live in another anatomy)."""
    a, b = db.atlas(), ref.atlas()
    if a.shape == b.shape and np.allclose(a.affine, b.affine, atol=1e-4):
        return "none"
    if a.source != b.source:
        raise GliomatchError(
            f"database {db.path} is in another atlas ({a.source}) than {ref.path} "
            f"({b.source}): the patients cannot be shared"
        )
    return "resample"


def database_labels(dbs) -> list[str]:
    """A name per database of a comparison: its size (``"50000"``), and its grid where the
    databases' grids differ (``"12000@64"``: 12,000 tumors at 64^3)."""
    grids = [db.atlas().shape[0] for db in dbs]
    one_grid = len(set(grids)) == 1
    labels = [
        str(len(db)) if one_grid else f"{len(db)}@{g}" for db, g in zip(dbs, grids, strict=True)
    ]
    if len(set(labels)) < len(labels):
        raise GliomatchError("two databases of the same size and grid: compare distinct ones")
    return labels


def atlas_patient(atlas, scan) -> PatientInputs:
    """A synthetic first scan as ``personalize`` reads a patient: on the atlas grid, the atlas
    T1 as its anatomy and the atlas brain as its brain (given, so the patient and its standard
    plan are the same whichever database it is searched in)."""
    return PatientInputs(
        atlas.to_nifti(atlas.t1.astype(np.float32)), "t1", scan.flair, scan.t1gd & scan.flair,
        "masks", brain=atlas.brain,
    )  # fmt: skip


def plan_coverage(result, recurrences: dict, *, gtv: bool = False) -> tuple[dict, int]:
    """Coverage of ``result``'s standard plan and of a plan of its volume from each density it
    holds (the best match's, the ensemble's with ``ensemble=True``, the refined ones with
    ``refine=True``: :data:`DENSITY_OF`) against every mask of ``recurrences``; ``gtv``: each
    also made by the default rule that contains the core (``<plan>_gtv``). Returns
    ``({"<plan>_<recurrence>": coverage}, V)``."""
    plans = {"standard": result.plans["standard"]}
    planned = planned_density(
        result.refinement is not None, "density_ensemble_patient" in result.images
    )
    for name, key in DENSITY_OF.items():
        if key == planned:  # the plan personalize made: not made again
            plans[name] = result.plans["personalized"]
        elif key in result.images:
            plans[name] = result.plans_from(result.images[key], name)["personalized"]
        if gtv and key in result.images:
            plans[f"{name}_gtv"] = result.plans_from(result.images[key], name,
                                                     contain="core")["personalized"]  # fmt: skip
    cov = {
        f"{name}_{r}": recurrence_coverage(mask, plan)
        for name, plan in plans.items()
        for r, mask in recurrences.items()
    }
    return cov, int(plans["standard"].sum())


def paired_coverage(rows, recurrence: str) -> dict:
    """Over ``rows`` (a table with ``<plan>_<recurrence>`` coverage columns, one row per
    patient): ``n``, each plan's mean coverage and, for the personalized plans, the paired
    difference to the standard plan (mean, s.e.; None for one patient) and the share of
    patients where it covers at least as much."""
    out = {"n": int(len(rows))}
    if not len(rows):
        return out
    present = [p for p in ALL_PLANS if f"{p}_{recurrence}" in rows]
    for plan in present:
        out[f"{plan}_mean"] = float(rows[f"{plan}_{recurrence}"].mean())
    for plan in present[1:]:
        d = rows[f"{plan}_{recurrence}"] - rows[f"standard_{recurrence}"]
        out[f"{plan}_minus_standard"] = float(d.mean())
        out[f"{plan}_minus_standard_se"] = (
            float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else None
        )
        out[f"{plan}_at_least_standard"] = float((d >= -1e-9).mean())
    return out


def bench_plans(
    dbs,
    *,
    patients: int = 200,
    seed: int = 0,
    margin_mm: float = MARGIN_MM,
    interval_range=(90.0, 365.0),
    progress=None,
) -> dict:
    """Coverage of the standard and personalized plans over ``patients`` synthetic patients,
    made from the first database's sampler and searched in every database of ``dbs``, so the
    databases can be compared on the same patients. A database on another grid of the same
    atlas (another resolution) is searched through ``registration="resample"``: the patient's
    masks resampled to its grid, its densities back to the patient's, where the plans are made
    and scored, as ``infer`` does with a registration."""
    if patients < 1:
        raise GliomatchError(f"patients must be >= 1, got {patients}")
    ref = dbs[0]
    how = [_registration(db, ref) for db in dbs]
    labels = database_labels(dbs)
    atlas = ref.atlas()  # the patients' grid
    voxel_cm3 = atlas.voxel_volume_cm3
    report(progress, 0, patients, "simulating patients")
    t = time.perf_counter()
    pats = two_scan_patients(
        ref, patients, seed=seed + PLAN_SEED_OFFSET, interval_range=interval_range
    )
    simulate_s = time.perf_counter() - t
    rows = []
    for db, registration, label in zip(dbs, how, labels, strict=True):
        get_strategy("exact", db).ensure_ready()  # the explicit build step personalize reads
        for j, p in enumerate(pats):
            core = p.first.t1gd
            if not core.any():
                continue  # no visible core: no standard plan (counted below)
            res = personalize(
                atlas_patient(atlas, p.first), db, registration=registration, ensemble=True,
                refine=False, margin_mm=margin_mm, contain=TOP_V,
            )  # fmt: skip
            rec = {
                "enhancing": p.followup.t1gd,
                "any": p.followup.flair,
                "new_enhancing": p.followup.t1gd & ~core,
            }
            cov, n = plan_coverage(res, rec)
            row = {
                "database": label,
                "n_db": len(db),
                "patient": j,
                "interval_days": p.interval_days,
                "plan_cm3": n * voxel_cm3,
                "best_score": float(res.scores[0]),
                "recurrence_cm3": float(rec["enhancing"].sum() * voxel_cm3),
                **cov,
            }
            rows.append(row)
            report(progress, j + 1, len(pats), f"plans ({label})")
    summary = {}
    for db, label in zip(dbs, labels, strict=True):
        sub = [r for r in rows if r["database"] == label]
        s = {
            "patients": len(sub),
            "n_db": len(db),
            "resolution": db.atlas().shape[0],
            "build_seconds": _build_seconds(db),
        }
        for r in RECURRENCES:
            for name in PLANS:
                s[f"{name}_{r}"] = float(np.mean([x[f"{name}_{r}"] for x in sub]))
            for name in PLANS[1:]:
                d = np.array([x[f"{name}_{r}"] - x[f"standard_{r}"] for x in sub])
                s[f"{name}_minus_standard_{r}"] = float(d.mean())
                s[f"{name}_minus_standard_{r}_se"] = float(d.std(ddof=1) / np.sqrt(len(d)))
                s[f"{name}_at_least_standard_{r}"] = float(np.mean(d >= 0))
        s["median_plan_cm3"] = float(np.median([x["plan_cm3"] for x in sub]))
        summary[label] = s
    return {
        "patients": len(pats),
        "margin_mm": margin_mm,
        "interval_range_days": list(interval_range),
        "simulate_s": simulate_s,
        "databases": [str(db.path) for db in dbs],
        "summary": summary,
        "rows": rows,
    }


def _build_seconds(db) -> float | None:
    """The database's recorded build time (None when the manifest has none)."""
    try:
        return db.build_seconds
    except (KeyError, TypeError, ValueError):
        return None
