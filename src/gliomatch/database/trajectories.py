"""Simulating trajectories: one seeded draw of theta, one simulation with snapshots, the
snapshots that pass the size filter as database rows (table row + density codes); the same
for held-out query tumors; and the bound that stops a sampling loop making no progress."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from gliomatch.atlas import load_atlas
from gliomatch.database.config import BuildConfig
from gliomatch.database.kernels import tumor_stats
from gliomatch.database.sampling import identifiable, sample_trajectory
from gliomatch.errors import GliomatchError
from gliomatch.masks import FLAIR_LEVEL, T1GD_LEVEL, encode
from gliomatch.solver import FisherKolmogorov

__all__ = [
    "MAX_TRAJECTORIES_PER_TUMOR",
    "NO_PROGRESS_TRAJECTORIES",
    "check_progress",
    "held_out_tumors",
    "iter_held_out",
    "space",
    "trajectory_tumors",
]


@lru_cache(maxsize=4)
def space(atlas_spec: str | None, resolution: int, ratio: float):

    atlas = load_atlas(atlas_spec, resolution)
    return atlas, FisherKolmogorov(ratio=ratio).domain_of(atlas), np.argwhere(atlas.tissue)


def _tumor_row(u: np.ndarray, atlas, voxel_cm3: float) -> dict:
    nf, nt, com_vox, lo, hi = tumor_stats(u, np.float32(FLAIR_LEVEL), np.float32(T1GD_LEVEL))
    com = atlas.voxel_to_world(com_vox)
    return {
        "flair_cm3": float(nf * voxel_cm3),
        "t1gd_cm3": float(nt * voxel_cm3),
        "com_x_mm": com[0],
        "com_y_mm": com[1],
        "com_z_mm": com[2],
        "bbox_i0": int(lo[0]),
        "bbox_j0": int(lo[1]),
        "bbox_k0": int(lo[2]),
        "bbox_i1": int(hi[0]),
        "bbox_j1": int(hi[1]),
        "bbox_k1": int(hi[2]),
    }


def trajectory_tumors(cfg: BuildConfig, traj_id: int, seed: int | None = None):
    """Simulate trajectory ``traj_id`` and return ``(kept, rejected)``.

    ``kept`` is a list of ``(row, codes)``: the table row (without shard/local) and the uint8
    density codes of each snapshot that passes the size filter. ``seed`` overrides the
    configuration's seed (held-out queries use another one).
    """

    atlas, domain, tissue_idx = space(cfg.atlas, cfg.resolution, cfg.ratio)
    vox = atlas.voxel_volume_cm3
    filt = cfg.size_filter
    seed = cfg.seed if seed is None else seed
    tr = sample_trajectory(atlas, cfg.sampling, seed, traj_id, tissue_idx)

    def snapshot(t: float, u: np.ndarray) -> None:
        # only snapshots that pass the size filter are encoded; the others are never copied
        stats = _tumor_row(u, atlas, vox)
        if not filt.keep(stats["flair_cm3"], stats["t1gd_cm3"]):
            return
        found.append((int(np.searchsorted(tr.times, t)), stats, encode(u)))

    found = []
    sim = cfg.model.simulate(
        domain,
        (tr.x, tr.y, tr.z),
        dw=tr.sim_dw,
        rho=tr.sim_rho,
        times=tr.times,
        stop_volume_cm3=filt.flair_max_cm3,
        stop_threshold=FLAIR_LEVEL,
        on_snapshot=snapshot,
    )
    kept = []
    for j, stats, codes in found:  # j: the candidate of that stage
        row = {
            "traj_id": traj_id,
            "snapshot": j,
            "x": tr.x,
            "y": tr.y,
            "z": tr.z,
            "x_mm": sim.seed_mm[0],
            "y_mm": sim.seed_mm[1],
            "z_mm": sim.seed_mm[2],
            "dw": tr.dws[j],
            "rho": tr.rhos[j],
            "t_end": tr.t_ends[j],
            **identifiable(tr.dws[j], tr.rhos[j], tr.t_ends[j]),
            **stats,
        }
        kept.append((row, codes))
    rejected = len(tr.times) - len(kept)  # too small, too big, or past the early stop
    return kept, rejected


def held_out_tumors(db_or_config, n: int, *, seed_offset: int = 1_000_003, one_per_trajectory=True):
    """``n`` size-filtered tumors simulated like a database's but with another seed (not in it).

    ``db_or_config`` is a Database or its BuildConfig. Returns a list of ``(row, codes)``,
    deterministic in the seed and ``seed_offset``, distributed as plain rejection sampling:

    * scaled sampler: each kept candidate of a trajectory becomes a query with probability
      :data:`QUERY_THINNING`, independently (unbiased; fewer near-duplicate queries than
      taking them all, which ``one_per_trajectory=False`` does);
    * plain sampler (databases built before the scaled one): one kept snapshot drawn per
      trajectory, as those databases' published figures were measured.
    """
    return list(
        iter_held_out(
            db_or_config, n, seed_offset=seed_offset, one_per_trajectory=one_per_trajectory
        )
    )


def iter_held_out(
    db_or_config, limit: int, *, seed_offset: int = 1_000_003, one_per_trajectory=True
):
    """The tumors of :func:`held_out_tumors`, simulated one trajectory at a time as they are
    consumed (at most ``limit``): its first ``n`` are ``held_out_tumors(..., n)``, for a
    caller that does not know how many it will need."""
    cfg = db_or_config
    if not isinstance(cfg, BuildConfig):
        cfg = db_or_config.build_config
    seed = cfg.seed + seed_offset
    given, traj = 0, 0
    while given < limit:
        kept, _ = trajectory_tumors(cfg, traj, seed=seed)
        if kept and one_per_trajectory:
            rng = np.random.default_rng([seed, traj, 1])
            if cfg.sampling.sampler == "plain":
                kept = [kept[rng.integers(len(kept))]]
            else:
                kept = [
                    k
                    for k, u in zip(kept, rng.random(len(kept)), strict=True)
                    if u < QUERY_THINNING
                ]
        for tumor in kept[: limit - given]:
            given += 1
            yield tumor
        traj += 1
        check_progress(traj, given, limit, cfg)


#: Probability that a kept candidate of a held-out trajectory becomes a query (scaled sampler).
QUERY_THINNING = 0.5


#: Trajectories after which a build (or a query sampler) that has kept no tumor stops.
NO_PROGRESS_TRAJECTORIES = 64
#: At most this many trajectories per wanted tumor (the published filter keeps ~1 in 1.2).
MAX_TRAJECTORIES_PER_TUMOR = 50


def check_progress(trajectories: int, kept: int, n: int, cfg: BuildConfig) -> None:
    """Stop a sampling loop that cannot reach ``n`` kept tumors: a clear error, not a full
    disk. Raised when no tumor passed the size filter after ``NO_PROGRESS_TRAJECTORIES``
    trajectories, or when more than ``MAX_TRAJECTORIES_PER_TUMOR`` per tumor were needed."""
    f = cfg.size_filter
    hint = (
        f"the size filter (whole tumor {f.flair_min_cm3:g}-{f.flair_max_cm3:g} cm^3, core >= "
        f"{f.t1gd_min_cm3:g} cm^3) rejects nearly every simulated tumor for these parameter "
        "ranges; widen --flair-min/--flair-max/--t1gd-min or the ranges"
    )
    if kept == 0 and trajectories >= NO_PROGRESS_TRAJECTORIES:
        raise GliomatchError(
            f"no tumor kept after {trajectories} trajectories "
            f"({trajectories * cfg.sampling.snapshots} snapshots): {hint}"
        )
    if trajectories > MAX_TRAJECTORIES_PER_TUMOR * n + NO_PROGRESS_TRAJECTORIES:
        raise GliomatchError(
            f"only {kept} of {n} tumors kept after {trajectories} trajectories: {hint}"
        )
