"""``gliomatch evaluate``: the papers' comparison of search strategies, in one command.

For every query (held-out synthetic tumors and/or a real cohort warped to atlas space) the
ground truth is the exact ranking of the whole database (block-sparse exact scores of every
tumor, cross-checked against ``loop`` on a sample of queries). Each strategy's answer is then
scored by where its best match lies in that ranking (top-1/5/15 preservation) and timed.
Per-query results are cached in ``DIR/cache`` so an interrupted evaluation resumes.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from gliomatch.database.trajectories import held_out_tumors
from gliomatch.errors import GliomatchError, check_count
from gliomatch.evaluation.engine import exact_ranking, preservation, rank_of
from gliomatch.evaluation.figures import write_outputs
from gliomatch.evaluation.plans import atlas_patient, plan_coverage
from gliomatch.evaluation.recovery import recovery
from gliomatch.files import cache_key, confined_child
from gliomatch.patient.cohort import FOLLOWUP_COLUMN, input_digest, read_cohort
from gliomatch.patient.estimates import POSTERIOR_K, QUANTITIES, load_calibration
from gliomatch.patient.inputs import load_patient
from gliomatch.patient.pipeline import personalize, to_atlas
from gliomatch.patient.plans import MARGIN_MM, TOP_V
from gliomatch.patient.registration import warp_masks_to_atlas
from gliomatch.progress import Progress, report
from gliomatch.search import Query, available_strategies, get_strategy, ready_strategies

__all__ = [
    "EvalQuery",
    "choose_strategies",
    "evaluate",
    "evaluate_queries",
    "real_queries",
    "synthetic_queries",
]

PARAMS = ("dw", "rho", "t_end", "x_mm", "y_mm", "z_mm", *QUANTITIES)


@dataclass
class EvalQuery:
    qid: str
    kind: str  # "synthetic" or "real"
    query: Query
    truth: dict | None  # hidden parameters (synthetic only)
    #: a real patient's recurrence in atlas space: (enhancing, any tumor) masks, if given
    followup: tuple | None = None


def synthetic_queries(db, n: int, seed: int = 0) -> list[EvalQuery]:
    """``n`` held-out tumors: the database's sampler with another seed, size-filtered."""

    out = []
    for j, (row, codes) in enumerate(held_out_tumors(db, n, seed_offset=1_000_003 + seed)):
        truth = {p: float(row[p]) for p in PARAMS}
        out.append(EvalQuery(f"syn{j:05d}", "synthetic", Query.from_codes(codes), truth))
    return out


def real_queries(
    db, csv: Path, cache: Path, *, registration="syn", labels: str = "auto", progress=None
):
    """A cohort (a CSV, a BraTS case folder or a folder of them; see ``gliomatch
    infer-batch``) registered and warped to atlas space.

    The warped masks are cached per patient in ``cache``, keyed by the patient's input files
    (SHA-256), label convention, registration kind and the atlas: registration runs once, and
    a changed input is registered again.
    """
    import nibabel as nib

    cohort = read_cohort(Path(csv), labels)
    atlas = db.atlas()
    out = []
    for n, rec in enumerate(cohort, 1):
        if rec.error:
            raise GliomatchError(f"cohort {csv}: patient {rec.patient_id}: {rec.error}")
        key = cache_key(
            inputs=input_digest(rec),
            labels=rec.labels,
            registration=registration,
            atlas=atlas.checksum,
        )
        pdir = confined_child(cache, rec.patient_id, "patient_id") / key
        fp, tp = pdir / "flair_atlas.nii.gz", pdir / "t1gd_atlas.nii.gz"
        fu = rec.files.get(FOLLOWUP_COLUMN)
        ep, ap = pdir / "recurrence_enhancing_atlas.nii.gz", pdir / "recurrence_any_atlas.nii.gz"
        if not (fp.is_file() and tp.is_file()):
            inputs = load_patient(**rec.patient_kwargs())
            try:
                moved = to_atlas(
                    inputs, atlas, registration=registration, workdir=pdir / "transforms"
                )
            except GliomatchError as exc:
                raise GliomatchError(
                    f"patient {rec.patient_id}: {exc} after registration to the atlas (check the "
                    f"registration in {pdir}, or remove the patient from the cohort)"
                ) from exc
            pdir.mkdir(parents=True, exist_ok=True)
            if fu is not None:  # the recurrence, warped like the tumor (cached with it)
                enh, anyt = _followup_masks(fu, rec, inputs.anatomy)
                aff = inputs.anatomy.affine
                a_img, e_img = warp_masks_to_atlas(
                    nib.Nifti1Image(anyt.astype(np.uint8), aff),
                    nib.Nifti1Image(enh.astype(np.uint8), aff),
                    atlas,
                    moved.registration,
                )
                nib.save(e_img, str(ep))
                nib.save(a_img, str(ap))
            nib.save(atlas.to_nifti(moved.query.t1gd), str(tp))
            nib.save(atlas.to_nifti(moved.query.flair), str(fp))  # last: marks a whole entry
        f = nib.load(str(fp)).get_fdata() > 0.5
        t = nib.load(str(tp)).get_fdata() > 0.5
        try:
            query = Query.from_masks(f, t, db.shape, affine=atlas.affine)
        except GliomatchError as exc:
            raise GliomatchError(
                f"patient {rec.patient_id}: {exc} after registration to the atlas (check the "
                f"registration in {pdir}, or remove the patient from the cohort)"
            ) from exc
        followup = None
        if fu is not None:
            followup = tuple(nib.load(str(p)).get_fdata() > 0.5 for p in (ep, ap))
        out.append(EvalQuery(rec.patient_id, "real", query, None, followup))
        report(progress, n, len(cohort), "registering patients")
    return out


def _followup_masks(path, rec, anatomy):
    """(enhancing, any tumor) recurrence masks of a cohort row's follow-up label map."""
    from gliomatch.patient.inputs import load_nifti, on_grid, recurrence_masks

    img = load_nifti(path, "follow-up segmentation")
    lab = on_grid(img, anatomy, f"follow-up segmentation {path}", "the anatomy")
    enh, anyt, _ = recurrence_masks(lab, rec.followup_labels, name=f"follow-up {path}")
    return enh, anyt


def recurrence_coverage_rows(db, queries, *, margin_mm=MARGIN_MM) -> list[dict]:
    """For real patients with a follow-up: each plan's coverage of their recurrence, in atlas
    space (``personalize`` of the warped masks: the standard plan of the warped core; the best
    match's and the ensemble plan of the same volume, over the exact search's matches)."""
    rows, atlas = [], db.atlas()
    get_strategy("exact", db).ensure_ready()  # the explicit build step personalize reads
    for q in queries:
        if q.kind != "real" or q.followup is None:
            continue
        if not q.query.t1gd.any():
            rows.append({"patient_id": q.qid, "status": "no tumor core: no standard plan"})
            continue
        enh, anyt = q.followup
        res = personalize(
            atlas_patient(atlas, q.query), db, registration="none", ensemble=True,
            refine=False, margin_mm=margin_mm, contain=TOP_V,
        )  # fmt: skip
        cov, n = plan_coverage(res, {"enhancing": enh, "any": anyt})
        vox = atlas.voxel_volume_cm3
        rows.append(
            {"patient_id": q.qid, "status": "ok", "plan_cm3": n * vox,
             "recurrence_enhancing_cm3": float(enh.sum() * vox),
             "recurrence_any_cm3": float(anyt.sum() * vox), **cov}
        )  # fmt: skip
    return rows


def query_digest(q: Query) -> str:
    """SHA-256 of a query's two masks (their shape and bits)."""

    h = hashlib.sha256(str(q.flair.shape).encode())
    h.update(np.packbits(q.flair).tobytes())
    h.update(np.packbits(q.t1gd).tobytes())
    return h.hexdigest()


def _strategy_key(strat) -> object:
    """What a strategy's answers depend on besides the query: its index settings and models
    (a re-ranking wrapper: those of the strategy it wraps)."""
    inner = getattr(strat, "base", strat)
    return [inner._meta(), getattr(strat, "m", None)]


def evaluate(
    db,
    out,
    *,
    queries: list[EvalQuery],
    strategies=("exact", "ds64", "ds32"),
    k: int = 15,
    loop_check: int = 3,
    progress=None,
    log=print,
) -> dict:
    """Run every strategy on every query; write tables, figures, summary.json, report.html."""
    check_count(k, "k")
    check_count(loop_check, "loop_check", minimum=0)
    out = Path(out)
    cache = out / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    if not strategies:
        raise GliomatchError("no strategy to evaluate")
    if not queries:
        raise GliomatchError("no query to evaluate")
    strats = {name: get_strategy(name, db) for name in strategies}
    exact = get_strategy("exact", db).ensure_ready()
    strat_keys = {name: _strategy_key(strat) for name, strat in strats.items()}
    costs = {}
    for name, strat in strats.items():
        strat.ensure_ready()
        strat.search_one(queries[0].query, k)  # warm-up (compilation, cache load)
        costs[name] = {**strat.index_info(), **_encode_cost(strat, queries)}
    params = db.params
    records = []
    truth_rows = {}

    weights = (exact.w_t1gd, exact.w_flair)
    for n, eq in enumerate(queries, 1):
        full = None  # exact scores of every tumor for this query (the ground-truth ranking)
        # every cached result is keyed by all it depends on: the database, the query's masks,
        # k and the weights (and, per strategy, its index settings and trained models)
        qkey = dict(db=db.fingerprint, query=query_digest(eq.query), k=k, weights=weights)
        # the truth keeps the exact top max(k, POSTERIOR_K): the posterior's matches
        tkey = cache_key(**qkey, posterior_k=POSTERIOR_K)
        cpath = cache / "truth" / f"{eq.qid}-{tkey}.json"
        if cpath.is_file():
            truth_rows[eq.qid] = json.loads(cpath.read_text())
        else:
            full = exact_ranking(exact, eq.query)
            scores, d_t, d_f = full
            top = np.lexsort((np.arange(len(scores)), -scores))[: max(k, POSTERIOR_K)]
            row = {
                "top": top.tolist(),
                "scores": scores[top].tolist(),
                "best_dice_t1gd": float(d_t[top[0]]),
                "best_dice_flair": float(d_f[top[0]]),
            }
            cpath.parent.mkdir(parents=True, exist_ok=True)
            cpath.write_text(json.dumps(row))
            truth_rows[eq.qid] = row
        for name, strat in strats.items():
            skey = cache_key(**qkey, strategy=name, index=strat_keys[name])
            spath = cache / name / f"{eq.qid}-{skey}.json"
            if spath.is_file():
                rec = json.loads(spath.read_text())
            else:
                t0 = time.perf_counter()
                _, ids = strat.search_one(eq.query, k)
                sec = time.perf_counter() - t0
                if full is None:
                    full = exact_ranking(exact, eq.query)
                best = int(ids[0])
                rec = {
                    "strategy": name,
                    "qid": eq.qid,
                    "kind": eq.kind,
                    "seconds": sec,
                    "best": best,
                    "rank_of_best": rank_of(full[0], best),
                    "ids": [int(i) for i in ids],
                }
                spath.parent.mkdir(parents=True, exist_ok=True)
                spath.write_text(json.dumps(rec))
            records.append(rec)
        report(progress, n, len(queries), "queries")
    # ---- cross-check exact against loop on a few queries
    loop_ok = None
    if loop_check:
        loop = get_strategy("loop", db)
        loop_ok = True
        for eq in queries[:loop_check]:
            _, ids = loop.search_one(eq.query, k)
            loop_ok &= bool(np.array_equal(ids, truth_rows[eq.qid]["top"][: len(ids)]))
        if not loop_ok:
            raise GliomatchError("exact and loop disagree: the ground truth is unreliable")
    res = pd.DataFrame(records)
    calibration, why = load_calibration(db.path, db.fingerprint)
    if why:
        log(f"warning: {why}")
    summary = _summarise(res, queries, truth_rows, params, k, loop_ok, calibration, costs)
    summary["recurrence_coverage"] = recurrence_coverage_rows(db, queries)

    write_outputs(out, db, res, queries, truth_rows, summary, k)
    log(f"wrote {out / 'report.html'}")
    return summary


def _encode_cost(strat, queries: list[EvalQuery], n: int = 20) -> dict:
    """A learned strategy's median time to encode one query (its network's forward pass, part
    of its search latency), over the first ``n`` queries; {} for the others."""
    inner = getattr(strat, "base", strat)
    encode = getattr(inner, "encode_queries", None)
    encode = getattr(inner, "embed_queries", encode)
    if encode is None:
        return {}
    times = []
    for eq in queries[:n]:
        t0 = time.perf_counter()
        encode([eq.query])
        times.append(time.perf_counter() - t0)
    return {"encode_median_s": float(np.median(times))}


def _summarise(res, queries, truth_rows, params, k, loop_ok, calibration=None, costs=None) -> dict:
    table = []
    for (name, kind), g in res.groupby(["strategy", "kind"], sort=False):
        table.append(
            {
                "strategy": name,
                "queries": kind,
                "n": int(len(g)),
                **preservation(g.rank_of_best),
                "median_s": float(g.seconds.median()),
                "p95_s": float(np.percentile(g.seconds, 95)),
                "median_rank_of_best": float(g.rank_of_best.median()),
                **(costs or {}).get(name, {}),
            }
        )
    plaus = {}
    for kind in ("synthetic", "real"):
        qs = [q for q in queries if q.kind == kind]
        if qs:
            best = [truth_rows[q.qid] for q in qs]
            plaus[kind] = {
                "n": len(qs),
                "mean_best_dice_t1gd": float(np.mean([b["best_dice_t1gd"] for b in best])),
                "mean_best_dice_flair": float(np.mean([b["best_dice_flair"] for b in best])),
                "mean_best_score": float(np.mean([b["scores"][0] for b in best])),
            }
    rec = recovery(queries, truth_rows, params, k, calibration)
    return {
        "table": table,
        "plausibility": plaus,
        "parameter_errors": rec["errors"],
        "recovery": rec["rows"],
        "interval_coverage": rec["coverage"],
        "interval_coverage_by_temperature": rec["coverage_sweep"],
        "exact_equals_loop_on_sample": loop_ok,
        "k": k,
        "n_db": int(len(params)),
    }


def choose_strategies(db, spec: list[str] | str) -> tuple[list[str], dict[str, str]]:
    """The strategies to evaluate: ``"all"`` (every registered one that is ready for ``db``,
    loop excepted) or the given names (resolved now, so a bad name fails before any slow
    work). Returns ``(names, {skipped name: why})``."""
    if spec == "all":
        ready = ready_strategies(db, [s for s in available_strategies() if s != "loop"])
        names = [name for name, why in ready.items() if why is None]
        return names, {name: why for name, why in ready.items() if why is not None}
    if not spec:
        raise GliomatchError("no strategy to evaluate")
    for name in spec:
        get_strategy(name, db)
    return list(spec), {}


def evaluate_queries(
    db,
    out,
    *,
    synthetic: int = 1000,
    real: Path | None = None,
    seed: int = 0,
    registration: str = "syn",
    labels: str = "auto",
    strategies=("exact", "ds64", "ds32"),
    k: int = 15,
    loop_check: int = 3,
    progress: Progress | None = None,
) -> dict:
    """``gliomatch evaluate``: ``synthetic`` held-out queries (seeded by ``seed``) and/or a real
    cohort CSV, then :func:`evaluate` over them; returns its summary."""
    check_count(synthetic, "synthetic", minimum=0)
    check_count(k, "k")
    check_count(loop_check, "loop_check", minimum=0)
    if synthetic == 0 and real is None:
        raise GliomatchError("nothing to evaluate: give synthetic queries or a real cohort")
    out = Path(out)
    qs = []
    if synthetic:
        report(progress, 0, 1, "simulating held-out queries")
        qs += synthetic_queries(db, synthetic, seed)
        report(progress, 1, 1, "simulating held-out queries")
    if real is not None:
        qs += real_queries(db, real, out / "cache" / "real", registration=registration,
                           labels=labels, progress=progress)  # fmt: skip
    return evaluate(
        db, out, queries=qs, strategies=strategies, k=k, loop_check=loop_check,
        progress=progress, log=lambda m: None,
    )  # fmt: skip
