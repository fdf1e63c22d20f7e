"""The growth-model interface: what the database, two-scan inference and the evaluation ask of
a tumor growth model, and Fisher–Kolmogorov, its first implementation.

A model

* has a ``name`` (recorded in a database's manifest, so a database says which model made it)
  and a ``scheme`` (the numerical scheme's identifier: another scheme gives other tumors);
* names its parameters with their units (``PARAMETERS``);
* builds its :class:`~gliomatch.solver.domain.Domain` from tissue probability maps on any
  isotropic grid (:meth:`GrowthModel.domain`) — the atlas', or a patient's own tissue resampled
  to a working grid;
* simulates from a seed to snapshot times (:meth:`GrowthModel.simulate`), handing each
  snapshot to ``on_snapshot`` when asked (a database build keeps the few that pass its filter);
* says whether it has the **scaling symmetry**: with t' = rho t, Fisher–Kolmogorov depends on
  D_w/rho and rho T only, so one run at rho = 1 yields every stage of a trajectory
  (:meth:`GrowthModel.simulate_stages`); the ``scaled`` database sampler and two-scan inference
  rely on it, and a model without it uses the ``plain`` sampler.

Examples
--------
>>> from gliomatch.atlas import mni152_atlas            # doctest: +SKIP
>>> model = get_model("fisher-kolmogorov")
>>> model.name, model.scaling_symmetry
('fisher-kolmogorov', True)
>>> domain = model.domain_of(mni152_atlas(32))           # doctest: +SKIP
>>> sim = model.simulate(domain, (0.5, 0.6, 0.5), dw=0.3, rho=0.05, times=[200])  # doctest: +SKIP
"""

from __future__ import annotations

import abc

import numpy as np

from gliomatch.errors import GliomatchError
from gliomatch.solver.core import SCHEME, simulate
from gliomatch.solver.domain import Domain

__all__ = ["MODELS", "FisherKolmogorov", "GrowthModel", "get_model"]


class GrowthModel(abc.ABC):
    """One tumor growth model (see the module notes)."""

    #: The model's name, recorded in a database's manifest.
    name: str
    #: The numerical scheme's identifier (another scheme gives other tumors).
    scheme: str
    #: Parameter name -> unit.
    PARAMETERS: dict[str, str]
    #: Whether the density depends on (seed, D_w/rho, rho T) only.
    scaling_symmetry: bool

    @abc.abstractmethod
    def domain(self, wm, gm, spacing: float, *, affine=None) -> Domain:
        """The model's domain from WM and GM probability maps on an isotropic grid of
        ``spacing`` mm (``affine``: the grid's, for seeds in millimetres)."""

    def domain_of(self, atlas) -> Domain:
        """The domain of an :class:`~gliomatch.atlas.Atlas` (its WM and GM maps)."""
        return self.domain(atlas.wm, atlas.gm, atlas.spacing, affine=atlas.affine)

    @abc.abstractmethod
    def simulate(self, domain: Domain, seed, *, dw: float, rho: float, times, **options):
        """Grow a tumor from ``seed`` (grid fractions x, y, z in [0, 1]) and return a
        :class:`~gliomatch.solver.core.Simulation` with the density at each of ``times``
        (days); ``options`` as the model's solver takes them (``on_snapshot``,
        ``stop_volume_cm3``, ``method``, ...)."""

    def simulate_stages(self, domain: Domain, seed, *, dw_over_rho: float, stages, **options):
        """Every stage ``rho T`` of one trajectory from one run (the scaling symmetry: the run
        at rho = 1 and D_w = D_w/rho, snapshots at t = rho T); refused by a model without it."""
        if not self.scaling_symmetry:
            raise GliomatchError(
                f"growth model {self.name} has no D_w/rho scaling symmetry: simulate each "
                "(D_w, rho, T) on its own"
            )
        return self.simulate(domain, seed, dw=dw_over_rho, rho=1.0, times=stages, **options)


class FisherKolmogorov(GrowthModel):
    """du/dt = div(D grad u) + rho u (1 - u) in tissue, D = D_w in white matter and
    D_w / ``ratio`` in grey matter, no flux out of tissue (:mod:`gliomatch.solver.core`)."""

    name = "fisher-kolmogorov"
    scheme = SCHEME
    PARAMETERS = {
        "x": "fraction",
        "y": "fraction",
        "z": "fraction",
        "dw": "mm^2/day",
        "rho": "1/day",
        "t_end": "day",
    }
    scaling_symmetry = True

    def __init__(self, ratio: float = 10.0):
        if not np.isfinite(ratio) or ratio <= 0:
            raise GliomatchError(f"WM/GM diffusivity ratio must be > 0, got {ratio}")
        self.ratio = float(ratio)

    def domain(self, wm, gm, spacing: float, *, affine=None) -> Domain:
        return Domain.from_maps(wm, gm, spacing, ratio=self.ratio, affine=affine)

    def simulate(self, domain: Domain, seed, *, dw: float, rho: float, times, **options):
        x, y, z = seed
        return simulate(domain, x, y, z, dw, rho, times, **options)

    def __repr__(self) -> str:
        return f"FisherKolmogorov(ratio={self.ratio:g})"


#: Growth models by name.
MODELS: dict[str, type[GrowthModel]] = {FisherKolmogorov.name: FisherKolmogorov}


def get_model(name: str = FisherKolmogorov.name, **options) -> GrowthModel:
    """The growth model ``name`` (``options``: its settings, e.g. ``ratio``)."""
    if name not in MODELS:
        raise GliomatchError(f"unknown growth model {name!r}; available: {', '.join(MODELS)}")
    return MODELS[name](**options)
