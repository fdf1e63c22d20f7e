"""Benchmarks: each one times a fast path against its reference in the same process."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from gliomatch.atlas import load_atlas
from gliomatch.database import BuildConfig, Database, build_database
from gliomatch.database.sampling import SamplingConfig
from gliomatch.database.trajectories import held_out_tumors, space
from gliomatch.errors import GliomatchError
from gliomatch.evaluation.engine import exact_ranking, preservation, rank_of
from gliomatch.masks import downsample, masks_from_codes, threshold
from gliomatch.progress import report
from gliomatch.search import Query, get_strategy
from gliomatch.search.engine import BlockIndex
from gliomatch.solver import Domain, simulate
from gliomatch.solver.kernels import empty_rows, stage_box

__all__ = ["bench_build", "bench_solver"]


def bench_solver(
    *, resolution=128, dw=0.3, rho=0.05, t_end=300.0, x=0.4, y=0.55, z=0.5, atlas=None, repeats=3
) -> dict:
    """Time the numba solver against the NumPy reference on one problem.

    The fast solver is compiled (or loaded from numba's cache) by a short warm-up run first and
    timed as the best of ``repeats``; the reference runs once.
    """
    a = load_atlas(atlas, resolution)
    domain = Domain.from_atlas(a)
    t0 = time.perf_counter()
    simulate(domain, x, y, z, dw, rho, [1.0])
    warmup = time.perf_counter() - t0
    fast_times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fast = simulate(domain, x, y, z, dw, rho, [t_end])
        fast_times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    ref = simulate(domain, x, y, z, dw, rho, [t_end], method="reference")
    ref_s = time.perf_counter() - t0
    fast_s = min(fast_times)
    kernel = _kernel_throughput(domain)
    u = fast.densities[0]
    cells = int(domain.tissue.sum())
    return {
        "resolution": a.resolution,
        "spacing_mm": a.spacing,
        "dw": dw,
        "rho": rho,
        "t_end": t_end,
        "steps": fast.steps,
        "dt_days": fast.dt,
        "fast_s": fast_s,
        "reference_s": ref_s,
        "speedup": ref_s / fast_s,
        "max_abs_diff": float(np.abs(u - ref.densities[0]).max()),
        "warmup_s": warmup,
        "tissue_voxels": cells,
        "flair_cm3": float(threshold(u)[0].sum() * a.voxel_volume_cm3),
        "t1gd_cm3": float(threshold(u)[1].sum() * a.voxel_volume_cm3),
        **kernel,
    }


def _kernel_throughput(domain: Domain, repeats: int = 10) -> dict:
    """Kernel rate on all tissue rows vs this machine's memory copy bandwidth.

    Each updated cell reads u, three face coefficients and writes u (5 x 4 bytes) at least
    once; neighbours in u come from cache.
    """

    rng = np.random.default_rng(0)
    u = (rng.random(domain.tissue.shape, dtype=np.float32) * domain.tissue).astype(np.float32)
    out = u.copy()
    lo = np.ones(3, dtype=np.int64)
    hi = np.asarray(u.shape, dtype=np.int64) - 1
    rows, flags = empty_rows(u.shape[0])
    args = (
        domain.fx,
        domain.fy,
        domain.fz,
        domain.span,
        1.0,
        0.0,
        0.1,
        1.01,
        lo,
        hi,
        0.2,
        rows,
        1e-8,
        flags,
    )
    stage_box(u, u, out, *args)
    t0 = time.perf_counter()
    for _ in range(repeats):
        stage_box(u, u, out, *args)
    per_step = (time.perf_counter() - t0) / repeats
    cells = int(np.clip(domain.span[..., 1] - domain.span[..., 0], 0, None).sum())
    big = np.ones(64 * 1024 * 1024, dtype=np.float32)
    dst = np.empty_like(big)
    best = np.inf
    for _ in range(3):
        t0 = time.perf_counter()
        np.copyto(dst, big)
        best = min(best, time.perf_counter() - t0)
    return {
        "kernel_ns_per_cell": per_step / cells * 1e9,
        "kernel_gb_per_s": cells * 20 / per_step / 1e9,
        "copy_gb_per_s": 2 * big.nbytes / best / 1e9,
    }


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
            _, ids = exact.search(q, 1)
            best[j] = [v[0] for v in exact.scores(q, ids)]
            report(progress, j + 1, len(qs), f"{name}: best matches")
        real_best = {}
        for eq in real_qs or []:
            _, ids = exact.search(eq.query, 1)
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


def _variants(db, n_total: int, size: int):
    """Masks of ``n_total`` entries: the database's own, then mirrored (left-right) and shifted
    copies of them, for latency measurements at a scale the database does not have.

    Each database tumor is read once and all its copies are made from it.
    """

    n = len(db)
    per_base = -(-n_total // n)
    shifts = [(0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1), (-1, 0, 0), (0, -1, 0), (0, 0, -1)]
    made = 0
    for base in range(n):
        f0, t0 = masks_from_codes(db.codes(base))
        f0, t0 = downsample(f0, size), downsample(t0, size)
        for variant in range(per_base):
            if made == n_total:
                return
            f, t = (f0[::-1], t0[::-1]) if variant % 2 == 1 else (f0, t0)
            shift = shifts[(variant // 2) % len(shifts)]
            if variant // 2 >= len(shifts):  # more copies than shifts: shift further
                shift = tuple(s * (1 + variant // (2 * len(shifts))) for s in shift)
            if any(shift):
                f, t = np.roll(f, shift, axis=(0, 1, 2)), np.roll(t, shift, axis=(0, 1, 2))
            made += 1
            yield np.ascontiguousarray(f), np.ascontiguousarray(t)


def _rss_bytes() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


def _peak_rss_bytes() -> int:
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux: kB


def bench_search(
    db,
    strategies=("loop", "exact", "ds64", "ds32"),
    *,
    queries=20,
    k=15,
    scale=None,
    loop_max=2000,
    rerank: int = 0,
    seed=0,
    progress=None,
    log=print,
) -> list[dict]:
    """Latency and top-1/5/15 preservation of each strategy on held-out query tumors.

    ``rerank`` > 0 adds, for every strategy of compressed codes (learned and multitask
    embeddings), its re-ranked form ``NAME+rrM`` (the ``M`` x k best codes re-scored exactly).

    Ground truth is the exact ranking (``exact``, which the tests prove equal to ``loop``;
    checked again here whenever ``loop`` runs on the whole database). With more than
    ``loop_max`` tumors, ``loop`` is timed on a random subset and scaled linearly.
    ``scale`` pads the block indexes with mirrored/shifted copies up to ``scale`` entries for
    the latency measurement only; preservation is always measured on the real entries.
    """
    if queries < 1:
        raise GliomatchError(f"queries must be >= 1, got {queries}")
    strategies = list(strategies)
    if rerank:
        strategies += [f"{n}+rr{rerank}" for n in strategies if get_strategy(n, db).compressed]
    t0 = time.perf_counter()
    qs = [Query.from_codes(c) for _, c in held_out_tumors(db, queries)]
    log(f"simulated {len(qs)} held-out query tumors in {time.perf_counter() - t0:.1f} s")
    n = len(db)
    exact = get_strategy("exact", db, progress=progress)
    exact_built_before = exact.is_built()
    tb = time.perf_counter()
    exact.ensure_ready()
    exact_build_s = None if exact_built_before else time.perf_counter() - tb
    full = [exact_ranking(exact, q)[0] for q in qs]  # the ground truth: the exact ranking
    truth = [np.lexsort((np.arange(n), -f))[:k] for f in full]
    results = []
    loop_median = None
    for name in strategies:
        rng = np.random.default_rng(seed)
        opts = {}
        note = ""
        if name == "loop" and n > loop_max:
            opts["ids"] = np.sort(rng.choice(n, loop_max, replace=False))
            note = f"loop timed on {loop_max} random tumors and scaled x{n / loop_max:.1f}"
        strat = get_strategy(name, db, progress=progress, **opts)
        rss_before = _rss_bytes()
        tb = time.perf_counter()
        built_before = (not strat.needs_index) or strat.is_built()
        strat.ensure_ready()
        build_s = time.perf_counter() - tb
        strat.search(qs[0], k)  # warm-up: numba compilation or cache load is not latency
        lat, ranks = [], []
        equal_to_loop = None
        for q, gt, f in zip(qs, truth, full, strict=True):
            ts = time.perf_counter()
            scores, ids = strat.search(q, k)
            lat.append(time.perf_counter() - ts)
            if name == "loop" and "ids" not in opts:
                equal_to_loop = bool(np.array_equal(ids, gt)) and (equal_to_loop is not False)
            best = ids[0] if name != "loop" or "ids" not in opts else gt[0]
            ranks.append(rank_of(f, int(best)))
        lat = np.asarray(lat)
        if "ids" in opts:
            lat = lat * n / loop_max
        index_bytes = 0
        if strat.needs_index:
            index_bytes = sum(p.stat().st_size for p in strat.index_path.rglob("*") if p.is_file())
        row = {
            "strategy": name,
            "n_db": n,
            "queries": len(qs),
            "median_s": float(np.median(lat)),
            "p95_s": float(np.percentile(lat, 95)),
            **preservation(ranks),
            "index_bytes": int(index_bytes),
            "index_build_s": exact_build_s
            if name == "exact"
            else None
            if built_before
            else build_s,
            # resident memory this strategy added (index pages read, buffers), and the
            # process' peak so far
            "rss_added_bytes": max(0, _rss_bytes() - rss_before),
            "peak_rss_bytes": _peak_rss_bytes(),
            "note": note,
        }
        if equal_to_loop is not None:
            row["exact_equals_loop"] = equal_to_loop
        if scale and strat.needs_index and scale > n:
            size = strat.grid_size
            tb = time.perf_counter()
            big = BlockIndex.from_masks(_variants(db, int(scale), size), (size,) * 3)

            slat = []
            big.search(
                downsample(qs[0].flair, size),
                downsample(qs[0].t1gd, size),
                k,
                strat.w_t1gd,
                strat.w_flair,
            )  # warm-up
            for q in qs:
                f, t = downsample(q.flair, size), downsample(q.t1gd, size)
                ts = time.perf_counter()
                big.search(f, t, k, strat.w_t1gd, strat.w_flair)
                slat.append(time.perf_counter() - ts)
            row.update(
                {
                    "scaled_to": int(scale),
                    "scaled_median_s": float(np.median(slat)),
                    "scaled_p95_s": float(np.percentile(slat, 95)),
                    "scaled_index_bytes": big.nbytes,
                    "scaled_index_build_s": time.perf_counter() - tb - sum(slat),
                    "note": (note + "; " if note else "") + f"latency also at {scale} entries "
                    "(mirrored/shifted copies of the database, for timing only)",
                }
            )
        if name == "loop":
            loop_median = row["median_s"]
        results.append(row)
    for row in results:
        row["speedup_vs_loop"] = (loop_median / row["median_s"]) if loop_median else None
        if loop_median and "scaled_median_s" in row:
            row["scaled_speedup_vs_loop"] = (
                loop_median * row["scaled_to"] / n / row["scaled_median_s"]
            )
    return results
