"""`bench build` and `bench design`: database build rates, and sampler designs compared at
equal build time by the best matches they give."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from gliomatch.database import BuildConfig, Database, build_database
from gliomatch.database.sampling import SamplingConfig
from gliomatch.database.trajectories import held_out_tumors, space
from gliomatch.errors import GliomatchError
from gliomatch.progress import report
from gliomatch.search import Query, get_strategy

__all__ = ["bench_build", "bench_design", "design_name", "parse_design"]


def parse_design(spec: str) -> SamplingConfig:
    """``plain``, ``scaled``, ``plain:8`` or ``scaled:64`` (sampler[:snapshots per simulation])."""
    name, _, count = spec.strip().partition(":")
    try:
        snapshots = int(count) if count else None
    except ValueError:
        raise GliomatchError(f"design {spec!r}: snapshots must be an integer") from None
    return SamplingConfig(sampler=name, snapshots=snapshots)


def design_name(sampling: SamplingConfig) -> str:
    return f"{sampling.sampler}:{sampling.snapshots}"


def bench_build(
    *,
    n=500,
    resolution=128,
    seed=0,
    designs=("plain", "scaled"),
    workers=None,
    out=None,
    progress=None,
) -> list[dict]:
    """Build an ``n``-tumor database per sampler design (``plain``, ``scaled:32``, ...) in one
    run and report tumors/min, simulations/min, tumors kept per simulation, the rejection rate
    and bytes per tumor of each.

    Without ``out`` the databases go to a temporary folder that is deleted afterwards.
    """
    samplings = [parse_design(d) if isinstance(d, str) else d for d in designs]
    tmp = None
    if out is None:
        tmp = tempfile.mkdtemp(prefix="gliomatch-bench-")
        out = Path(tmp)
    rows = []
    try:
        space(None, resolution, BuildConfig().ratio)  # the atlas is not part of any timing
        for sampling in samplings:
            name = design_name(sampling)
            t0 = time.perf_counter()
            db = build_database(
                Path(out) / name.replace(":", "-"),
                n,
                BuildConfig(resolution=resolution, seed=seed, sampling=sampling),
                workers=workers,
                progress=progress,
            )
            wall = time.perf_counter() - t0
            c = db.counts
            snapshots = c["trajectories"] * sampling.snapshots
            rows.append(
                {
                    "design": name,
                    "n": len(db),
                    "resolution": resolution,
                    "workers": workers,
                    "wall_s": wall,
                    "tumors_per_min": len(db) / wall * 60,
                    "simulations_per_min": c["trajectories"] / wall * 60,
                    "kept_per_simulation": len(db) / c["trajectories"],
                    "rejection_rate": c["rejected_snapshots"] / max(snapshots, 1),
                    "disk_bytes": db.disk_bytes,
                    "bytes_per_tumor": db.disk_bytes / len(db),
                }
            )
        base = rows[0]["tumors_per_min"]
        for r in rows:
            r["speedup_vs_first"] = r["tumors_per_min"] / base
        return rows
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def bench_design(
    out,
    designs=("plain:8", "scaled:16", "scaled:32", "scaled:64"),
    *,
    budget_s: float = 300.0,
    resolution: int = 128,
    queries: int = 1000,
    seed: int = 0,
    real=None,
    labels: str = "auto",
    progress=None,
    log=print,
) -> list[dict]:
    """Databases built with each sampler design for the same time, compared by the mean
    best-match Dice of the same held-out synthetic queries (and, with ``real``, a cohort CSV or
    BraTS folder, of those real patients: registered once, each case's best Dice per design).

    Each design builds into ``out/<design>`` for ``budget_s`` seconds (a database already there
    is reused with its recorded build time); the queries are drawn once, from plain rejection
    sampling (another seed), and are the same for every design. The score of a query is the
    exact best match's Dice_T1Gd + Dice_FLAIR at full resolution.
    """
    out = Path(out)
    samplings = [parse_design(d) if isinstance(d, str) else d for d in designs]
    base = BuildConfig(resolution=resolution, seed=seed)
    t0 = time.perf_counter()
    qs = [Query.from_codes(c) for _, c in held_out_tumors(base, queries)]
    log(f"simulated {len(qs)} held-out query tumors in {time.perf_counter() - t0:.0f} s")
    real_qs = None  # registered once, against the first design's database (same atlas)
    rows = []
    for sampling in samplings:
        name = design_name(sampling)
        folder = out / name.replace(":", "-")
        cfg = BuildConfig(resolution=resolution, seed=seed, sampling=sampling)
        if (folder / "manifest.json").is_file():
            db = Database.open(folder)
            build_s = db.build_seconds
        else:
            t0 = time.perf_counter()
            db = build_database(folder, 10**8, cfg, progress=progress, time_limit_s=budget_s)
            build_s = time.perf_counter() - t0
        if real is not None and real_qs is None:
            from gliomatch.evaluation.harness import real_queries

            real_qs = real_queries(db, real, out / "cache" / "real", labels=labels)
        exact = get_strategy("exact", db).ensure_ready()
        best = np.zeros((len(qs), 3))
        for j, q in enumerate(qs):
            _, ids = exact.search_one(q, 1)
            best[j] = [v[0] for v in exact.scores(q, ids)]
            report(progress, j + 1, len(qs), f"{name}: best matches")
        real_best = {}
        for eq in real_qs or []:
            _, ids = exact.search_one(eq.query, 1)
            real_best[eq.qid] = [float(v[0]) for v in exact.scores(eq.query, ids)]
        c = db.counts
        sem = best.std(axis=0, ddof=1) / np.sqrt(len(qs)) if len(qs) > 1 else np.zeros(3)
        rows.append(
            {
                "design": name,
                "tumors": len(db),
                "simulations": c["trajectories"],
                "build_s": build_s,
                "tumors_per_min": len(db) / build_s * 60,
                "queries": len(qs),
                "mean_best_combined": float(best[:, 0].mean()),
                "sem_best_combined": float(sem[0]),
                "mean_best_dice_t1gd": float(best[:, 1].mean()),
                "mean_best_dice_flair": float(best[:, 2].mean()),
                "per_query": best[:, 0].tolist(),
                "real": real_best,  # case -> [combined, Dice T1Gd, Dice FLAIR] of its best match
            }
        )
        log(
            f"{name}: {len(db)} tumors from {c['trajectories']} simulations in {build_s:.0f} s; "
            f"mean best-match combined Dice {rows[-1]['mean_best_combined']:.4f}"
        )
    ref = np.asarray(rows[0]["per_query"])
    for r in rows:  # paired difference with the first design on the same queries
        d = np.asarray(r["per_query"]) - ref
        r["diff_vs_first"] = float(d.mean())
        r["sem_diff_vs_first"] = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else 0.0
    return rows
