"""`bench solver`: the numba solver against its NumPy reference in the same process, and the
stencil kernel's throughput."""

from __future__ import annotations

import time

import numpy as np

from gliomatch.atlas import load_atlas
from gliomatch.masks import threshold
from gliomatch.solver import Domain, simulate
from gliomatch.solver.kernels import empty_rows, stage_box

__all__ = ["bench_solver"]


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
