"""The growth-model interface (gliomatch.solver.model) and Fisher–Kolmogorov behind it."""

import numpy as np
import pytest

from gliomatch.errors import GliomatchError
from gliomatch.solver import FisherKolmogorov, GrowthModel, get_model, simulate


def test_registry():
    model = get_model()
    assert isinstance(model, FisherKolmogorov) and model.name == "fisher-kolmogorov"
    assert model.scaling_symmetry and set(model.PARAMETERS) >= {"dw", "rho"}
    assert get_model(ratio=4.0).ratio == 4.0
    with pytest.raises(GliomatchError, match="unknown growth model"):
        get_model("gompertz")
    with pytest.raises(GliomatchError, match="ratio"):
        get_model(ratio=0)


def test_the_model_is_the_solver(atlas32):
    model = get_model()
    domain = model.domain_of(atlas32)
    a = model.simulate(domain, (0.5, 0.55, 0.5), dw=0.4, rho=0.05, times=[120, 300])
    b = simulate(atlas32, 0.5, 0.55, 0.5, 0.4, 0.05, [120, 300])
    assert a.times == b.times
    for u, v in zip(a.densities, b.densities, strict=True):
        assert np.array_equal(u, v)


def test_stages_of_one_trajectory_from_one_run(atlas32):
    """simulate_stages is the run at rho = 1, D_w = D_w/rho, snapshots at rho T."""
    model = get_model()
    domain = model.domain_of(atlas32)
    stages = model.simulate_stages(domain, (0.5, 0.55, 0.5), dw_over_rho=8.0, stages=[6, 15])
    direct = model.simulate(domain, (0.5, 0.55, 0.5), dw=8.0, rho=1.0, times=[6, 15])
    for u, v in zip(stages.densities, direct.densities, strict=True):
        assert np.array_equal(u, v)


def test_a_model_without_the_symmetry_refuses_stages(atlas32):
    class NoSymmetry(FisherKolmogorov):
        name = "no-symmetry"
        scaling_symmetry = False

    with pytest.raises(GliomatchError, match="no D_w/rho scaling symmetry"):
        NoSymmetry().simulate_stages(None, (0.5, 0.5, 0.5), dw_over_rho=1.0, stages=[1.0])
    assert issubclass(NoSymmetry, GrowthModel)


def test_a_domain_from_any_tissue_maps():
    """Not only the atlas: a patient's own tissue on its own (isotropic) grid."""
    shape = (24, 20, 22)
    idx = np.indices(shape).astype(float)
    r = np.sqrt(sum(((idx[i] - (shape[i] - 1) / 2) / 9.0) ** 2 for i in range(3)))
    wm = np.where(r < 0.6, 0.9, 0.0)
    gm = np.where((r >= 0.6) & (r < 1.0), 0.9, 0.0)
    model = get_model()
    domain = model.domain(wm, gm, 2.0, affine=np.diag([2.0, 2.0, 2.0, 1.0]))
    assert domain.shape == shape and domain.spacing == 2.0
    sim = model.simulate(domain, (0.5, 0.5, 0.5), dw=0.5, rho=0.1, times=[60])
    u = sim.densities[0]
    assert u.shape == shape and u.max() > 0.5 and not u[r >= 1.05].any()  # no flux out


def test_the_database_records_its_model(make_db):
    db = make_db(4, resolution=32, seed=2)
    assert db.model.name == "fisher-kolmogorov" and db.model.ratio == db.build_config.ratio
    assert db.manifest["model"]["name"] == db.model.name
    assert db.manifest["model"]["scheme"] == db.model.scheme
