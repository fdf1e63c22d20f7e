"""Building a tumor database: shards of trajectories, simulated locally or on a Dask cluster.

Work is split into shards of ``shard_size`` trajectories. A shard is simulated by one task
(:func:`run_shard`), which writes it atomically; the build is therefore resumable: killed at any
moment and started again with the same command, it skips finished shards, removes half-written
temporary ones and ends with the same database as an uninterrupted build (every trajectory's
random numbers depend only on the seed and its id). The database holds the first ``n`` kept
tumors in (shard, trajectory, snapshot) order.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numba
import numpy as np
import pandas as pd

from gliomatch.cluster import check_scheduler, dask_client, worker_count
from gliomatch.database.config import BuildConfig
from gliomatch.database.manifest import (
    building_manifest,
    complete_manifest,
    read_manifest,
    write_manifest,
)
from gliomatch.database.storage import (
    Database,
    hash_tree,
    write_parquet_atomic,
    write_shard,
    write_shard_stats,
)
from gliomatch.database.trajectories import check_progress, space, trajectory_tumors
from gliomatch.errors import GliomatchError, check_count
from gliomatch.files import sha256_file, stale_temporaries
from gliomatch.progress import Progress

__all__ = ["build_database", "run_shard"]


def run_shard(config: dict, shard: int, db_path: str, numba_threads: int | None = None) -> dict:
    """Simulate shard ``shard`` and write it to ``db_path/shards``; return its counts.

    A shard that exists already is not recomputed.
    """
    cfg = BuildConfig.from_dict(config)
    shard_dir = Path(db_path) / "shards" / f"s{shard:05d}"
    if shard_dir.exists():
        stats = json.loads((shard_dir / "shard.json").read_text())
        return {k: v for k, v in stats.items() if k != "elapsed_s"}
    if numba_threads:
        numba.set_num_threads(min(numba_threads, numba.config.NUMBA_NUM_THREADS))
    t0 = time.perf_counter()
    codes, rows = [], []
    rejected = 0
    for traj_id in range(shard * cfg.shard_size, (shard + 1) * cfg.shard_size):
        kept, rej = trajectory_tumors(cfg, traj_id)
        rejected += rej
        for row, q in kept:
            rows.append({"local": len(codes), **row})
            codes.append(q)
    table = pd.DataFrame(rows, columns=_COLUMNS[2:])
    stats = {
        "shard": shard,
        "trajectories": cfg.shard_size,
        "snapshots": cfg.shard_size * cfg.sampling.snapshots,
        "kept": len(codes),
        "rejected": rejected,
        "elapsed_s": time.perf_counter() - t0,
    }
    atlas = space(cfg.atlas, cfg.resolution, cfg.ratio)[0]
    write_shard(shard_dir, codes, table, stats, atlas.shape)
    return stats


_COLUMNS = [
    "id",
    "shard",
    "local",
    "traj_id",
    "snapshot",
    "x",
    "y",
    "z",
    "x_mm",
    "y_mm",
    "z_mm",
    "dw",
    "rho",
    "t_end",
    "dw_over_rho",
    "infiltration_mm",
    "rho_t",
    "flair_cm3",
    "t1gd_cm3",
    "com_x_mm",
    "com_y_mm",
    "com_z_mm",
    "bbox_i0",
    "bbox_j0",
    "bbox_k0",
    "bbox_i1",
    "bbox_j1",
    "bbox_k1",
]


# ------------------------------------------------------------------------------ orchestration


def _prepare_folder(path: Path, cfg: BuildConfig) -> None:
    """Create the folder, or check that a resumed build uses the same settings.

    The manifest is the one record of a database's build settings: a new build writes it at
    once (``status`` "building", ``build_config``); a resumed or extended build must match its
    ``build_config``. A ``config.json`` left by an older gliomatch is migrated into it.
    """
    try:
        path.mkdir(parents=True, exist_ok=True)
        (path / "shards").mkdir(exist_ok=True)
    except OSError as exc:
        raise GliomatchError(f"database folder {path}: cannot create it ({exc.strerror})") from exc
    if not os.access(path, os.W_OK):
        raise GliomatchError(f"database folder {path}: not writable")
    manifest = read_manifest(path)
    legacy = path / "config.json"
    if manifest is not None:
        recorded = manifest["build_config"]
    elif legacy.is_file():
        try:
            recorded = json.loads(legacy.read_text())
        except (OSError, ValueError) as exc:
            raise GliomatchError(f"database {legacy}: not valid JSON") from exc
    else:
        foreign = [p.name for p in path.iterdir() if p.name not in ("shards",)]
        if foreign or any((path / "shards").iterdir()):
            raise GliomatchError(
                f"folder {path} is not empty and is not a gliomatch database "
                f"(found {', '.join(sorted(foreign)[:3]) or 'shards/'}); use an empty folder"
            )
        recorded = cfg.to_dict()
    recorded = _normalized(recorded, path)
    if recorded != cfg.to_dict():
        new = cfg.to_dict()
        diff = sorted(k for k in new if recorded.get(k) != new[k])
        detail = ""
        if "sampling" in diff:
            r, n = recorded["sampling"], new["sampling"]
            detail = ": sampling " + ", ".join(
                f"{k} {r.get(k)} (given {n[k]})" for k in n if r.get(k) != n[k]
            )
        raise GliomatchError(
            f"database {path} was built with other settings ({', '.join(diff)} differ{detail}); "
            "use another folder or the same settings to resume"
        )
    if manifest is None:
        write_manifest(path, building_manifest(cfg))
    legacy.unlink(missing_ok=True)
    for stale in stale_temporaries(path / "shards"):  # half-written shards of a killed build
        shutil.rmtree(stale, ignore_errors=True)


def _normalized(recorded, path: Path) -> dict:
    """Recorded build settings in today's form (defaults of later versions filled in)."""
    try:
        return BuildConfig.from_dict(recorded).to_dict()
    except (GliomatchError, KeyError, TypeError, ValueError) as exc:
        raise GliomatchError(f"database {path}: unreadable build settings ({exc})") from exc


def _done_shards(path: Path) -> dict[int, dict]:
    """The finished shards' counts. A shard written before the timing left ``shard.json``
    (its ``elapsed_s`` made every rebuild's checksums differ) is brought to today's layout:
    the same content, so the database's fingerprint becomes the one any build of the same
    seed gets."""
    done = {}
    for d in (path / "shards").glob("s[0-9]*"):
        try:
            stats = json.loads((d / "shard.json").read_text())
        except (OSError, ValueError) as exc:
            raise GliomatchError(
                f"database shard {d}: unreadable shard.json ({exc}); delete the shard folder "
                "and resume the build to recompute it"
            ) from exc
        if "elapsed_s" in stats:
            write_shard_stats(d, stats)
            stats = {k: v for k, v in stats.items() if k != "elapsed_s"}
        done[int(d.name[1:])] = stats
    return done


def _prefix(done: dict[int, dict], n: int) -> int | None:
    """Number of leading shards whose kept tumors reach ``n`` (None if not yet)."""
    kept, s = 0, 0
    while s in done:
        kept += done[s]["kept"]
        s += 1
        if kept >= n:
            return s
    return None


def _finalize(path: Path, cfg: BuildConfig, done: dict[int, dict], n: int, t_build: float):

    m = _prefix(done, n)
    tables = []
    for s in range(m):
        t = pd.read_parquet(path / "shards" / f"s{s:05d}" / "tumors.parquet")
        t.insert(0, "shard", s)
        tables.append(t)
    table = pd.concat(tables, ignore_index=True).iloc[:n].copy()
    table.insert(0, "id", np.arange(len(table), dtype=np.int64))
    table = table[_COLUMNS]
    atlas, _, _ = space(cfg.atlas, cfg.resolution, cfg.ratio)
    shards = [
        {
            "shard": s,
            "name": f"s{s:05d}",
            "used": int((table["shard"] == s).sum()),
            "sha256": hash_tree(path / "shards" / f"s{s:05d}"),
        }
        for s in range(m)
    ]
    disk = sum(p.stat().st_size for p in (path / "shards").rglob("*") if p.is_file())
    simulated = sum(done[s]["trajectories"] for s in range(m))
    rejected = sum(done[s]["rejected"] for s in range(m))
    write_parquet_atomic(path / "tumors.parquet", table)
    manifest = complete_manifest(
        cfg,
        atlas,
        shards=shards,
        counts={
            "tumors": int(len(table)),
            "trajectories": int(simulated),
            "rejected_snapshots": int(rejected),
            "shards": m,
        },
        disk_bytes=int(disk),
        seconds=t_build,
        table_sha256=sha256_file(path / "tumors.parquet"),
    )
    old = _old_manifest(path)
    if old and old["shards"] == shards and old["counts"]["tumors"] == len(table):
        manifest["files"] = old.get("files", {})  # same content: its indexes stay valid
    elif (path / "index").is_dir():  # indexes and models of another content are stale
        shutil.rmtree(path / "index", ignore_errors=True)
    write_manifest(path, manifest)
    return Database.open(path)


def _old_manifest(path: Path) -> dict | None:

    if not (path / "manifest.json").is_file():
        return None
    try:
        return Database.open(path).manifest
    except GliomatchError:
        return None


def build_database(
    path,
    n: int,
    config: BuildConfig | None = None,
    *,
    workers: int | None = None,
    scheduler: str | None = None,
    progress: Progress | None = None,
    time_limit_s: float | None = None,
):
    """Build (or resume) a database of ``n`` kept tumors in ``path``; returns the Database.

    Parameters
    ----------
    workers : int, optional
        Local Dask worker processes (default: one per core; on a machine with <= 2 cores the
        default is ``1``). ``1`` runs in this process (no Dask), its numba kernels using every
        core.
    scheduler : str, optional
        Address of a Dask scheduler (``tcp://HOST:PORT``); workers must see ``path``.
    time_limit_s : float, optional
        Start no shard after this many seconds of simulation, once a tumor is kept; the
        database then holds the tumors of the shards finished in order (fewer than ``n``; the
        same command resumes towards ``n``).
        Equal-time comparisons of build designs use it.
    """
    check_count(n, "n (number of tumors)")
    check_scheduler(scheduler)
    cfg = config or BuildConfig()
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise GliomatchError(f"database folder {path}: exists and is not a folder")
    t0 = time.perf_counter()
    space(cfg.atlas, cfg.resolution, cfg.ratio)  # validates the atlas before any work
    _prepare_folder(path, cfg)
    old = _old_manifest(path)
    if old and n < old["counts"]["tumors"]:
        raise GliomatchError(
            f"database {path} holds {old['counts']['tumors']} tumors; n (--n) {n} would drop "
            f"{old['counts']['tumors'] - n} of them. Use --n {old['counts']['tumors']} or more "
            "to keep or grow it, or another folder for a smaller database"
        )
    done = _done_shards(path)
    if workers is None:
        # measured (bench build, 128^3, 2 cores): one process whose numba kernels use both
        # cores builds ~10 % faster than two single-threaded Dask workers; with more cores,
        # independent workers scale better than threads inside one simulation
        cores = os.cpu_count() or 1
        workers = 1 if cores <= 2 else cores
    if workers < 1:
        raise GliomatchError(f"workers must be >= 1, got {workers}")
    if time_limit_s is not None and not time_limit_s > 0:
        raise GliomatchError(f"time limit must be > 0 seconds, got {time_limit_s}")
    # the limit counts from the first shard on (not the atlas loading); shards go on past it
    # until at least one tumor is kept (a database is never empty)
    deadline = None if time_limit_s is None else time.perf_counter() + time_limit_s
    bar = _BuildReport(n, progress)
    bar.update(done)
    if _prefix(done, n) is None:
        if workers == 1 and scheduler is None:
            _run_serial(path, cfg, n, done, bar, deadline)
        else:
            _run_dask(path, cfg, n, done, bar, workers, scheduler, deadline)
    if _prefix(done, n) is None:  # stopped by the time limit: keep the finished prefix
        n = _prefix_kept(done)  # > 0: shards go on past the limit until a tumor is kept
        if old and n < old["counts"]["tumors"]:
            return Database.open(path)  # no new complete shard: the database is unchanged
    return _finalize(path, cfg, done, n, time.perf_counter() - t0)


def _prefix_kept(done: dict[int, dict]) -> int:
    kept, s = 0, 0
    while s in done:
        kept, s = kept + done[s]["kept"], s + 1
    return kept


def _late(deadline: float | None) -> bool:
    return deadline is not None and time.perf_counter() >= deadline


def _next_shards(done: dict[int, dict], n: int, in_flight: set[int], limit: int) -> list[int]:
    """Shard ids to start now: missing ones in order, as many as are likely still needed."""
    kept = sum(d["kept"] for d in done.values())
    per_shard = kept / len(done) if done and kept else None
    expected = kept + (per_shard or 0) * len(in_flight)
    out, s = [], 0
    while len(in_flight) + len(out) < limit:
        if per_shard is not None and expected >= n * 1.02 and _all_below_done(done, s):
            break
        if s not in done and s not in in_flight:
            out.append(s)
            expected += per_shard or 0
        s += 1
    return out


def _all_below_done(done, s):
    return all(k in done for k in range(s))


def _check_done(done: dict[int, dict], n: int, cfg: BuildConfig) -> None:
    trajectories = sum(d["trajectories"] for d in done.values())
    check_progress(trajectories, sum(d["kept"] for d in done.values()), n, cfg)


def _run_serial(path, cfg, n, done, bar, deadline=None):
    s, ran = 0, False
    while _prefix(done, n) is None:
        if s not in done:
            if ran and _late(deadline) and _prefix_kept(done) > 0:
                break
            done[s] = run_shard(cfg.to_dict(), s, str(path))
            ran = True
            bar.update(done)
            _check_done(done, n, cfg)
        s += 1


def _run_dask(path, cfg, n, done, bar, workers, scheduler, deadline=None):
    from dask.distributed import as_completed

    with dask_client(scheduler, workers) as client:
        limit = 2 * worker_count(client, workers or 1)
        cfgd, spath = cfg.to_dict(), str(path.resolve())
        futures = {}
        futures_started = False

        def submit():
            nonlocal futures_started
            if futures_started and _late(deadline) and _prefix_kept(done) > 0:
                return
            for s in _next_shards(done, n, set(futures.values()), limit):
                futures[
                    client.submit(
                        run_shard,
                        cfgd,
                        s,
                        spath,
                        1,
                        pure=False,
                        key=f"shard-{s}-{os.getpid()}-{time.time_ns()}",
                    )
                ] = s
            futures_started = True

        submit()
        ac = as_completed(list(futures))
        while futures:
            fut = next(ac)
            s = futures.pop(fut)
            done[s] = fut.result()
            bar.update(done)
            if _prefix(done, n) is not None:
                break
            _check_done(done, n, cfg)
            before = set(futures)
            submit()
            for f in set(futures) - before:
                ac.add(f)
        for f in futures:
            f.cancel()


class _BuildReport:
    """Reports a build's progress: kept of wanted tumors, rejected snapshots, simulations and
    the rate of this run."""

    def __init__(self, n: int, progress: Progress | None):
        self.n, self.progress = n, progress
        self.t0 = time.perf_counter()
        self.start_kept = None

    def update(self, done: dict[int, dict]) -> None:
        if self.progress is None:
            return
        kept = sum(d["kept"] for d in done.values())
        rejected = sum(d["rejected"] for d in done.values())
        sims = sum(d["trajectories"] for d in done.values())
        if self.start_kept is None:
            self.start_kept = kept
        rate = (kept - self.start_kept) / max(time.perf_counter() - self.t0, 1e-9) * 60
        self.progress(
            min(kept, self.n),
            self.n,
            f"building: {rejected} rejected, {sims} simulations, {rate:.0f} tumors/min",
        )
