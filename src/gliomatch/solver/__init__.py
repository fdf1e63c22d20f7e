"""Fisher–Kolmogorov forward model: numba kernels, NumPy reference, snapshots."""

from gliomatch.solver.core import Simulation, TumorParams, simulate, time_step
from gliomatch.solver.domain import Domain

__all__ = ["Domain", "Simulation", "TumorParams", "simulate", "time_step"]
