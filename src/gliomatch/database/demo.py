"""The default database: the demo database, built once in the cache (resumable) and used by
``infer``, ``predict-gbm`` and the benchmarks when no ``--db`` is given.

It is small (1,000 tumors at 128^3, ~1.5 min on 2 cores): commands that fall back to it say so
and warn that a database of this size gives poor matches.
"""

from __future__ import annotations

from pathlib import Path

from gliomatch.atlas import cache_dir
from gliomatch.database.build import build_database
from gliomatch.database.config import BuildConfig
from gliomatch.database.manifest import FORMAT_VERSION
from gliomatch.database.storage import Database
from gliomatch.files import cache_key
from gliomatch.progress import Progress

__all__ = ["DEMO_N", "demo_database"]

#: Tumors in the demo database.
DEMO_N = 1000


def demo_database(
    n: int = DEMO_N,
    resolution: int = 128,
    path: Path | None = None,
    *,
    log=None,
    progress: Progress | None = None,
) -> Database:
    """The demo database (built once in the cache, resumed or grown to ``n``).

    The cache folder names the database format and a key of the build settings, so a demo
    database of an older format or sampler is rebuilt rather than refused or reused.
    """
    cfg = BuildConfig(resolution=resolution, seed=0)
    key = cache_key(config=cfg.to_dict())[:10]
    path = (
        Path(path) if path else cache_dir() / "demo" / f"db-r{resolution}-v{FORMAT_VERSION}-{key}"
    )
    if (path / "manifest.json").is_file():
        db = Database.open(path)
        if len(db) == n:
            return db
    if log:
        log(
            f"building the demo database: {n} tumors at {resolution}^3 in {path} "
            "(once; cached and resumable)"
        )
    return build_database(path, n, cfg, progress=progress)
