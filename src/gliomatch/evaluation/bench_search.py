"""`bench search`: each strategy's latency, index size and memory against exact search in
the same process."""

from __future__ import annotations

import time

import numpy as np

from gliomatch.database.trajectories import held_out_tumors
from gliomatch.errors import GliomatchError
from gliomatch.evaluation.engine import exact_ranking, preservation, rank_of
from gliomatch.masks import downsample, masks_from_codes
from gliomatch.resources import peak_rss_bytes, rss_bytes
from gliomatch.search import Query, get_strategy
from gliomatch.search.engine import STAGES, BlockIndex

__all__ = ["bench_search"]


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
        rss_before = rss_bytes()
        tb = time.perf_counter()
        built_before = (not strat.needs_index) or strat.is_built()
        strat.ensure_ready()
        build_s = time.perf_counter() - tb
        strat.search_one(qs[0], k)  # warm-up: numba compilation or cache load is not latency
        lat, ranks, stages = [], [], []
        equal_to_loop = None
        for q, gt, f in zip(qs, truth, full, strict=True):
            ts = time.perf_counter()
            scores, ids = strat.search_one(q, k)
            lat.append(time.perf_counter() - ts)
            if getattr(strat, "last_stats", None):  # a block index's per-stage times
                stages.append(dict(strat.last_stats))
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
            "rss_added_bytes": max(0, rss_bytes() - rss_before),
            "peak_rss_bytes": peak_rss_bytes(),
            "note": note,
        }
        if stages:  # where a block index's time goes: median per stage, candidates verified
            row["stages_ms"] = {
                st: 1000 * float(np.median([x[f"{st}_s"] for x in stages])) for st in STAGES
            }
            row["verified_median"] = float(np.median([x["verified"] for x in stages]))
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
