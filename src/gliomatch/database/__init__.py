"""Tumor database: sampling, build (local and Dask), storage, validation."""

from gliomatch.database.build import build_database
from gliomatch.database.config import BuildConfig
from gliomatch.database.sampling import SamplingConfig, SizeFilter
from gliomatch.database.storage import Database
from gliomatch.database.validate import verify

__all__ = ["BuildConfig", "Database", "SamplingConfig", "SizeFilter", "build_database", "verify"]
