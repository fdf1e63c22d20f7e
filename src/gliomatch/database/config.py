"""Build settings: everything that determines a database's content."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gliomatch.database.sampling import SamplingConfig, SizeFilter
from gliomatch.errors import GliomatchError
from gliomatch.solver.model import FisherKolmogorov, GrowthModel

__all__ = ["BuildConfig"]


@dataclass(frozen=True)
class BuildConfig:
    """Everything that determines a database's content (stored as ``config.json``)."""

    resolution: int = 128
    atlas: str | None = None  # None = MNI152; else a user atlas folder
    seed: int = 0
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    size_filter: SizeFilter = field(default_factory=SizeFilter)
    shard_size: int = 8  # trajectories per shard
    ratio: float = 10.0

    def __post_init__(self):
        if not isinstance(self.seed, int | np.integer) or self.seed < 0:
            raise GliomatchError(f"seed must be a non-negative integer, got {self.seed!r}")
        if not 1 <= self.shard_size <= 10_000:
            raise GliomatchError(f"shard size must be 1..10000 trajectories, got {self.shard_size}")

    @property
    def model(self) -> GrowthModel:
        """The growth model the database simulates (Fisher–Kolmogorov with this WM/GM
        diffusivity ratio; the manifest records its name and scheme)."""
        return FisherKolmogorov(ratio=self.ratio)

    def to_dict(self) -> dict:
        return {
            "resolution": int(self.resolution),
            "atlas": None if self.atlas is None else str(Path(self.atlas).resolve()),
            "seed": int(self.seed),
            "sampling": self.sampling.to_dict(),
            "size_filter": self.size_filter.to_dict(),
            "shard_size": int(self.shard_size),
            "ratio": float(self.ratio),
            "solver": self.model.scheme,
        }

    @classmethod
    def from_dict(cls, d: dict) -> BuildConfig:
        return cls(
            resolution=d["resolution"],
            atlas=d["atlas"],
            seed=d["seed"],
            sampling=SamplingConfig.from_dict(d["sampling"]),
            size_filter=SizeFilter(**d["size_filter"]),
            shard_size=d["shard_size"],
            ratio=d["ratio"],
        )  # "solver" is checked when a build resumes: another scheme gives other tumors
