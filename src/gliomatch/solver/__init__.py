"""Growth models behind one interface (:mod:`gliomatch.solver.model`); Fisher–Kolmogorov
first: numba kernels, NumPy reference, snapshots."""

from gliomatch.solver.core import Simulation, TumorParams, simulate, time_step
from gliomatch.solver.domain import Domain
from gliomatch.solver.model import MODELS, FisherKolmogorov, GrowthModel, get_model

__all__ = [
    "MODELS",
    "Domain",
    "FisherKolmogorov",
    "GrowthModel",
    "Simulation",
    "TumorParams",
    "get_model",
    "simulate",
    "time_step",
]
