"""The scaled sampler keeps tumors distributed as plain rejection sampling from the prior.

The volumes come from a cheap surrogate of the simulation that has the model's symmetry (the
whole tumor depends on the seed, r = D_w/rho and tau = rho T only): a sphere whose radius grows
like the Fisher-Kolmogorov front, 2 sqrt(r) tau, later for seeds nearer the left of the brain.
Both samplers run the code the build runs (``sample_trajectory``); only the simulation is
replaced. Kept tumors of one trajectory are correlated (one seed, one r), so the comparison is a
Wald test on binned proportions with a cluster-robust covariance (clusters = trajectories), which
stays valid for that; it passes for the scaled sampler and fails for deliberately wrong ones.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import stats

from gliomatch.database import SamplingConfig
from gliomatch.database import sampling as sampling_module
from gliomatch.database.sampling import SizeFilter, identifiable, sample_trajectory

FILTER = SizeFilter()
COLUMNS = ("x", "dw", "rho", "t_end", "dw_over_rho", "rho_t")


def _volume_cm3(x, r, tau):
    """Surrogate whole-tumor volume: a sphere of radius 2 sqrt(r) (tau - 4) g(seed) mm."""
    radius = 2.0 * np.sqrt(r) * np.maximum(tau - 4.0, 0.0) * (0.5 + x)
    return 4.0 / 3.0 * np.pi * radius**3 / 1000.0


def _keep(x, r, tau):
    v = _volume_cm3(x, r, tau)
    return (v >= FILTER.flair_min_cm3) & (v <= FILTER.flair_max_cm3)


def _kept(atlas, config, n_traj, seed, tissue, one_per_trajectory=False):
    """Kept candidates of ``n_traj`` trajectories: {column: values} and their trajectory ids."""
    out = {c: [] for c in COLUMNS}
    cluster = []
    for t in range(n_traj):
        tr = sample_trajectory(atlas, config, seed, t, tissue)
        dws, rhos, ts = (np.asarray(a) for a in (tr.dws, tr.rhos, tr.t_ends))
        ident = identifiable(dws, rhos, ts)
        keep = _keep(tr.x, ident["dw_over_rho"], ident["rho_t"])
        if one_per_trajectory and keep.any():
            keep = np.arange(len(keep)) == np.argmax(keep)
        for c, v in (
            ("x", np.full(len(dws), tr.x)),
            ("dw", dws),
            ("rho", rhos),
            ("t_end", ts),
            ("dw_over_rho", ident["dw_over_rho"]),
            ("rho_t", ident["rho_t"]),
        ):
            out[c].append(v[keep])
        cluster.append(np.full(int(keep.sum()), t))
    return {c: np.concatenate(v) for c, v in out.items()}, np.concatenate(cluster)


def _cluster_wald(bins_a, cluster_a, bins_b, cluster_b, k):
    """p-value of H0: the two samples share their bin proportions (cluster-robust Wald).

    Bins empty in both samples (corners of the joint that the size filter excludes) are
    dropped."""
    used = np.unique(np.concatenate([bins_a, bins_b]))
    bins_a, bins_b, k = np.searchsorted(used, bins_a), np.searchsorted(used, bins_b), len(used)

    def estimate(bins, cluster):
        onehot = np.eye(k)[bins]
        ids, inverse = np.unique(cluster, return_inverse=True)
        n_c = np.zeros((len(ids), k))
        np.add.at(n_c, inverse, onehot)
        m_c = n_c.sum(1)
        p = n_c.sum(0) / m_c.sum()
        resid = n_c - np.outer(m_c, p)
        cov = resid.T @ resid / m_c.sum() ** 2
        return p, cov

    pa, va = estimate(bins_a, cluster_a)
    pb, vb = estimate(bins_b, cluster_b)
    d = (pa - pb)[:-1]
    cov = (va + vb)[:-1, :-1]
    stat = float(d @ np.linalg.solve(cov, d))
    return float(stats.chi2.sf(stat, k - 1))


def _bins(values_a, values_b, n_bins):
    """Quantile bins of the pooled values (fewer when values repeat, as voxel seeds do)."""
    pooled = np.concatenate([values_a, values_b])
    edges = np.unique(np.quantile(pooled, np.linspace(0, 1, n_bins + 1)[1:-1]))
    return (
        np.searchsorted(edges, values_a, side="right"),
        np.searchsorted(edges, values_b, side="right"),
        len(edges) + 1,
    )


def _p_values(a, ca, b, cb):
    """Marginals (10 bins each) and the (D_w/rho, rho T) joint (5 x 5 bins)."""
    out = {}
    for c in COLUMNS:
        ba, bb, k = _bins(a[c], b[c], 10)
        out[c] = _cluster_wald(ba, ca, bb, cb, k)
    ra, rb, kr = _bins(a["dw_over_rho"], b["dw_over_rho"], 5)
    ta, tb, kt = _bins(a["rho_t"], b["rho_t"], 5)
    out["joint"] = _cluster_wald(kt * ra + ta, ca, kt * rb + tb, cb, kr * kt)
    return out


@pytest.fixture(scope="module", params=[False, True], ids=["uniform", "log-uniform"])
def reference(request, atlas32):
    """Plain rejection sampling: one prior draw per trajectory, kept if its tumor passes."""
    tissue = np.argwhere(atlas32.tissue)
    config = SamplingConfig(sampler="plain", snapshots=1, log_uniform=request.param)
    kept, cluster = _kept(atlas32, config, 40_000, 11, tissue)
    return request.param, tissue, kept, cluster


def test_surrogate_acceptance_is_like_the_published_filter(reference):
    """The surrogate keeps a minority of prior draws (the real build keeps ~1 in 8)."""
    _, _, kept, _ = reference
    assert 2_000 < len(kept["x"]) < 20_000


def test_scaled_sampler_matches_rejection_sampling(atlas32, reference):
    log, tissue, ref, ref_cluster = reference
    config = SamplingConfig(sampler="scaled", snapshots=32, log_uniform=log)
    new, cluster = _kept(atlas32, config, 4_000, 5, tissue)
    for c in ("dw", "rho", "t_end"):  # every stored theta lies in the published ranges
        lo, hi = getattr(config, c)
        assert lo <= new[c].min() and new[c].max() <= hi
    p = _p_values(new, cluster, ref, ref_cluster)
    assert min(p.values()) > 1e-3, p


@pytest.mark.parametrize("wrong", ["rho ignores the Jacobian", "one tumor per trajectory"])
def test_a_wrong_sampler_fails_the_same_test(atlas32, reference, wrong, monkeypatch):
    """The test has power: two plausible mistakes are detected."""
    log, tissue, ref, ref_cluster = reference
    config = SamplingConfig(sampler="scaled", snapshots=32, log_uniform=log)
    one = False
    if wrong == "rho ignores the Jacobian":  # rho uniform (or log-uniform) on the interval
        real = sampling_module.conditional_rho

        def flat(rng, r, cfg, size):
            lo = max(cfg.rho[0], cfg.dw[0] / r)
            hi = min(cfg.rho[1], cfg.dw[1] / r)
            if cfg.log_uniform:  # log-uniform priors: drop the 1/rho factor instead
                return np.sqrt(rng.uniform(lo * lo, hi * hi, size=size))
            return rng.uniform(lo, hi, size=size)

        monkeypatch.setattr(sampling_module, "conditional_rho", flat)
        assert real is not flat
    else:
        one = True
    new, cluster = _kept(atlas32, config, 4_000, 5, tissue, one_per_trajectory=one)
    p = _p_values(new, cluster, ref, ref_cluster)
    assert min(p.values()) < 1e-6, p


def test_samplers_are_deterministic_and_plain_is_unchanged(atlas32):
    """Same seed, same draws; the plain sampler draws what it always drew (old databases'
    held-out queries and resumed builds depend on it)."""
    plain = SamplingConfig(sampler="plain")
    assert sample_trajectory(atlas32, plain, 0, 7) == sample_trajectory(atlas32, plain, 0, 7)
    tr = sample_trajectory(atlas32, plain, 0, 0)
    rng = np.random.default_rng([0, 0])
    tissue = np.argwhere(atlas32.tissue)
    vox = tissue[rng.integers(len(tissue))]
    assert tr.x == pytest.approx(vox[0] / 31)
    assert tr.sim_dw == pytest.approx(rng.uniform(0.02, 1.5))
    assert tr.sim_rho == pytest.approx(rng.uniform(0.002, 0.2))
    assert tr.times == pytest.approx(np.sort(rng.uniform(50, 1500, size=8)))
    scaled = SamplingConfig()
    assert scaled.sampler == "scaled" and scaled.snapshots == 64
    tr = sample_trajectory(atlas32, scaled, 0, 0)
    assert tr.sim_rho == 1.0 and list(tr.times) == sorted(tr.times)
    assert np.allclose(np.asarray(tr.dws) / np.asarray(tr.rhos), tr.sim_dw)
    assert np.allclose(np.asarray(tr.rhos) * np.asarray(tr.t_ends), tr.times)
    # a database recorded before the scaled sampler reads back as plain
    d = dataclasses.asdict(plain)
    d.pop("sampler")
    assert SamplingConfig.from_dict(d).sampler == "plain"


def test_held_out_tumors_are_the_prefix_of_the_lazy_stream(monkeypatch):
    """``iter_held_out`` gives the same tumors as ``held_out_tumors``, simulating only the
    trajectories that are consumed."""
    from gliomatch.database import BuildConfig
    from gliomatch.database import trajectories as tr

    cfg = BuildConfig(resolution=32, seed=5)
    calls = []
    real = tr.trajectory_tumors
    monkeypatch.setattr(tr, "trajectory_tumors", lambda *a, **k: calls.append(1) or real(*a, **k))
    few = tr.held_out_tumors(cfg, 3)
    needed, calls[:] = len(calls), []
    stream = tr.iter_held_out(cfg, 50)
    first = [next(stream) for _ in range(3)]
    assert len(calls) == needed  # no trajectory simulated ahead of what was consumed
    for (r1, c1), (r2, c2) in zip(few, first, strict=True):
        assert r1 == r2 and np.array_equal(c1, c2)
    more = tr.held_out_tumors(cfg, 6)
    for (r1, c1), (r2, c2) in zip(more[:3], few, strict=True):
        assert r1 == r2 and np.array_equal(c1, c2)
