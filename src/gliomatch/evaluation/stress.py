"""Does the personalized plan hold outside the database's own world? (``gliomatch bench
stress``)

``bench plans`` is circular: its patient is a held-out tumor of the database's own model, in the
atlas' anatomy, seen without registration, segmentation error or treatment, and its recurrence
is the same simulation grown on. Here each synthetic patient departs from that world in named,
switchable factors, goes through the whole patient pipeline (:func:`~gliomatch.patient.
pipeline.personalize`: registration of a synthetic T1 included) and is planned and scored on
the patient's own grid, as ``infer`` plans a real patient.

A patient starts from a held-out draw of the database's prior (seed, D_w, rho, T: the
database's sampler with another seed, kept by its size filter in the atlas), then:

``anatomy``
    The patient's brain is not the atlas: the atlas (T1 and tissue maps) is deformed by a
    random smooth diffeomorphism (a stationary velocity field, Gaussian-smoothed white noise of
    correlation length ``sigma_mm``, exponentiated by scaling and squaring) scaled to an RMS
    displacement over the brain drawn in ``rms_mm`` (3-8 mm: the size of inter-subject
    differences left after an affine alignment). The truth is simulated in that anatomy, its
    seed the atlas seed's image.
``model``
    The truth's grey/white diffusivity ratio is drawn log-uniformly in ``ratio`` (5-100; the
    database's is 10).
``imaging``
    Visibility thresholds drawn in ``flair_level`` (0.1-0.3) and ``t1gd_level`` (0.5-0.7)
    instead of 0.2 / 0.6, smooth segmentation boundary noise (density noise of s.d.
    ``boundary_noise`` near the tumor), and a T1 with Gaussian noise, a smooth multiplicative
    bias field and another contrast (a gamma curve of the intensities).
``treatment``
    The recurrence is not untreated growth: the visible core and a rim drawn in ``rim_mm`` are
    resected (tissue removed: no cell enters the cavity), a surviving fraction drawn
    log-uniformly in ``survival`` is left of the remaining cells (a homogeneous cell kill:
    the linear-quadratic model at a uniform dose), and the residual regrows for the interval.

The interval to the recurrence is drawn in ``interval_days`` (90-365) in every setting. The
recurrence is what is visible then: enhancing (density >= the T1Gd level) and any (>= the FLAIR
level). Without ``anatomy`` the patient is the atlas anatomy, still registered. Every factor's
draws depend on the patient and the factor only, so a patient is the same in its single-factor
setting and in ``all``; every setting starts from the same prior draws (paired comparisons).

Plans: the standard CTV (core + 15 mm in the brain) and two personalized CTVs of its volume, from
the best match and from the ensemble (posterior mean of the top matches), scored by PREDICT-GBM's
recurrence coverage. Means of a recurrence kind are over the patients that have one (a patient
without an enhancing recurrence is counted, not averaged as 100 %). Results are cached per
patient, keyed by everything they depend on: an interrupted run resumes.

Not modelled: a second tumor model (a necrotic core as in TumorGrowthToolkit's FK_2c), brain
shift after resection, mass effect. State them with any figure.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

from gliomatch.database.trajectories import iter_held_out
from gliomatch.errors import GliomatchError, check_count
from gliomatch.evaluation.plans import ALL_PLANS, paired_coverage, plan_coverage
from gliomatch.files import (
    atomic_path,
    cache_key,
    cached_record,
    read_cached,
    write_text_atomic,
)
from gliomatch.masks import FLAIR_LEVEL, T1GD_LEVEL
from gliomatch.patient.inputs import PatientInputs
from gliomatch.patient.pipeline import personalize
from gliomatch.patient.plans import MARGIN_MM, TOP_V
from gliomatch.patient.refine import cache_tag
from gliomatch.progress import report
from gliomatch.search import get_strategy
from gliomatch.solver import get_model

__all__ = [
    "FACTORS",
    "SETTINGS",
    "StressConfig",
    "StressPatient",
    "bench_stress",
    "displacement_field",
    "patient_key",
    "prior_draws",
    "stress_patient",
    "summarize_stress",
]

FACTORS = ("anatomy", "model", "imaging", "treatment")
#: ``none``: the database's world, through the whole pipeline; each factor alone; all together.
SETTINGS = ("none", *FACTORS, "all")
#: Prior draws differ from the other benchmarks' (another seed offset).
STRESS_SEED_OFFSET = 7_000_019
#: Prior draws tried per wanted patient before giving up (most skipped ones outgrew the limit).
MAX_DRAWS_PER_PATIENT = 20
#: Bump when a patient's making changes: cached rows of another version are not reused.
STRESS_VERSION = 2  # 2: the refinement's plans beside the atlas-only ones


@dataclass(frozen=True)
class StressConfig:
    """The ranges the factors draw from (see the module notes)."""

    rms_mm: tuple[float, float] = (3.0, 8.0)
    sigma_mm: float = 15.0
    ratio: tuple[float, float] = (5.0, 100.0)
    flair_level: tuple[float, float] = (0.1, 0.3)
    t1gd_level: tuple[float, float] = (0.5, 0.7)
    boundary_noise: float = 0.04
    t1_noise: float = 0.03
    bias: float = 0.2
    gamma: tuple[float, float] = (0.7, 1.5)
    rim_mm: tuple[float, float] = (0.0, 5.0)
    survival: tuple[float, float] = (0.01, 0.3)
    interval_days: tuple[float, float] = (90.0, 365.0)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class StressPatient:
    """A stressed synthetic patient: its inputs (on its own grid), its hidden recurrence masks
    on that grid, and what was drawn."""

    inputs: PatientInputs
    recurrence: dict
    truth: dict = field(default_factory=dict)


def _factors(setting: str) -> frozenset:
    if setting == "all":
        return frozenset(FACTORS)
    if setting == "none":
        return frozenset()
    if setting not in FACTORS:
        raise GliomatchError(f"unknown stress setting {setting!r}; use {', '.join(SETTINGS)}")
    return frozenset([setting])


def _rng(seed: int, j: int, factor: str) -> np.random.Generator:
    """The draws of one factor for patient ``j``: the same whichever other factors are on."""
    return np.random.default_rng([seed, j, 1 + SETTINGS.index(factor)])


def _log_uniform(rng, lo_hi) -> float:
    lo, hi = lo_hi
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _compose(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a(x + b(x)) + b(x)`` for displacement fields (3, ...) in voxels."""
    grid = np.indices(a.shape[1:], dtype=np.float64) + b
    warped = np.stack([ndimage.map_coordinates(c, grid, order=1, mode="nearest") for c in a])
    return warped + b


def displacement_field(
    shape, spacing: float, rms_mm: float, rng, *, brain=None, sigma_mm: float = 15.0
) -> tuple[np.ndarray, dict]:
    """A random smooth diffeomorphic displacement (3, *shape) in voxels whose RMS over
    ``brain`` (default: everywhere) is ``rms_mm``: a stationary velocity field (smoothed white
    noise), exponentiated by scaling and squaring on a grid 4x coarser (the field is smooth at
    that scale), then upsampled. Returns the field and its figures (RMS, max, min Jacobian
    determinant: > 0 for a diffeomorphism)."""
    factor = 4
    coarse = tuple(max(4, math.ceil(s / factor)) for s in shape)
    sigma = sigma_mm / (spacing * factor)
    v = np.stack([ndimage.gaussian_filter(rng.normal(size=coarse), sigma) for _ in range(3)])
    steps = 6

    def exp(vel):
        d = vel / 2**steps
        for _ in range(steps):
            d = _compose(d, d)
        return d

    def full(d):
        zoom = [s / c for s, c in zip(shape, coarse, strict=True)]
        return np.stack(
            [ndimage.zoom(c * z, zoom, order=1, grid_mode=False)[tuple(slice(0, s) for s in shape)]
             for c, z in zip(d, zoom, strict=True)]
        )  # fmt: skip

    mask = np.ones(shape, bool) if brain is None else np.asarray(brain, bool)

    def rms(d):
        return float(np.sqrt(np.mean(np.sum(d**2, axis=0)[mask]))) * spacing

    d = full(exp(v))
    v *= rms_mm / max(rms(d), 1e-9)
    d = full(exp(v))
    grads = [np.gradient(d[i]) for i in range(3)]
    jac = np.empty((3, 3, *shape))
    for i in range(3):
        for k in range(3):
            jac[i, k] = grads[i][k] + (i == k)
    det = np.linalg.det(np.moveaxis(jac, (0, 1), (-2, -1)))
    figures = {
        "rms_mm": rms(d),
        "max_mm": float(np.sqrt(np.sum(d**2, axis=0)[mask]).max()) * spacing,
        "min_jacobian": float(det[mask].min()),
    }
    return d.astype(np.float32), figures


def _pull(arr: np.ndarray, disp: np.ndarray | None, order: int = 1) -> np.ndarray:
    """``arr`` seen through the patient-to-atlas displacement: patient(x) = arr(x + d(x))."""
    if disp is None:
        return np.asarray(arr)
    grid = np.indices(arr.shape, dtype=np.float32) + disp
    return ndimage.map_coordinates(arr, grid, order=order, mode="constant", cval=0.0)


def _patient_seed(frac, disp: np.ndarray | None, shape) -> np.ndarray:
    """The patient-space point that maps to the atlas seed (x + d(x) = s, fixed point)."""
    n = np.asarray(shape, dtype=np.float64) - 1
    s = np.asarray(frac, dtype=np.float64) * n
    if disp is None:
        return np.asarray(frac, dtype=np.float64)
    x = s.copy()
    for _ in range(30):
        d = np.array([ndimage.map_coordinates(c, x[:, None], order=1, mode="nearest")[0]
                      for c in disp])  # fmt: skip
        x = s - d
    return np.clip(x / n, 0.0, 1.0)


def _nearest_tissue(frac, tissue: np.ndarray) -> np.ndarray:
    """The seed moved to the nearest tissue voxel when the deformation left it outside."""
    n = np.asarray(tissue.shape) - 1
    v = np.round(np.asarray(frac) * n).astype(int)
    if tissue[tuple(v)]:
        return np.asarray(frac, dtype=np.float64)
    idx = np.argwhere(tissue)
    best = idx[np.argmin(((idx - v) ** 2).sum(axis=1))]
    return best / n


def stress_patient(
    atlas,
    row,
    j: int,
    setting: str,
    *,
    seed: int = 0,
    config: StressConfig | None = None,
    max_cm3: float = 300.0,
) -> StressPatient:
    """Patient ``j`` of ``setting`` from the prior draw ``row`` (x, y, z, dw, rho, t_end): its
    T1 and segmentation on the atlas grid (deformed by the anatomy factor), its hidden
    recurrence. Raises :class:`GliomatchError` when its first scan shows no tumor core (no
    standard plan) or when the tumor outgrows ``max_cm3`` (the database's largest whole
    tumor: a recurrence that fills the brain scores no plan) before the recurrence; the
    benchmark counts such a patient as skipped."""
    cfg = config or StressConfig()
    on = _factors(setting)
    shape, spacing = atlas.shape, atlas.spacing
    truth: dict = {"setting": setting, "patient": j}
    r_int = _rng(seed, j, "none")
    interval = float(r_int.uniform(*cfg.interval_days))
    truth["interval_days"] = interval

    disp = None
    if "anatomy" in on:
        r = _rng(seed, j, "anatomy")
        target = float(r.uniform(*cfg.rms_mm))
        disp, figs = displacement_field(
            shape, spacing, target, r, brain=atlas.brain, sigma_mm=cfg.sigma_mm
        )
        truth.update({f"anatomy_{k}": v for k, v in figs.items()})
    wm, gm, csf = (_pull(m, disp) for m in (atlas.wm, atlas.gm, atlas.csf))
    t1 = _pull(atlas.t1, disp)
    brain = (wm + gm + csf) >= 0.5
    tissue = (wm + gm) >= 0.5

    ratio = 10.0
    if "model" in on:
        ratio = _log_uniform(_rng(seed, j, "model"), cfg.ratio)
    truth["ratio"] = ratio
    model = get_model("fisher-kolmogorov", ratio=ratio)
    domain = model.domain(wm, gm, spacing, affine=atlas.affine)
    frac = _nearest_tissue(_patient_seed([row["x"], row["y"], row["z"]], disp, shape), tissue)
    dw, rho, t_first = float(row["dw"]), float(row["rho"]), float(row["t_end"])
    truth.update({"seed": frac.tolist(), "dw": dw, "rho": rho, "t_first_days": t_first})

    fl, tl = FLAIR_LEVEL, T1GD_LEVEL
    noise = np.zeros(shape, np.float32)
    r_img = _rng(seed, j, "imaging")
    if "imaging" in on:
        fl, tl = float(r_img.uniform(*cfg.flair_level)), float(r_img.uniform(*cfg.t1gd_level))
        noise = ndimage.gaussian_filter(r_img.normal(size=shape), 1.0)
        noise = (noise * cfg.boundary_noise / (noise.std() + 1e-12)).astype(np.float32)
    truth.update({"flair_level": fl, "t1gd_level": tl})

    treated = "treatment" in on
    times = [t_first] if treated else [t_first, t_first + interval]
    stop = {"stop_volume_cm3": max_cm3, "stop_threshold": fl}
    sim = model.simulate(domain, frac, dw=dw, rho=rho, times=times, **stop)
    if len(sim.densities) < len(times):
        raise GliomatchError(f"the tumor outgrew {max_cm3:g} cm^3 before the recurrence")
    u1 = sim.densities[0]
    seen = u1 + noise * (u1 > 0.05)
    flair = (seen >= fl) & brain
    core = (seen >= tl) & flair
    if not core.any():
        raise GliomatchError("no visible tumor core in the first scan (no standard plan)")

    if treated:
        r = _rng(seed, j, "treatment")
        rim, survival = float(r.uniform(*cfg.rim_mm)), _log_uniform(r, cfg.survival)
        cavity = ndimage.distance_transform_edt(~core, sampling=spacing) <= rim
        keep = ~cavity
        residual = np.where(keep, u1, 0.0).astype(np.float32) * survival
        post = model.domain(wm * keep, gm * keep, spacing, affine=atlas.affine)
        if not np.any(residual[post.tissue[1:-1, 1:-1, 1:-1]] > 1e-6):
            u2 = np.zeros(shape, np.float32)
        else:
            regrown = model.simulate(
                post, frac, dw=dw, rho=rho, times=[interval], u0=np.clip(residual, 0, 1), **stop
            ).densities
            if not regrown:
                raise GliomatchError(f"the recurrence outgrew {max_cm3:g} cm^3")
            u2 = regrown[0]
        truth.update(
            {
                "rim_mm": rim,
                "survival": survival,
                "cavity_cm3": float(cavity.sum()) * spacing**3 / 1e3,
            }
        )
    else:
        u2 = sim.densities[1]
    recurrence = {"enhancing": u2 >= tl, "any": u2 >= fl}

    # the T1 as a scanner would show it: tumor signal, then (imaging) bias, contrast, noise
    img = t1 * np.where(core, 0.55, np.where(flair, 0.85, 1.0))
    if "imaging" in on:
        gamma = float(r_img.uniform(*cfg.gamma))
        field_ = ndimage.gaussian_filter(r_img.normal(size=shape), 40.0 / spacing)
        field_ = cfg.bias * field_ / (np.abs(field_).max() + 1e-12)
        img = np.clip(img, 0, None) ** gamma * np.exp(field_)
        img = img + r_img.normal(scale=cfg.t1_noise, size=shape) * (img > 0)
        truth.update({"gamma": gamma})
    img = np.where(brain, np.clip(img, 0, None), 0.0).astype(np.float32) * 1000
    anatomy = atlas.to_nifti(img)
    anatomy.header.set_xyzt_units("mm")
    inputs = PatientInputs(anatomy, "t1", flair, core, "brats2021")
    vox = atlas.voxel_volume_cm3
    truth.update(
        {
            "flair_cm3": float(flair.sum() * vox),
            "core_cm3": float(core.sum() * vox),
            "recurrence_enhancing_cm3": float(recurrence["enhancing"].sum() * vox),
            "recurrence_any_cm3": float(recurrence["any"].sum() * vox),
        }
    )
    return StressPatient(inputs, recurrence, truth)


def _coverages(result, recurrence: dict) -> dict:
    cov, n = plan_coverage(result, recurrence)
    return {**cov, "plan_cm3": n * result.atlas.voxel_volume_cm3}


def bench_stress(
    db,
    out,
    *,
    settings=SETTINGS,
    patients: int = 50,
    combined: int = 100,
    seed: int = 0,
    registration: str = "syn",
    margin_mm: float = MARGIN_MM,
    refine: bool = True,
    cached_only: bool = False,
    config: StressConfig | None = None,
    progress=None,
    log=None,
) -> dict:
    """Run every setting of ``settings`` on ``patients`` stressed patients (``combined`` for
    ``all``), through :func:`personalize`; write ``rows.csv``, ``summary.json`` and
    ``stress.png`` into ``out`` and return the summary. Resumable (per-patient cache).
    ``refine``: score the refinement's plans (best fit and refined ensemble) beside the
    atlas-only ones. ``cached_only``: summarize the patients already computed (a run in
    progress or interrupted), each setting up to its first patient not yet computed; nothing
    new is computed, and the summary says ``partial``."""
    check_count(patients, "patients")
    check_count(combined, "combined")
    settings = list(dict.fromkeys(settings))
    for s in settings:
        _factors(s)
    cfg = config or StressConfig()
    out = Path(out)
    cache = out / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    atlas = db.atlas()
    get_strategy("exact", db).ensure_ready()  # the explicit build step personalize reads
    need = {s: combined if s == "all" else patients for s in settings}
    limit = MAX_DRAWS_PER_PATIENT * max(need.values())
    draws = prior_draws(db, limit, seed)
    prior_rows: list[dict] = []
    max_cm3 = db.build_config.size_filter.flair_max_cm3
    total, done = sum(need.values()), 0
    records, short = [], []  # short: settings with fewer patients than asked (cached_only)
    for setting in settings:
        counted, j = 0, 0
        while counted < need[setting]:
            while len(prior_rows) <= j:
                row = next(draws, None)
                if row is None:
                    raise GliomatchError(
                        f"stress {setting}: only {counted} of {need[setting]} patients after "
                        f"{j} prior draws (most outgrew {max_cm3:g} cm^3 before the recurrence)"
                    )
                prior_rows.append(row)
            prior = prior_rows[j]
            key = patient_key(db, setting, j, prior, seed=seed, config=cfg,
                              registration=registration, margin_mm=margin_mm,
                              refine=refine)  # fmt: skip
            path = cache / f"{setting}-{j:04d}-{key}.json"
            if cached_only:
                rec = read_cached(path)
                if rec is None:
                    break  # not computed yet: the setting is summarized as far as it got
            else:
                rec = cached_record(
                    path,
                    lambda p=prior, s=setting, i=j: _run_patient(
                        db, atlas, p, i, s, seed, cfg, registration, margin_mm, max_cm3, refine
                    ),
                )
            records.append(rec)
            j += 1
            if not rec["status"].startswith("skipped"):
                counted += 1
                done += 1
                report(progress, done, total, f"stress: {setting}")
            if log is not None:
                log(_line(rec))
        if counted < need[setting]:
            short.append(setting)
    table = pd.DataFrame.from_records(records)
    summary = summarize_stress(table)
    summary.update(
        {
            "database": str(db.path),
            "n_db": len(db),
            "registration": registration,
            "margin_mm": margin_mm,
            "refine": refine,
            "partial": sorted(short),
            "seed": seed,
            "config": cfg.to_dict(),
            "grid": f"the atlas grid, {atlas.shape[0]}^3 at {atlas.spacing:.2f} mm",
        }
    )
    with atomic_path(out / "rows.csv") as tmp:
        table.to_csv(tmp, index=False)
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2, default=float))
    _figure(table, out / "stress.png")
    return summary


def prior_draws(db, limit: int, seed: int = 0):
    """The stress benchmark's prior draws (one per distinct trajectory), in order: the j-th
    is patient j of every setting."""
    return _independent(iter_held_out(db, limit, seed_offset=STRESS_SEED_OFFSET + seed))


def patient_key(db, setting, j, prior, *, seed=0, config=None, registration="syn",
                margin_mm=MARGIN_MM, refine=True) -> str:  # fmt: skip
    """The cache key of one stressed patient: everything its record depends on (the
    database's fingerprint, the setting, the draw, the seed, the stress configuration, the
    registration, the margin, the size limit, the refinement's version)."""
    cfg = config or StressConfig()
    return cache_key(
        version=STRESS_VERSION, db=db.fingerprint, setting=setting, j=j, seed=seed,
        prior=prior, config=cfg.to_dict(), registration=registration, margin=margin_mm,
        max_cm3=db.build_config.size_filter.flair_max_cm3, refine=cache_tag(refine),
    )  # fmt: skip


def _line(rec: dict) -> str:
    if rec["status"] != "ok":
        return f"{rec['setting']} #{rec['patient']}: {rec['status']}"
    plans = [p for p in ALL_PLANS if f"{p}_enhancing" in rec]
    cells = ", ".join(f"{p} {100 * rec[f'{p}_enhancing']:.1f} %" for p in plans)
    return f"{rec['setting']} #{rec['patient']}: enhancing recurrence covered {cells}"


def _independent(held_out):
    """Prior draws (x, y, z, dw, rho, t_end) of distinct trajectories (a scaled database's
    held-out sampler gives several stages of one trajectory: one patient each)."""
    seen = set()
    for row, _codes in held_out:
        prior = {k: float(row[k]) for k in ("x", "y", "z", "dw", "rho", "t_end")}
        where = (prior["x"], prior["y"], prior["z"])
        if where not in seen:
            seen.add(where)
            yield prior


def _run_patient(db, atlas, prior, j, setting, seed, cfg, registration, margin_mm, max_cm3, refine):
    base = {"setting": setting, "patient": j}
    t = time.perf_counter()
    try:
        pat = stress_patient(atlas, prior, j, setting, seed=seed, config=cfg, max_cm3=max_cm3)
    except GliomatchError as exc:
        return {**base, "status": f"skipped: {exc}"}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the plans' doubts: measured here, not shown
            res = personalize(
                pat.inputs, db, registration=registration, ensemble=True, refine=refine,
                margin_mm=margin_mm, contain=TOP_V,
            )  # fmt: skip
    except GliomatchError as exc:
        return {**base, **pat.truth, "status": f"failed: {exc}"}
    return {
        **base,
        **pat.truth,
        "status": "ok",
        **_coverages(res, pat.recurrence),
        "best_score": float(res.matches[0]["score"]),
        "registration_quality": res.registration.quality,  # None without registration
        **_refine_figures(res),
        "seconds": time.perf_counter() - t,
    }


def _refine_figures(res) -> dict:
    if res.refinement is None:
        return {}
    r = res.parameters["refinement"]
    return {
        "refine_score_before": r["score_before"],
        "refine_score_after": r["score_after"],
        "refine_s": res.timing.get("refine_s"),
    }


def summarize_stress(table: pd.DataFrame) -> dict:
    """Per setting and recurrence kind: patients, mean coverage of each plan, the paired
    difference to the standard plan (mean, s.e.) and the share of patients where the
    personalized plan covers at least as much; over the patients that have that recurrence."""
    out = {"settings": {}}
    if table.empty:
        return out
    for setting, grp in table.groupby("setting", sort=False):
        ok = grp[grp["status"] == "ok"]
        entry = {
            "patients": int(len(grp)),
            "ok": int(len(ok)),
            "skipped": int(grp["status"].str.startswith("skipped").sum()),
            "failed": int(grp["status"].str.startswith("failed").sum()),
        }
        for rec in ("enhancing", "any"):
            col = f"recurrence_{rec}_cm3"
            entry[rec] = paired_coverage(ok[ok[col] > 0] if col in ok else ok.iloc[:0], rec)
        out["settings"][str(setting)] = entry
    return out


def _figure(table: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = table[table["status"] == "ok"] if "status" in table else table.iloc[:0]
    settings = [s for s in SETTINGS if s in set(ok.get("setting", []))]
    fig, axes = plt.subplots(1, 2, figsize=(15, 4.5), sharey=True)
    for ax, rec in zip(axes, ("enhancing", "any"), strict=True):
        data, labels = [], []
        for s in settings:
            g = ok[(ok["setting"] == s) & (ok[f"recurrence_{rec}_cm3"] > 0)]
            for plan in [p for p in ALL_PLANS[1:] if f"{p}_{rec}" in g]:
                data.append(100 * (g[f"{plan}_{rec}"] - g[f"standard_{rec}"]).to_numpy())
                labels.append(f"{s}\n{plan}")
        if data:
            ax.boxplot(data, tick_labels=labels, showmeans=True)
        ax.axhline(0, color="k", lw=0.8)
        ax.set_title(f"{rec} recurrence: personalized − standard (points)")
        ax.tick_params(axis="x", labelsize=7, labelrotation=60)
    axes[0].set_ylabel("coverage difference (percentage points)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
