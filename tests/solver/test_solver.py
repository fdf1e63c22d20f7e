import math

import numpy as np
import pytest

from gliomatch.errors import GliomatchError
from gliomatch.solver import Domain, TumorParams, simulate


def _box(shape, spacing=1.0, wm=1.0):
    return Domain.from_maps(np.full(shape, wm), np.zeros(shape), spacing)


STEPPINGS = ["rkl1", "euler"]


@pytest.mark.parametrize("stepping", STEPPINGS)
@pytest.mark.parametrize("res_fixture", ["atlas32", "atlas64"])
def test_fast_equals_reference_on_atlas(request, res_fixture, stepping):
    atlas = request.getfixturevalue(res_fixture)
    d = Domain.from_atlas(atlas)
    kw = dict(x=0.4, y=0.55, z=0.5, dw=0.8, rho=0.04, times=[60, 200, 400], stepping=stepping)
    fast = simulate(d, **kw)
    ref = simulate(d, **kw, method="reference")
    assert fast.times == ref.times == [60.0, 200.0, 400.0]
    for a, b in zip(fast.densities, ref.densities, strict=True):
        assert np.abs(a - b).max() <= 1e-4
    assert fast.densities[-1].max() > 0.9  # it really grew


@pytest.mark.parametrize("stepping", STEPPINGS)
def test_fast_equals_reference_on_box(stepping):
    d = _box((24, 20, 28), spacing=1.5)
    kw = dict(x=0.3, y=0.6, z=0.5, dw=0.5, rho=0.1, times=[30, 80], stepping=stepping)
    fast = simulate(d, **kw)
    ref = simulate(d, **kw, method="reference")
    for a, b in zip(fast.densities, ref.densities, strict=True):
        assert np.abs(a - b).max() <= 1e-4


#: Unit round-off of float32 (2^-24).
U32 = float(np.finfo(np.float32).eps) / 2
#: Roundings in one cell update ``a c + b o + c * sum_6 f (n - c)``: 6 differences, 6 products,
#: 5 sums, 3 products and 2 sums (the logistic step is exact for rho = 0: g = 1).
OPS_PER_UPDATE = 22


def mass_roundoff_bound(domain, dw, sim, stepping):
    """Worst-case relative mass change of pure diffusion from float32 round-off alone.

    Each cell update is a sum of terms whose magnitudes add up to at most
    ``(|a| + |b| + 12 |c| f_max) |u|`` (each cell is the centre of 6 faces and the neighbour of
    at most 6), and a sum of ``n`` rounded operations errs by at most ``n u`` times that
    (Higham, *Accuracy and Stability of Numerical Algorithms*, 2002, ch. 3). Summed over cells,
    one stage changes the mass by at most ``n u (|a| + |b| + 12 |c| f_max) M``; over all stages
    the relative change is at most that times the number of stage evaluations.
    """
    from gliomatch.solver.core import _stage_coefficients, time_step

    dt, stages = time_step(domain, dw, 0.0, stepping=stepping)
    coeffs = _stage_coefficients(stages, dw * dt / domain.spacing**2)
    fmax = domain.max_face
    per_stage = max(abs(a) + abs(b) + 12 * abs(c) * fmax for a, b, c in coeffs)
    return sim.info["evaluations"] * OPS_PER_UPDATE * U32 * per_stage


def relative_mass_drift(sim):
    masses = [float(u.astype(np.float64).sum()) for u in sim.densities]
    return max(abs(m - masses[0]) for m in masses) / masses[0]


@pytest.mark.parametrize("method", ["fast", "reference"])
@pytest.mark.parametrize("stepping", STEPPINGS)
def test_pure_diffusion_conserves_mass(atlas32, stepping, method):
    d = Domain.from_atlas(atlas32)
    times = [0.0, 200.0, 800.0]
    sim = simulate(d, 0.45, 0.5, 0.5, 1.5, 0.0, times, stepping=stepping, method=method)
    assert sim.densities[0].sum() > 0
    bound = mass_roundoff_bound(d, 1.5, sim, stepping)
    assert bound < 1e-3  # a bound tight enough to catch a real leak
    assert relative_mass_drift(sim) <= bound
    # nothing enters CSF or leaves the brain
    for u in sim.densities:
        assert np.all(u[~atlas32.tissue] == 0)
    # and it did spread
    assert (sim.densities[-1] > 1e-3).sum() > 5 * (sim.densities[0] > 1e-3).sum()


@pytest.mark.parametrize("stepping", STEPPINGS)
def test_mass_check_catches_a_leaking_scheme(stepping):
    """Open one face of the box to the (never updated, zero) padding: an absorbing boundary.
    The same round-off bound that holds for the conserving scheme must reject it. (The
    reference applies the face coefficients as given; the fast kernel closes the grid border
    by construction, so it cannot be made to leak this way.)"""
    import dataclasses

    tight = _box((20, 12, 12), spacing=2.0)
    fx = tight.fx.copy()
    fx[1, 1:-1, 1:-1] = 1.0  # the face between padding plane 0 and the first tissue plane
    leaky = dataclasses.replace(tight, fx=fx)
    kw = dict(stepping=stepping, method="reference")
    times = [0.0, 100.0, 400.0]
    for d, leaks in ((tight, False), (leaky, True)):
        sim = simulate(d, 0.2, 0.5, 0.5, 1.0, 0.0, times, **kw)
        bound = mass_roundoff_bound(d, 1.0, sim, stepping)
        assert (relative_mass_drift(sim) > bound) == leaks


def test_reaction_follows_logistic():
    d = _box((8, 8, 8))
    u0 = np.full((8, 8, 8), 0.05)
    rho, times = 0.08, [10.0, 25.0, 60.0]
    sim = simulate(d, 0.5, 0.5, 0.5, 0.3, rho, times, u0=u0)
    for t, u in zip(times, sim.densities, strict=True):
        exact = 0.05 * math.exp(rho * t) / (1 + 0.05 * (math.exp(rho * t) - 1))
        assert np.allclose(u, exact, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("stepping", STEPPINGS)
def test_fisher_kpp_front_speed(stepping):
    """A planar front travels at 2 sqrt(D rho) (up to the slow Bramson correction)."""
    dw, rho, h = 1.0, 0.1, 1.0
    n = 320
    d = _box((n, 3, 3), spacing=h)
    u0 = np.zeros((n, 3, 3))
    u0[:5] = 1.0
    times = [150.0, 350.0]
    sim = simulate(d, 0.0, 0.5, 0.5, dw, rho, times, u0=u0, stepping=stepping)

    def front(u):  # x position where the profile crosses 0.5, linearly interpolated
        p = u[:, 1, 1]
        i = int(np.nonzero(p < 0.5)[0][0])
        return (i - 1) + (p[i - 1] - 0.5) / (p[i - 1] - p[i])

    speed = (front(sim.densities[1]) - front(sim.densities[0])) * h / (times[1] - times[0])
    expected = 2 * math.sqrt(dw * rho)
    assert speed == pytest.approx(expected, rel=0.05)
    assert speed < expected * 1.001  # pulled fronts approach their speed from below


def test_rkl1_stages_are_minimal_and_stable():
    from gliomatch.solver.core import rkl1_stages

    for ratio in [0.3, 1.0, 1.01, 2.9, 3.0, 3.1, 10, 55, 55.5, 300]:
        s = rkl1_stages(ratio)
        assert s * (s + 1) / 2 >= ratio
        assert s == 1 or (s - 1) * s / 2 < ratio


def test_rkl1_matches_fine_euler(atlas64):
    """Both schemes approximate the same PDE: thresholded shapes agree closely."""
    from gliomatch.search import dice

    d = Domain.from_atlas(atlas64)
    fine = simulate(
        d, 0.4, 0.55, 0.5, 1.5, 0.02, [500.0], stepping="euler", cfl=0.3, reaction_cfl=0.02
    ).densities[0]
    rkl = simulate(d, 0.4, 0.55, 0.5, 1.5, 0.02, [500.0])
    assert rkl.info["stages"] > 1  # really super-time-stepping
    u = rkl.densities[0]
    assert (u >= 0.6).sum() > 50  # a real tumor, not two empty masks
    assert dice(fine >= 0.2, u >= 0.2) > 0.98 and dice(fine >= 0.6, u >= 0.6) > 0.98
    assert np.abs(fine - u).max() < 0.05


def test_mirror_symmetry():
    d = _box((21, 17, 19))
    sim = simulate(d, 0.5, 0.5, 0.5, 0.6, 0.1, [25.0])
    u = sim.densities[0]
    for ax in range(3):
        assert np.abs(u - np.flip(u, axis=ax)).max() < 1e-6
    assert u.max() > 0.1 and u.min() < 0.5 * u.max()  # grew, not yet uniform


def test_snapshot_equals_separate_run(atlas32):
    d = Domain.from_atlas(atlas32)
    multi = simulate(d, 0.6, 0.45, 0.55, 0.5, 0.05, [37.3, 120.0, 251.7])
    single = simulate(d, 0.6, 0.45, 0.55, 0.5, 0.05, [120.0])
    assert np.array_equal(multi.densities[1], single.densities[0])
    single = simulate(d, 0.6, 0.45, 0.55, 0.5, 0.05, 251.7)
    assert np.array_equal(multi.densities[2], single.densities[0])


def test_early_stop(atlas32):
    d = Domain.from_atlas(atlas32)
    times = [100.0, 300.0, 600.0, 1200.0]
    full = simulate(d, 0.4, 0.55, 0.5, 1.0, 0.1, times)
    vols = [(u >= 0.2).sum() * atlas32.voxel_volume_cm3 for u in full.densities]
    limit = (vols[0] + vols[1]) / 2  # exceeded between the 1st and 2nd snapshot
    stopped = simulate(d, 0.4, 0.55, 0.5, 1.0, 0.1, times, stop_volume_cm3=limit)
    assert stopped.stopped_early
    assert stopped.times == [100.0]
    assert np.array_equal(stopped.densities[0], full.densities[0])


def test_seed_outside_tissue(atlas32):
    with pytest.raises(GliomatchError, match="not brain tissue"):
        simulate(atlas32, 0.01, 0.5, 0.5, 0.3, 0.05, [10])


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(dw=-0.1), "D_w"),
        (dict(rho=-1.0), "rho"),
        (dict(times=[-5.0]), "times"),
        (dict(dw=float("nan")), "D_w"),
        (dict(times=[float("nan")]), "finite"),
        (dict(x=1.2), "outside"),
        (dict(y=float("nan")), "seed y"),
        (dict(times=[]), "no snapshot"),
        (dict(method="magic"), "method"),
        (dict(stepping="rk4"), "stepping"),
    ],
)
def test_bad_inputs(atlas32, kw, message):
    args = dict(x=0.4, y=0.55, z=0.5, dw=0.3, rho=0.05, times=[10.0])
    args.update(kw)
    with pytest.raises(GliomatchError, match=message):
        simulate(atlas32, **args)


def test_tumor_params_validate():
    TumorParams(0.4, 0.5, 0.5, 0.3, 0.05, 300)
    with pytest.raises(GliomatchError, match="times must be >= 0"):
        TumorParams(0.4, 0.5, 0.5, 0.3, 0.05, -1)


def test_domain_faces_block_csf():
    wm = np.ones((6, 6, 6))
    wm[3] = 0.0  # a plane of CSF splits the box in two
    d = Domain.from_maps(wm, np.zeros_like(wm), 1.0)
    u0 = np.zeros((6, 6, 6))
    u0[1] = 1.0
    sim = simulate(d, 0.2, 0.5, 0.5, 1.0, 0.0, [50.0], u0=u0)
    assert np.all(sim.densities[0][3:] == 0)


def test_layer_flags_equal_scan(atlas32, rng):
    """The box growth flags computed inside the kernel equal a plain scan of the layers."""
    from gliomatch.solver.kernels import empty_rows, grow_box, grow_from_flags, stage_box

    d = Domain.from_atlas(atlas32)
    for trial in range(20):
        u = (rng.random(d.tissue.shape) ** 8 * 1e-7 * d.tissue).astype(np.float32)
        out = u.copy()
        lo = rng.integers(1, 12, 3).astype(np.int64)
        hi = lo + rng.integers(2, 18, 3)
        rows, flags = empty_rows(u.shape[0])
        stage_box(
            u, u, out, d.fx, d.fy, d.fz, d.span, 1.0, 0.0, 0.1, 1.0, lo, hi, 0.2, rows, 1e-8, flags
        )
        a_lo, a_hi, b_lo, b_hi = lo.copy(), hi.copy(), lo.copy(), hi.copy()
        lim_lo, lim_hi = np.ones(3, np.int64), np.asarray(u.shape, np.int64) - 1
        grow_from_flags(flags, a_lo, a_hi, lim_lo, lim_hi)
        grow_box(out, b_lo, b_hi, lim_lo, lim_hi, 1e-8)
        assert np.array_equal(a_lo, b_lo) and np.array_equal(a_hi, b_hi), trial


def test_simulate_takes_a_parameter_object(atlas32):
    d = Domain.from_atlas(atlas32)
    theta = TumorParams(0.4, 0.55, 0.5, 0.3, 0.05, 150.0)
    by_object = simulate(d, theta)
    by_values = simulate(d, 0.4, 0.55, 0.5, 0.3, 0.05, [150.0])
    assert by_object.times == [150.0]
    assert np.array_equal(by_object.densities[0], by_values.densities[0])
    assert simulate(d, theta, times=[50.0, 150.0]).times == [50.0, 150.0]
    with pytest.raises(GliomatchError, match="not both"):
        simulate(d, theta, 0.5)
    with pytest.raises(GliomatchError, match="needs x, y, z"):
        simulate(d, 0.4, 0.55)


def test_many_snapshots_equal_separate_runs_and_the_callback(atlas64):
    """Dense snapshots (the scaled sampler asks for dozens) reuse peek's scratch buffers: each
    equals a run to that time alone, and on_snapshot sees what would have been stored."""
    d = Domain.from_atlas(atlas64)
    times = np.sort(np.random.default_rng(4).uniform(5, 300, size=24)).tolist()
    kw = dict(x=0.45, y=0.5, z=0.5, dw=0.9, rho=0.05)
    multi = simulate(d, **kw, times=times)
    for j in (0, 7, 15, 23):
        alone = simulate(d, **kw, times=[times[j]])
        assert np.array_equal(multi.densities[j], alone.densities[0])
    seen = []

    def keep(t, u):
        assert not u.flags.writeable
        seen.append((t, u.copy()))

    streamed = simulate(d, **kw, times=times, on_snapshot=keep)
    assert streamed.densities == [] and streamed.times == multi.times
    for (t, u), (t_stored, v) in zip(
        seen, zip(multi.times, multi.densities, strict=True), strict=True
    ):
        assert t == t_stored and np.array_equal(u, v)
    ref = simulate(d, **kw, times=times[::6], method="reference")
    for a, b in zip(multi.densities[::6], ref.densities, strict=True):
        assert np.abs(a - b).max() <= 1e-4
