"""Refine the database's best matches with the growth model in the patient's own anatomy.

The database search gives the exact best atlas tumors; warping one back to the patient carries
every error of the registration (ventricles, sulci, a brain unlike the atlas) into the density
the plans are made from. Here the growth model runs again, on the patient's own tissue
(:mod:`gliomatch.patient.tissue`: a 1.5 mm working grid cropped to the brain), and its
parameters are fitted to the patient's own masks:

* **Starts.** The top ``starts`` matches (distinct trajectories) of the search. Each match's
  density is mapped to the working grid; its score there (Dice_T1Gd at u >= 0.6 + Dice_FLAIR at
  u >= 0.2, with the search's weights) is the *atlas-only* score, and its seed is the centre of
  its highest density (the centroid of u >= 0.95 max), moved to the nearest tissue voxel; its
  D_w/rho and rho T are the match's.
* **The objective.** f(seed, D_w/rho) = the best score over the stages rho T of one simulation
  (the scaling symmetry: the run at rho = 1, D_w = D_w/rho gives every stage; ``STAGES``
  snapshots geometric in [rho T_0 / ``STAGE_SPAN``, rho T_0 * ``STAGE_SPAN``], the run stopped
  once the FLAIR volume exceeds twice the patient's). Same scheme, boundary conditions, seed
  and thresholds as the database (:func:`gliomatch.solver.simulate`).
* **The optimizer.** scipy's Nelder–Mead over (seed x, y, z in mm, ln D_w/rho), initial
  simplex steps ``SEED_STEP_MM`` and ``LOG_STEP``: ``EVALUATIONS`` simulations on the working
  grid coarsened ``COARSE_FACTOR`` times (``COARSE_STAGES`` stages each), then ``POLISH`` on the
  working grid with half the steps, and the winner's stage chosen again among ``STAGES``. A
  fixed count, not a clock, so the same input gives the same answer on any machine.
* **Never worse.** A start whose fit scores below its atlas-only score keeps the atlas-only
  density (in-sample the refinement cannot lose; on held-out recurrences that is measured, not
  assumed: ``gliomatch bench stress``).
* **Posterior in patient space.** The refined members are combined with the posterior's
  weights, w_i ∝ exp((s_i - s_1) / T) (:mod:`gliomatch.patient.estimates`), into the refined
  ensemble density.

Only the identifiable quantities are reported (seed, D_w/rho, rho T; see ``NOT_IDENTIFIABLE``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace

import nibabel as nib
import numba
import numpy as np
from scipy import ndimage, optimize

from gliomatch.errors import GliomatchError
from gliomatch.masks import FLAIR_LEVEL, T1GD_LEVEL, dice_scores
from gliomatch.patient.estimates import TEMPERATURE, posterior_weights
from gliomatch.patient.tissue import WORKING_MM, PatientTissue, on_working, patient_tissue
from gliomatch.progress import report

__all__ = [
    "EVALUATIONS",
    "VERSION",
    "STARTS",
    "Fit",
    "Refinement",
    "cache_tag",
    "refine",
]

#: Bump when a change alters refined results: the benchmarks' and cohorts' caches are keyed by
#: it (:func:`cache_tag`), so a result of another refinement is never reused.
VERSION = 1
#: Matches refined (distinct trajectories of the top of the search).
STARTS = 3
#: Simulations per start (Nelder–Mead function evaluations).
EVALUATIONS = 30
#: Nelder–Mead's initial simplex: seed steps (mm) and ln(D_w/rho) step.
SEED_STEP_MM = 4.0
LOG_STEP = 0.5
#: The stages searched around a start's rho T (a factor each way) and their number.
STAGE_SPAN = 3.0
STAGES = 40
#: Stop a run once the FLAIR volume exceeds this many times the patient's.
STOP_FACTOR = 2.0
#: The search runs on the working grid coarsened by this factor (3 mm: about 16 times faster
#: per simulation); each start's winner is run again on the working grid, which picks its
#: stage again.
COARSE_FACTOR = 2
COARSE_STAGES = 24
#: Simulations of the polish on the working grid from the coarse winner (half the steps).
POLISH = 10


@dataclass
class Fit:
    """One member: its parameters (patient space), its scores on the patient's masks on the
    working grid, and whether the growth model was refitted (``refined``) or the atlas-only
    density kept."""

    seed_mm: np.ndarray
    dw_over_rho: float
    rho_t: float
    dice_t1gd: float
    dice_flair: float
    score: float
    refined: bool
    db_id: int
    evaluations: int = 0
    density: np.ndarray | None = field(default=None, repr=False)

    def record(self) -> dict:
        return {
            "db_id": int(self.db_id),
            "refined": bool(self.refined),
            "seed_mm": [round(float(v), 2) for v in self.seed_mm],
            "dw_over_rho_mm2": float(self.dw_over_rho),
            "infiltration_mm": float(math.sqrt(self.dw_over_rho)),
            "rho_t": float(self.rho_t),
            "dice_t1gd": float(self.dice_t1gd),
            "dice_flair": float(self.dice_flair),
            "score": float(self.score),
            "evaluations": int(self.evaluations),
        }


@dataclass
class Refinement:
    """The refinement of one patient: its tissue, the atlas-only members (``before``), the
    refined ones (``after``, same order), the ensemble's weights and the time taken."""

    tissue: PatientTissue
    before: list[Fit]
    after: list[Fit]
    weights: np.ndarray
    seconds: float
    #: the fit's settings: starts, evaluations (coarse) and polish (working grid)
    settings: dict = field(default_factory=dict)

    @property
    def best(self) -> Fit:
        return self.after[int(np.argmax([f.score for f in self.after]))]

    def ensemble(self) -> np.ndarray:
        """The posterior-weighted mean of the refined members' densities (working grid)."""
        acc = np.zeros(self.tissue.shape, np.float64)
        for w, f in zip(self.weights, self.after, strict=True):
            acc += w * f.density
        return (acc / self.weights.sum()).astype(np.float32)

    def on_patient(self, density: np.ndarray, ref: nib.Nifti1Image) -> np.ndarray:
        """A working-grid density on the patient's grid ``ref`` (linear; 0 outside)."""
        img = nib.Nifti1Image(np.asarray(density, np.float32), self.tissue.affine)
        return on_working(img, ref.shape[:3], ref.affine)

    def summary(self) -> dict:
        best_before = max(self.before, key=lambda f: f.score)
        return {
            "method": (
                f"Nelder–Mead over seed and ln(D_w/rho), best stage of each run, "
                f"{len(self.after)} starts x ({self.settings.get('evaluations')} simulations "
                f"at {COARSE_FACTOR * self.tissue.spacing:g} mm + {self.settings.get('polish')} "
                f"at {self.tissue.spacing:g} mm), on the patient's tissue ({self.tissue.source})"
            ),
            "settings": self.settings,
            "tissue": self.tissue.summary(),
            "score_before": float(best_before.score),
            "score_after": float(self.best.score),
            "best": self.best.record(),
            "members_before": [f.record() for f in self.before],
            "members_after": [f.record() for f in self.after],
            "ensemble_weights": [float(w) for w in self.weights],
            "ensemble_weighting": f"w_i ∝ exp((s_i - s_1) / {TEMPERATURE:g})",
            "seconds": float(self.seconds),
        }


def cache_tag(refine: bool) -> int:
    """What a cached result made with or without the refinement depends on: 0 without it,
    else the refinement's ``VERSION``."""
    return VERSION if refine else 0


@numba.njit(cache=True)
def dice_counts(u, flair, t1gd, flair_level, t1gd_level):  # pragma: no cover (numba)
    """``(|u >= F|, |u >= F & flair|, |u >= T|, |u >= T & t1gd|)`` in one pass over the grid
    (``F``, ``T``: the two levels); :func:`dice_counts_reference` is the obviously correct
    NumPy version, and a test checks they agree."""
    nf = inf = nt = intt = 0
    for i in range(u.shape[0]):
        for j in range(u.shape[1]):
            for k in range(u.shape[2]):
                v = u[i, j, k]
                if v >= flair_level:
                    nf += 1
                    if flair[i, j, k]:
                        inf += 1
                    if v >= t1gd_level:
                        nt += 1
                        if t1gd[i, j, k]:
                            intt += 1
    return nf, inf, nt, intt


def dice_counts_reference(u, flair, t1gd, flair_level, t1gd_level):
    """NumPy reference of :func:`dice_counts` (``t1gd_level >= flair_level``)."""
    pf, pt = u >= flair_level, u >= t1gd_level
    return (int(pf.sum()), int(np.count_nonzero(pf & flair)), int(pt.sum()),
            int(np.count_nonzero(pt & t1gd)))  # fmt: skip


class _Scorer:
    """Dice_T1Gd + Dice_FLAIR of densities against the patient's masks on the working grid."""

    def __init__(self, flair: np.ndarray, t1gd: np.ndarray, weights):
        self.flair, self.t1gd = flair, t1gd
        self.nf, self.nt = int(flair.sum()), int(t1gd.sum())
        self.w_t1gd, self.w_flair = weights

    def __call__(self, u: np.ndarray) -> tuple[float, float, float]:
        pf, inter_f, pt, inter_t = dice_counts(u, self.flair, self.t1gd, FLAIR_LEVEL, T1GD_LEVEL)
        s, dt, df = dice_scores(inter_f, inter_t, pf, pt, self.nf, self.nt, self.w_t1gd,
                                self.w_flair)  # fmt: skip
        return float(dt), float(df), float(s)


def _seed_of(u: np.ndarray, nearest: tuple) -> np.ndarray:
    """The centre of ``u``'s highest density (voxel coordinates), moved into tissue."""
    top = u >= 0.95 * float(u.max())
    c = np.asarray(ndimage.center_of_mass(top), dtype=np.float64)
    return _in_tissue(c, nearest)


def _in_tissue(p: np.ndarray, nearest: tuple) -> np.ndarray:
    shape = np.asarray(nearest[0].shape)
    v = np.clip(np.rint(p).astype(int), 0, shape - 1)
    q = np.array([nearest[a][tuple(v)] for a in range(3)], dtype=np.float64)
    return p if np.array_equal(q, v) else q


def _mapped_densities(db, ids, atlas, reg, tissue: PatientTissue) -> list[np.ndarray]:
    """The matches' atlas densities on the working grid, through the registration."""
    if reg.kind == "none":
        return [
            on_working(atlas.to_nifti(db.density(int(i))), tissue.shape, tissue.affine) for i in ids
        ]
    ref = nib.Nifti1Image(np.zeros(tissue.shape, np.float32), tissue.affine)
    onto = replace(reg, patient=ref)
    return [
        np.asarray(onto.to_patient(atlas.to_nifti(db.density(int(i)))).dataobj, np.float32)
        for i in ids
    ]


def distinct_starts(db, ids, n: int) -> list[int]:
    """The first ``n`` of ``ids`` from distinct trajectories (stages of one simulation would
    start the same fit)."""
    params = db.params
    key = "traj_id" if "traj_id" in params else "id"
    seen, out = set(), []
    for i in ids:
        t = int(params.iloc[int(i)][key])
        if t not in seen:
            seen.add(t)
            out.append(int(i))
        if len(out) == n:
            break
    return out


def refine(
    inputs,
    db,
    atlas,
    reg,
    ids,
    brain: np.ndarray,
    *,
    starts: int = STARTS,
    evaluations: int = EVALUATIONS,
    polish: int = POLISH,
    weights: tuple[float, float] = (1.0, 1.0),
    spacing: float | None = None,
    progress=None,
) -> Refinement:
    """Refine the top matches ``ids`` (best first) in the patient's anatomy (module notes).

    Parameters
    ----------
    inputs : PatientInputs
    db : Database
        The searched database (its growth model and the matches' parameters).
    atlas, reg
        The database's atlas and the patient's registration to it.
    ids : sequence of int
        The search's ranking.
    brain : ndarray of bool
        The brain on the patient's grid.
    starts, evaluations, polish : int
        Members refined, simulations per member on the coarse grid, then on the working grid.
    weights : (float, float)
        The score's weights of Dice_T1Gd and Dice_FLAIR (the search's).
    spacing : float, optional
        The working grid's voxel (mm); default: the database's (1.5 mm at 128^3, the
        ``WORKING_MM`` of a full-size database; a coarse test database refines coarsely).
    progress : callable, optional
        ``progress(done, total, description)`` after each member (:mod:`gliomatch.progress`).
    """
    if starts < 1 or evaluations < 0:
        raise GliomatchError("refinement needs at least one start and no negative evaluations")
    t0 = time.perf_counter()
    spacing = max(WORKING_MM, atlas.spacing) if spacing is None else spacing
    tissue = patient_tissue(inputs, atlas, reg, brain, spacing=spacing)
    t1gd = _on_tissue(inputs.t1gd, inputs.anatomy.affine, tissue)
    fine = _Level(db.model, tissue.wm, tissue.gm, tissue.affine, tissue.tumor, t1gd, weights)
    coarse = fine.coarsened(COARSE_FACTOR)
    chosen = distinct_starts(db, ids, starts)
    params = db.params
    before, after = [], []
    report(progress, 0, len(chosen), "refine: the top matches in the patient's anatomy")
    for i, u in zip(chosen, _mapped_densities(db, chosen, atlas, reg, tissue), strict=True):
        row = params.iloc[i]
        dt, df, s = fine.scorer(u)
        seed = _seed_of(u, fine.nearest) if u.max() > 0 else fine.centre()
        start = Fit(
            _world_of(fine, seed), float(row["dw_over_rho"]), float(row["rho_t"]), dt, df, s,
            refined=False, db_id=i, density=u,
        )  # fmt: skip
        before.append(start)
        fit = _refined(fine, coarse, start, evaluations, polish)
        after.append(fit if fit is not None and fit.score > start.score else start)
        report(progress, len(after), len(chosen), f"refine: member {len(after)} refitted")
    w = posterior_weights(np.array([f.score for f in after]), TEMPERATURE)
    settings = {"starts": starts, "evaluations": evaluations, "polish": polish}
    return Refinement(tissue, before, after, w, time.perf_counter() - t0, settings)


def _refined(fine: _Level, coarse: _Level, start: Fit, evaluations: int, polish: int) -> Fit | None:
    """Search on the coarse grid from ``start``, then run the winner on the working grid
    (which picks its stage again); None when nothing scored."""
    found = _search(coarse, start, coarse.voxel_of(start.seed_mm), evaluations)
    if found is None:
        return None
    seed, dwr, n = found
    world = _world_of(coarse, seed)
    if polish > 0:
        at = replace(start, seed_mm=world, dw_over_rho=dwr)
        found = _search(fine, at, fine.voxel_of(world), polish, scale=0.5)
        if found is not None:
            seed, dwr, m = found
            world, n = _world_of(fine, seed), n + m
    top = fine.run(fine.voxel_of(world), dwr, start.rho_t, keep=True)
    if "density" not in top:
        return None
    return Fit(
        world, dwr, float(top["rho_t"]), top["dice_t1gd"], top["dice_flair"], top["score"],
        refined=True, db_id=start.db_id, evaluations=n + 1, density=top["density"],
    )  # fmt: skip


def _stages(rho_t: float, n: int = STAGES) -> np.ndarray:
    return np.geomspace(rho_t / STAGE_SPAN, rho_t * STAGE_SPAN, n)


def _world_of(grid, voxel) -> np.ndarray:
    """World (mm) of a voxel of ``grid`` (anything with an ``affine``)."""
    return grid.affine[:3, :3] @ np.asarray(voxel, float) + grid.affine[:3, 3]


def _on_tissue(mask: np.ndarray, affine, tissue: PatientTissue) -> np.ndarray:
    img = nib.Nifti1Image(np.asarray(mask, np.float32), affine)
    return on_working(img, tissue.shape, tissue.affine) > 0.5


def _block_mean(a: np.ndarray, f: int) -> np.ndarray:
    s = [n // f * f for n in a.shape]
    a = np.asarray(a, np.float32)[: s[0], : s[1], : s[2]]
    return a.reshape(s[0] // f, f, s[1] // f, f, s[2] // f, f).mean(axis=(1, 3, 5))


class _Level:
    """One grid of the fit: the growth model's domain on the patient's tissue, the patient's
    masks there, and runs scored against them."""

    def __init__(self, model, wm, gm, affine, flair, t1gd, weights, stages: int = STAGES):
        self.model, self.affine, self.stages = model, np.asarray(affine, float), stages
        self.spacing = float(np.linalg.norm(self.affine[:3, 0]))
        self.wm, self.gm, self.weights = wm, gm, weights
        self.domain = model.domain(wm, gm, self.spacing, affine=self.affine)
        inside = self.domain.tissue[1:-1, 1:-1, 1:-1]
        self.nearest = tuple(
            ndimage.distance_transform_edt(~inside, return_distances=False, return_indices=True)
        )
        self.shape = np.asarray(inside.shape, dtype=np.float64)
        self.scorer = _Scorer(flair, t1gd & flair, weights)
        self.stop_cm3 = STOP_FACTOR * max(self.scorer.nf, 1) * self.spacing**3 / 1000.0

    def coarsened(self, f: int) -> _Level:
        step = np.diag([f, f, f, 1.0])
        step[:3, 3] = (f - 1) / 2.0  # a coarse voxel's centre: its block's centre
        return _Level(
            self.model, _block_mean(self.wm, f), _block_mean(self.gm, f), self.affine @ step,
            _block_mean(self.scorer.flair, f) >= 0.5, _block_mean(self.scorer.t1gd, f) >= 0.5,
            self.weights, COARSE_STAGES,
        )  # fmt: skip

    def voxel_of(self, world) -> np.ndarray:
        """The voxel (continuous) of a world point, moved into tissue."""
        v = np.linalg.solve(self.affine[:3, :3], np.asarray(world, float) - self.affine[:3, 3])
        return np.clip(_in_tissue(v, self.nearest), 0, self.shape - 1)

    def centre(self) -> np.ndarray:
        return _in_tissue(self.shape / 2, self.nearest)

    def run(self, p, dwr: float, rho_t: float, keep: bool = False) -> dict:
        """One simulation from voxel ``p`` at D_w/rho ``dwr``: its best stage around
        ``rho_t`` (score, both Dice, rho T; the density too with ``keep``)."""
        top = {"score": -np.inf}

        def on_snapshot(t, u):
            dt, df, s = self.scorer(u)
            if s > top["score"]:
                top.update(score=s, dice_t1gd=dt, dice_flair=df, rho_t=t)
                if keep:
                    top["density"] = np.array(u, dtype=np.float32)

        try:
            self.model.simulate_stages(
                self.domain, tuple(np.asarray(p) / (self.shape - 1)), dw_over_rho=dwr,
                stages=_stages(rho_t, self.stages), on_snapshot=on_snapshot,
                stop_volume_cm3=self.stop_cm3, stop_threshold=FLAIR_LEVEL,
            )  # fmt: skip
        except GliomatchError:
            pass  # a seed or a D_w/rho the solver refuses: no score
        return top


def _search(level: _Level, start: Fit, seed, evaluations: int, scale: float = 1.0):
    """Nelder–Mead from ``start`` on ``level``: ``(seed voxel, D_w/rho, simulations)`` of
    the best run, or None when no run scored."""
    seen: dict = {}
    best = {"score": -np.inf}
    step = scale * SEED_STEP_MM / level.spacing

    def objective(z) -> float:
        p = level.voxel_of(_world_of(level, np.asarray(seed) + z[:3] * step))
        dwr = float(start.dw_over_rho * math.exp(z[3] * scale * LOG_STEP))
        key = (*np.round(p, 3).tolist(), round(dwr, 6))
        if key not in seen:
            top = level.run(p, dwr, start.rho_t)
            seen[key] = top["score"]
            if top["score"] > best["score"]:
                best.update(top, seed=p, dwr=dwr)
        return -seen[key] if np.isfinite(seen[key]) else 0.0

    if evaluations > 0:
        simplex = np.vstack([np.zeros(4), np.eye(4)])
        optimize.minimize(
            objective, np.zeros(4), method="Nelder-Mead",
            options={"maxfev": evaluations, "initial_simplex": simplex, "xatol": 0.05,
                     "fatol": 1e-4},
        )  # fmt: skip
    else:
        objective(np.zeros(4))
    if not np.isfinite(best["score"]):
        return None
    return best["seed"], best["dwr"], len(seen)
